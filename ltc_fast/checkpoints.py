"""Reading checkpoints from disk and converting between the reference's and ltc_fast's state dicts.

The reference keeps the label tokens as the last N rows of its resized word-embedding matrix (and an
unused pooler); ltc_fast keeps the encoder at its original vocabulary and the label rows in
`label_embeddings.weight`. Everything else has the same name in both: `transformer.*`, `classifier.*`.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from . import encoders

# The word-embedding table's name in each supported architecture (ModernBERT calls it tok_embeddings).
WORD_EMBEDDINGS_SUFFIXES = tuple(sorted({spec.word_embeddings_key for spec in encoders.SUPPORTED_ENCODERS.values()}))
LABEL_EMBEDDINGS_KEY = "label_embeddings.weight"
POOLER_PREFIX = "transformer.pooler."
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def word_embeddings_key(state_dict) -> str:
    keys = [k for k in state_dict if k.startswith("transformer.") and k.endswith(WORD_EMBEDDINGS_SUFFIXES)]
    if len(keys) != 1:
        raise ValueError(f"expected exactly one word-embedding entry ('transformer.*' ending in one of "
                         f"{WORD_EMBEDDINGS_SUFFIXES}) in the state dict, found {keys}")
    return keys[0]


def from_reference_state_dict(state_dict: dict[str, torch.Tensor], num_labels: int) -> dict[str, torch.Tensor]:
    """The reference model's state dict -> ltc_fast's: the last `num_labels` word-embedding rows become
    `label_embeddings.weight`; the pooler (unused by the method) is dropped. Tensors are not copied."""
    word_key = word_embeddings_key(state_dict)
    words = state_dict[word_key]
    if not isinstance(num_labels, int) or not 1 <= num_labels < words.shape[0]:
        raise ValueError(
            f"num_labels must be an int in [1, {words.shape[0] - 1}] (the reference's word-embedding matrix has "
            f"{words.shape[0]} rows, the label rows last), got {num_labels!r}"
        )
    converted = {k: v for k, v in state_dict.items() if not k.startswith(POOLER_PREFIX)}
    converted[word_key] = words[:-num_labels]
    converted[LABEL_EMBEDDINGS_KEY] = words[-num_labels:]
    return converted


def to_reference_state_dict(model) -> dict[str, torch.Tensor]:
    """ltc_fast model (or its state dict) -> the reference's state dict: label rows appended to the word
    embeddings. The reference's pooler is not part of the method's function and is not produced."""
    state_dict = model.state_dict() if hasattr(model, "state_dict") else dict(model)
    converted = {k: v for k, v in state_dict.items() if k != LABEL_EMBEDDINGS_KEY}
    word_key = word_embeddings_key(converted)
    converted[word_key] = torch.cat([state_dict[word_key], state_dict[LABEL_EMBEDDINGS_KEY]], dim=0)
    return converted


def weight_files(directory: str) -> list[str]:
    """The weight files of a saved model directory (single file or sharded), safetensors preferred."""
    for name in _WEIGHT_FILES:
        if os.path.isfile(os.path.join(directory, name)):
            return [os.path.join(directory, name)]
    for name in _INDEX_FILES:
        index = os.path.join(directory, name)
        if os.path.isfile(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(directory, shard) for shard in shards]
    raise ValueError(
        f"{directory!r} holds no model weights: expected one of {_WEIGHT_FILES + _INDEX_FILES}"
    )


def _keys(path: str) -> list[str]:
    if path.endswith(".safetensors"):
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    return list(torch.load(path, map_location="meta", weights_only=True))


def load_state_dict(directory: str) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        state.update(load_file(path) if path.endswith(".safetensors") else
                     torch.load(path, map_location="cpu", weights_only=True))
    return state


def reference_label_names(encoder_config) -> list[str]:
    """A reference checkpoint's label names: its config's id2label, in id order."""
    id2label = encoder_config.id2label or {}
    return [id2label[i] for i in range(len(id2label))]


def is_reference_checkpoint(directory: str) -> bool:
    """A saved reference model: `transformer.*` encoder weights and the shared `classifier` head, but no
    `label_embeddings` (its label rows live in the word embeddings)."""
    if not os.path.isdir(directory):
        return False
    try:
        keys = [k for path in weight_files(directory) for k in _keys(path)]
    except ValueError:
        return False
    return ("classifier.weight" in keys and LABEL_EMBEDDINGS_KEY not in keys
            and any(k.startswith("transformer.") for k in keys))
