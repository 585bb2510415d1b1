"""ONNX export of a trained classifier, for serving it with onnxruntime (no PyTorch needed at inference).

The graph is the model's eval forward on plain text ids (what `ltc_fast.tokenize_texts` gives; the label tokens
never appear in `input_ids`):

    inputs   input_ids       int64 [batch, sequence]
             attention_mask  int64 [batch, sequence]   (1: a real token, 0: padding)
    outputs  logits          [batch, num_labels]
             probas          [batch, num_labels]       (sigmoid for multi-label, softmax for single-label)

`batch` and `sequence` are dynamic (one graph serves batch 1, padded batches, any length the encoder's positions
allow). What prediction needs besides the graph (label names, problem type, per-label thresholds, the tokenization
budget) is written into the ONNX file's own metadata (`metadata_props`, key `"ltc_fast"`, a JSON object: see
`ExportMetadata`), so the one .onnx file describes itself; only the tokenizer is kept elsewhere (e.g. beside it:
`ltc_fast.onnx_prediction.OnnxClassifier` looks in the .onnx file's directory by default).

Under export the model runs its plain-PyTorch twins (`plain_torch_execution`): the Triton kernels and the C++ loss
extension are custom ops ONNX does not know, packing reads its offsets on the host, and the input check reads the
ids' values (both data-dependent), so they are switched off for the trace and restored afterwards. Every execution
mode exports (full or decoupled attention, reference or shared positions, chunked label scoring, unrolled one pass
per chunk); the graph always scores all labels, as the model does in eval mode (`sampled_negatives` is a training
option). Reference-format checkpoints export as the ltc_fast model they load into: the same logits, plain ids in.

Needs the `onnx` extra: `pip install "ltc_fast[onnx]"` (onnx, onnxscript for the exporter, onnxruntime for the
check and for `OnnxClassifier`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from . import attention, encoders, layout
from .prediction import default_max_length

INSTALL_HINT = 'pip install "ltc_fast[onnx]"'
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("logits", "probas")
METADATA_KEY = "ltc_fast"
METADATA_FORMAT = 1
# The exporter writes opset 18 and up and converts down; 17 (LayerNormalization's first opset) is the lowest the
# encoders' graphs convert to.
MIN_OPSET = 17
# onnxruntime's CPU provider has float32 and (for these graphs) float16 kernels, no bfloat16 ones.
EXPORTABLE_DTYPES = (torch.float32, torch.float16)
# Attention implementations torch.export traces into plain ONNX ops; others (flash-attn, flex, kernels) are
# replaced for the export by ltc_fast's own, which runs SDPA on padded batches: the same function.
EXPORTABLE_ATTENTION = (attention.NAME, "sdpa", "eager")
# What export_onnx checks: onnxruntime's logits against PyTorch's on a batch of another shape than the traced one,
# within this fraction of max(1, the largest |logit|). Rounding differs by ~1e-6 in fp32; a wrong graph (a shape
# baked in, a dropped mask) by O(1).
CHECK_TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-2}


def require(module: str, needed_for: str):
    """Import one of the `onnx` extra's packages, or an ImportError saying how to install them."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{needed_for} needs the package {module!r}, which is not installed: "
                          f"{INSTALL_HINT}") from error


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported graph's outputs mean, stored in the .onnx file (`metadata_props["ltc_fast"]`, JSON).

    `max_length`: the default tokenization budget (labels included, as `model.predict`'s); `position_limit`: the
    most tokens a sequence may hold (labels and specials included); `label_positions` / `label_attention`: how
    many of those the labels take (`ltc_fast.tokenize_texts` takes them)."""

    label_names: list[str]
    problem_type: str
    label_thresholds: list[float] | None
    max_length: int
    position_limit: int
    label_positions: str
    label_attention: str
    encoder: str
    inputs: list[str]
    outputs: list[str]
    format: int = METADATA_FORMAT

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @classmethod
    def of_model(cls, model) -> ExportMetadata:
        config = model.config
        return cls(label_names=config.label_names, problem_type=config.problem_type,
                   label_thresholds=config.label_thresholds, max_length=default_max_length(model),
                   position_limit=encoders.max_sequence_length(config.encoder),
                   label_positions=config.label_positions, label_attention=config.label_attention,
                   encoder=config.encoder.model_type, inputs=list(INPUT_NAMES), outputs=list(OUTPUT_NAMES))

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], path: str) -> ExportMetadata:
        """Read from an ONNX file's metadata map (onnxruntime: `session.get_modelmeta().custom_metadata_map`)."""
        if METADATA_KEY not in metadata:
            raise ValueError(f"{path!r} was not exported by ltc_fast (its metadata has no {METADATA_KEY!r} entry); "
                             f"export a model with ltc_fast.onnx_export.export_onnx or `ltc-fast export`")
        fields = json.loads(metadata[METADATA_KEY])
        if fields.get("format") != METADATA_FORMAT:
            raise ValueError(f"{path!r} holds ltc_fast export metadata of format {fields.get('format')!r}; this "
                             f"version of ltc_fast reads format {METADATA_FORMAT}")
        return cls(**fields)


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote: the .onnx file, its opset, and onnxruntime's largest |logit - PyTorch's logit| on
    the check batch (None when the check was skipped)."""

    path: str
    opset: int
    max_abs_logit_diff: float | None


class LogitsAndProbas(nn.Module):
    """The exported function: `(input_ids, attention_mask)` `[B, T]` -> `(logits, probas)` `[B, N]`, the model's
    forward (a plain tuple out: the graph's outputs, in `OUTPUT_NAMES` order)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return output.logits, output.probas


@contextlib.contextmanager
def plain_torch_execution(model):
    """Run `model` as torch.export can trace it inside the block, then restore it: eval mode, every op on its
    plain-PyTorch twin (`ops_backend="torch"`: no Triton kernel, no C++ extension), the padded layout
    (`sequence_packing="padded"`: packing reads offsets on the host), no value check of the ids (`check_inputs=False`:
    a host read and a data-dependent branch; the graph takes plain text ids), and an attention implementation in
    `EXPORTABLE_ATTENTION`. Same numbers as the model's eval forward on plain ids."""
    config = model.config
    saved = {name: getattr(config, name) for name in ("ops_backend", "sequence_packing", "check_inputs")}
    attention_before = model.transformer.config._attn_implementation
    was_training = model.training
    try:
        config.ops_backend, config.sequence_packing, config.check_inputs = "torch", "padded", False
        if attention_before not in EXPORTABLE_ATTENTION:
            spec = encoders.encoder_spec(config.encoder)
            model.transformer.set_attn_implementation(attention.NAME if spec.positions_from_ids else "eager")
        model.eval()
        yield model
    finally:
        for name, value in saved.items():
            setattr(config, name, value)
        if model.transformer.config._attn_implementation != attention_before:
            model.transformer.set_attn_implementation(attention_before)
        model.train(was_training)


def export_onnx(model_or_dir, out_path: str | os.PathLike, *, opset: int | None = None,
                check: bool = True) -> OnnxExport:
    """Export a trained classifier to ONNX (see the module's docstring for the graph and its metadata).

    `model_or_dir`: an `AutoModelForTokenSequenceClassification` (any device; float32 or float16), or the directory
    of an ltc_fast or reference checkpoint. `out_path`: the .onnx file, written whole or not at all (weights over
    2 GB go to a `<name>.data` file beside it). `opset`: the ONNX opset, `MIN_OPSET` up to the onnx package's newest
    (None: the exporter's default). `check`: before the file is published, run it in onnxruntime on a batch of
    another shape than the traced one and compare its logits with PyTorch's (`CHECK_TOLERANCE`; a RuntimeError
    when they disagree). The model is left as it was (mode, options, attention implementation).
    """
    onnx = require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")  # the exporter's translation of the traced graph
    model = _model_of(model_or_dir)
    opset = _check_options(model, opset, onnx)
    out_path = os.path.abspath(os.fspath(out_path))
    if os.path.isdir(out_path):
        raise ValueError(f"out_path must be a file path (e.g. model.onnx), got the directory {out_path!r}")
    metadata = ExportMetadata.of_model(model)
    max_text_length = metadata.position_limit - layout.label_slots(model.num_labels, metadata.label_positions,
                                                                   metadata.label_attention)
    if max_text_length < 3:
        raise ValueError(f"{model.num_labels} labels at their own positions leave no room for text in the encoder's "
                         f"{metadata.position_limit} positions; use label_positions='shared' (any number of labels)")
    generator = torch.Generator().manual_seed(0)
    with plain_torch_execution(model):
        program = _trace(model, _example_batch(model, 2, min(8, max_text_length), generator), max_text_length,
                         opset)
        program.model.metadata_props[METADATA_KEY] = metadata.to_json()
        exported_opset = program.model.opset_imports[""]
        parent, name = os.path.split(out_path)
        os.makedirs(parent, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=parent, prefix=f".{name}.partial-") as staging:
            program.save(os.path.join(staging, name))
            difference = None
            if check:
                check_batch = _example_batch(model, 3, min(13, max_text_length), generator)
                difference = _check_with_onnxruntime(os.path.join(staging, name), model, check_batch, exported_opset)
            # any external-data file first, the graph last: the .onnx never appears without its weights
            for staged in sorted(os.listdir(staging), key=lambda entry: entry == name):
                os.replace(os.path.join(staging, staged), os.path.join(parent, staged))
    return OnnxExport(path=out_path, opset=exported_opset, max_abs_logit_diff=difference)


def _model_of(model_or_dir):
    from .loading import check_trained_checkpoint
    from .modeling import AutoModelForTokenSequenceClassification

    if isinstance(model_or_dir, (str, os.PathLike)):
        path = os.fspath(model_or_dir)
        check_trained_checkpoint(path)  # a ValueError for a plain encoder or a missing directory
        return AutoModelForTokenSequenceClassification.from_pretrained(path)
    model = getattr(model_or_dir, "_orig_mod", model_or_dir)  # torch.compile's wrapper: export the model itself
    if not isinstance(model, AutoModelForTokenSequenceClassification):
        raise TypeError(f"model_or_dir must be an ltc_fast AutoModelForTokenSequenceClassification or the directory "
                        f"of an ltc_fast or reference checkpoint, got {type(model_or_dir).__name__}")
    return model


def _check_options(model, opset, onnx) -> int | None:
    """ValueErrors for what cannot be exported; the opset to ask the exporter for."""
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)
                              or not MIN_OPSET <= opset <= newest):
        raise ValueError(f"opset must be an int from {MIN_OPSET} to {newest} (the installed onnx package's newest), "
                         f"or None for the exporter's default; got {opset!r}")
    if model.dtype not in EXPORTABLE_DTYPES:
        raise ValueError(f"the model's dtype must be one of {', '.join(map(str, EXPORTABLE_DTYPES))} to export it "
                         f"(onnxruntime has no {model.dtype} kernels for this graph); got {model.dtype}: convert it "
                         f"first, e.g. model.float()")
    return opset


def _example_batch(model, batch_size: int, length: int, generator: torch.Generator):
    """Random plain ids and their mask `[batch_size, length]`, the last row padded to about half the length: the
    trace's example (sizes above 1, or torch.export would fix them) and the check's batch."""
    vocab_size = model.transformer.get_input_embeddings().num_embeddings
    pad = model.config.encoder.pad_token_id or 0
    input_ids = torch.randint(0, vocab_size, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    keep = max(2, length // 2)
    input_ids[-1, keep:], attention_mask[-1, keep:] = pad, 0
    device = next(model.parameters()).device
    return input_ids.to(device), attention_mask.to(device)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's notes that say nothing about this model: shared dynamic axes named once, torchvision's ops
    not registered, a pytree deprecation inside torch."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def _trace(model, example, max_text_length: int, opset: int | None):
    """The ONNX program of `LogitsAndProbas(model)`.

    The dynamo exporter (torch.export, then onnxscript): it traces shape arithmetic symbolically, so `batch` and
    `sequence` stay dynamic through the label layout (slots inserted after [CLS], position ids) and transformers'
    mask building, where the TorchScript exporter (torch.jit.trace, deprecated since torch 2.9) records Python-level
    sizes as constants. Size-specialising guards (e.g. "sequence != 2") are deferred by the exporter, not baked in:
    the tests run the graph at batch 1 and at lengths 1 and 2.
    """
    batch = torch.export.Dim("batch", min=1)
    sequence = torch.export.Dim("sequence", min=1, max=max_text_length)
    axes = {0: batch, 1: sequence}
    try:
        with _quiet_exporter():
            return torch.onnx.export(LogitsAndProbas(model).eval(), example, dynamo=True, verbose=False,
                                     input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                                     dynamic_shapes={name: axes for name in INPUT_NAMES}, opset_version=opset)
    except Exception as error:  # the exporter's errors are long and deep; name what was being exported
        config = model.config
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise RuntimeError(
            f"torch.onnx.export failed on this model ({config.encoder.model_type} encoder, {model.num_labels} labels, "
            f"label_positions={config.label_positions!r}, label_attention={config.label_attention!r}, "
            f"dtype {model.dtype}, opset {opset if opset is not None else 'default'}): "
            f"{type(error).__name__}: {first_line}") from error


def _check_with_onnxruntime(path: str, model, batch, opset: int) -> float:
    """Largest |onnxruntime logit - PyTorch logit| on `batch`; a RuntimeError beyond `CHECK_TOLERANCE`."""
    ort = require("onnxruntime", "checking the exported graph (check=False skips it)")
    input_ids, attention_mask = batch
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise RuntimeError(f"onnxruntime {ort.__version__} cannot load the exported graph (opset {opset}; an older "
                           f"opset may help): {error}") from error
    feeds = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
    (logits,) = session.run(["logits"], feeds)
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits.float().cpu().numpy()
    difference = float(np.abs(logits.astype(np.float32) - expected).max())
    allowed = CHECK_TOLERANCE[model.dtype] * max(1.0, float(np.abs(expected).max()))
    if not difference <= allowed:
        raise RuntimeError(f"the exported graph disagrees with the model: max |logit difference| {difference:.3g} "
                           f"> {allowed:.3g} on a batch of shape {list(input_ids.shape)}; nothing was written")
    return difference
