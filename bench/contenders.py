"""The models compared by the end-to-end benches, built from one encoder config, and their batches.

Every contender sees the same texts (same lengths, same token ids) and the same multi-label targets;
the reference additionally carries the N label ids in every row, as it does in real use.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from transformers import AutoModelForSequenceClassification

from ltc_fast import AutoModelForTokenSequenceClassification, LtcConfig
from ltc_fast.prediction import compile_options
from ltc_fast.reference import ReferenceLabelTokenModel

from .measure import synchronize

CONTENDERS = ("reference-eager", "reference-sdpa", "reference-compiled", "cls-head", "ltc_fast", "ltc_fast-compiled",
              "ltc_fast-decoupled")
BASELINE = "reference-sdpa"
# Compiled contenders: the model of their peer under torch.compile (static shapes; CUDA graphs on a GPU), so
# that launch-free ltc_fast meets an equally compiled reference, not only an eager one. Inference only.
COMPILED_PEERS = {"reference-compiled": "reference-sdpa", "ltc_fast-compiled": "ltc_fast"}
# Decoupled label attention with shared positions: each label attends the text and itself (cost N * T).
DECOUPLED = {"label_positions": "shared", "label_attention": "decoupled"}


@dataclass
class Batch:
    inputs: dict  # keyword arguments of the model's forward
    text_tokens: int  # real (non-pad) text tokens, specials included, labels excluded


def build_model(contender: str, encoder_config, num_labels: int, ltc_options: dict | None = None) -> torch.nn.Module:
    """The contender's model, uncompiled (a compiled contender's peer: `compile_for_bench` wraps it)."""
    contender = COMPILED_PEERS.get(contender, contender)
    config = copy.deepcopy(encoder_config)
    names = [f"label{i}" for i in range(num_labels)]
    if contender.startswith("reference-"):
        config._attn_implementation = contender.removeprefix("reference-")
        model = ReferenceLabelTokenModel.from_config(config, names)
        model.transformer.set_attn_implementation(contender.removeprefix("reference-"))
        return model
    if contender == "cls-head":
        config.num_labels, config.problem_type = num_labels, "multi_label_classification"
        return AutoModelForSequenceClassification.from_config(config)
    if contender in ("ltc_fast", "ltc_fast-decoupled"):
        options = {**(ltc_options or {}), **(DECOUPLED if contender == "ltc_fast-decoupled" else {})}
        return AutoModelForTokenSequenceClassification(LtcConfig(encoder=config, label_names=names, **options))
    raise ValueError(f"unknown contender {contender!r}; expected one of {CONTENDERS}")


def compile_for_bench(model: torch.nn.Module, device: torch.device, real_sizes: bool) -> torch.nn.Module:
    """A compiled contender's model: `torch.compile` with ltc_fast's compiled prediction's options (one static
    graph; CUDA graphs on a GPU), the same for the reference and ltc_fast. The smoke run traces it with Dynamo's
    eager backend only (Inductor's C++ build of every workload would take minutes on a CI machine)."""
    options = compile_options(True, device) if real_sizes else {"backend": "eager", "fullgraph": True}
    return torch.compile(model, **options)


def make_batch(contender: str, lengths: list[int], num_labels: int, vocab_size: int, pad_id: int,
               generator: torch.Generator, device) -> Batch:
    """Right-padded `[CLS] text [SEP]` rows (ids 0 and 2 as <s>/</s>), label ids inserted for the reference."""
    batch, width = len(lengths), max(lengths)
    ids = torch.randint(3, vocab_size, (batch, width), generator=generator)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, 0], ids[row, length - 1] = 0, 2
        ids[row, length:] = pad_id
        mask[row, :length] = 1
    targets = (torch.rand(batch, num_labels, generator=generator) < 0.1).float()
    if contender.startswith("reference-"):
        block = torch.arange(vocab_size, vocab_size + num_labels).expand(batch, -1)
        ids = torch.cat([ids[:, :1], block, ids[:, 1:]], dim=1)
        mask = torch.cat([mask[:, :1], torch.ones(batch, num_labels, dtype=torch.long), mask[:, 1:]], dim=1)
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": targets.to(device)}
    return Batch(inputs, text_tokens=sum(lengths))


def step_function(model, batch: Batch, mode: str, device: torch.device, autocast_dtype: torch.dtype | None):
    """One timed step, as a function of no arguments: "train" (forward, backward, AdamW step, gradients freed)
    or "infer" (forward under inference_mode), under autocast to `autocast_dtype` when given."""
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    if mode == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step():
            with autocast:
                loss = model(**batch.inputs)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize(device)
    else:
        model.eval()
        inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}

        def step():
            with torch.inference_mode(), autocast:
                model(**inputs)
            synchronize(device)
    return step
