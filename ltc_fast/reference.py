"""The reference label-token method (docs/architecture.md, "Design notes"), written from its description.

Label tokens `[name]` are added to the tokenizer (ids `V..V+N-1`) and to the resized word embeddings, and
prepended to every text as a string, so every row of `input_ids` carries all N of them. It is the oracle
of the parity tests and the baseline of the benchmarks. Only its shape defect is fixed here (logits are
always `[B, N]`, class ids are accepted for single-label); its other defects are kept on purpose: an
unused pooler, projection of every position, a loss the Trainer cannot rescale under gradient
accumulation, and labels that count against the position limit.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PretrainedConfig

from .checkpoints import POOLER_PREFIX, to_reference_state_dict
from .config import MULTI_LABEL, normalize_problem_type, resolve_label_names


def label_tokens(label_names: list[str]) -> list[str]:
    return [f"[{name}]" for name in label_names]


def add_label_tokens(tokenizer, label_names: list[str]) -> list[int]:
    """Add the label tokens to `tokenizer` as special tokens; return their ids (`V + i`)."""
    tokens = label_tokens(label_names)
    tokenizer.add_tokens(tokens, special_tokens=True)
    return tokenizer.convert_tokens_to_ids(tokens)


def reference_tokenize(tokenizer, texts: list[str], label_names: list[str], max_length: int = 512,
                       padding=True, return_tensors="pt"):
    """The reference's input: the label tokens as a string prefix of each text, right-truncated to
    `max_length` with the labels counting against it (padded to the longest row by default)."""
    prefix = "".join(label_tokens(label_names))
    return tokenizer([prefix + text for text in texts], truncation=True, max_length=max_length,
                     padding=padding, return_tensors=return_tensors)


class ReferenceLabelTokenModel(nn.Module):
    def __init__(self, encoder, num_labels: int, problem_type: str | None = None):
        super().__init__()
        self.transformer = encoder
        self.num_labels = num_labels
        self.problem_type = normalize_problem_type(problem_type)
        self.dropout = nn.Dropout(0.1)
        config = encoder.config
        self.classifier = nn.Linear(getattr(config, "hidden_size", None) or config.dim, 1)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=getattr(config, "initializer_range", 0.02))
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def from_encoder(cls, encoder, label_names: list[str], problem_type: str | None = None, tokenizer=None):
        """Wrap an encoder (random or pretrained): resize its word embeddings by N label rows and, when a
        tokenizer is given, add the label tokens to it."""
        label_names = resolve_label_names(None, label_names)
        vocab_size = len(tokenizer) if tokenizer is not None else encoder.config.vocab_size
        if tokenizer is not None:
            add_label_tokens(tokenizer, label_names)
        encoder.resize_token_embeddings(vocab_size + len(label_names))
        model = cls(encoder, len(label_names), problem_type)
        model.label_names = label_names
        return model

    @classmethod
    def from_config(cls, encoder_config: PretrainedConfig, label_names: list[str], problem_type: str | None = None):
        return cls.from_encoder(AutoModel.from_config(encoder_config), label_names, problem_type)

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs) -> dict:
        # `**kwargs` as in the reference: it makes transformers.Trainer skip its loss rescaling.
        outputs = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
        hidden = self.dropout(outputs.last_hidden_state)
        logits = self.classifier(hidden)[:, 1:1 + self.num_labels, 0]  # every position projected, then sliced
        if self.problem_type == MULTI_LABEL:
            probas = torch.sigmoid(logits)
            loss = None if labels is None else F.binary_cross_entropy_with_logits(logits, labels.float())
        else:
            probas = torch.softmax(logits, dim=-1)
            loss = None if labels is None else F.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits, "probas": probas}

    def save_pretrained(self, directory: str) -> None:
        """The reference's checkpoint: the encoder config (vocabulary V + N, label names) and
        `pytorch_model.bin` with `transformer.*` and `classifier.*`."""
        os.makedirs(directory, exist_ok=True)
        config = self.transformer.config
        names = getattr(self, "label_names", None) or [f"LABEL_{i}" for i in range(self.num_labels)]
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}
        config.problem_type = self.problem_type
        config.save_pretrained(directory)
        torch.save(self.state_dict(), os.path.join(directory, "pytorch_model.bin"))


def reference_from_ltc(model, tokenizer=None) -> ReferenceLabelTokenModel:
    """The reference model computing the same function as an ltc_fast model (its label rows appended to
    the word embeddings). When a tokenizer is given, the label tokens are added to it (as the reference
    needs); it must have exactly the encoder's vocabulary before."""
    vocab_size = model.transformer.get_input_embeddings().num_embeddings
    names = model.config.label_names
    label_ids = list(range(vocab_size, vocab_size + len(names)))
    if tokenizer is not None and len(tokenizer) == vocab_size + len(names) \
            and tokenizer.convert_tokens_to_ids(label_tokens(names)) == label_ids:
        tokenizer = None  # it holds the label tokens already (it came from a reference checkpoint)
    elif tokenizer is not None and len(tokenizer) != vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, the encoder's vocabulary {vocab_size}; the "
                         f"reference's label tokens would get the wrong ids")
    encoder = AutoModel.from_config(copy.deepcopy(model.config.encoder))
    reference = ReferenceLabelTokenModel.from_encoder(encoder, names, model.config.problem_type, tokenizer)
    missing, unexpected = reference.load_state_dict(to_reference_state_dict(model), strict=False)
    # The reference's pooler is not part of its function; ltc_fast has none to give it.
    if unexpected or any(not key.startswith(POOLER_PREFIX) for key in missing):
        raise ValueError(f"the state dicts do not match: missing {missing}, unexpected {unexpected}")
    return reference.eval()
