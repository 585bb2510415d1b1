"""The `ltc_fast` attention implementation, registered with transformers' `AttentionInterface`.

The encoder's own layers (projections, feed-forward, LayerNorm) run unchanged; only the attention
kernel is ours, selected per call by what the model passes through the encoder's `**kwargs`:

- nothing: padded batches go to transformers' SDPA implementation (PyTorch's flash / memory-efficient
  kernels), the same numbers as `attn_implementation="sdpa"`.
- `ltc_packed=PackedSequences(...)`: one unpadded sequence `[1, total, ...]` holding the batch back to
  back; attention stays within each sequence (`cu_seqlens`). CUDA: `flash_attn_varlen_func` when the
  `flash-attn` package is installed, else `torch.nn.attention.varlen.varlen_attn`; with attention dropout
  and no flash-attn, SDPA over nested jagged tensors (PyTorch's varlen kernels take dropout); elsewhere
  (CPU, fp32 on CUDA) a per-sequence SDPA loop. No pad token enters any matmul.
- `ltc_decoupled=DecoupledText(...)`: label attention that never builds an `(N + T)^2` mask. The text is
  encoded first on its own (`record`: each layer's text keys and values are kept); then the labels
  run as their own sequence, each label query attending the cached text keys plus its own key, one
  softmax over both (the self term joins the text's log-sum-exp): `ltc_fast.ops.labels_attend_text`, a fused
  Triton kernel on CUDA (no `[n, T]` score tensor in memory), its plain-PyTorch twin elsewhere. Cost `N * T`,
  and a label's output does not depend on which other labels are in the pass.

Local attention layers (ModernBERT's, which transformers calls with `sliding_window`) attend within a window of
position ids, `|p_query - p_key| <= window` (see `ltc_fast.encoders`): padded batches carry it in their masks
(`position_window_masks`), packed ones and label passes apply it here from the position ids they hold.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from .ops.label_attention import labels_attend_text

NAME = "ltc_fast"


@dataclass
class PackedSequences:
    """Offsets of the sequences packed back to back in one `[1, total]` row: int32 `[B + 1]` on the device, and
    the same offsets on the host (read once per forward; the per-sequence loop slices with them in every layer)."""

    cu_seqlens: torch.Tensor
    max_seqlen: int
    host_offsets: list[int]
    position_ids: torch.Tensor | None = None  # [total]: what local (sliding-window) layers measure distance in


class DecoupledText:
    """The text of a decoupled pass, in two explicit phases: `record(encoder, ...)` runs the text through the
    encoder and keeps each layer's keys and values; `attend(encoder, ...)` then runs label embeddings through
    it, each label attending those and itself (once per chunk of labels). `key_padding`: bool `[B, T]`, True
    for real tokens; `ops_backend`: the label attention op's `backend=` (the model's `config.ops_backend`).

    A plain class, not a dataclass: FSDP rebuilds the dataclass arguments of a sharded layer to hook their
    tensors, which would hand every layer its own copy of this shared cache."""

    def __init__(self, key_padding: torch.Tensor, ops_backend: str = "auto"):
        self.key_padding = key_padding
        self.ops_backend = ops_backend
        self.attending = False  # which phase the attention function serves (set by record / attend only)
        self.keys: dict = {}
        self.values: dict = {}
        # Position ids of the text `[B, T]` and of the labels being attended `[B, n]`: local layers' windows.
        self.text_positions: torch.Tensor | None = None
        self.label_positions: torch.Tensor | None = None

    def record(self, encoder, **text_inputs):
        """The text pass: the encoder's output over the text, its keys and values kept per layer."""
        if self.keys:
            raise RuntimeError("DecoupledText.record: the text was recorded already")
        self.attending = False
        self.text_positions = text_inputs.get("position_ids")
        return encoder(**text_inputs, return_dict=True, ltc_decoupled=self)

    def attend(self, encoder, **label_inputs):
        """A label pass over the recorded text: the encoder's output at the labels (`inputs_embeds`)."""
        if not self.keys:
            raise RuntimeError("DecoupledText.attend: record the text first")
        self.attending = True
        self.label_positions = label_inputs.get("position_ids")
        return encoder(**label_inputs, return_dict=True, ltc_decoupled=self)


# What both fused varlen kernels take: head sizes up to 256; torch's varlen_attn also needs a multiple of 8 (the
# flash-attn package pads internally), so narrower heads are padded with zeros for it.
MAX_FUSED_HEAD_SIZE = 256
TORCH_VARLEN_HEAD_MULTIPLE = 8


@functools.cache
def torch_varlen_attn():
    """`torch.nn.attention.varlen.varlen_attn` where this torch has it with the `scale=` keyword (torch 2.10 or
    later), else None: then packed batches take the per-sequence loop, and `auto` does not pack."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn if "scale" in inspect.signature(varlen_attn).parameters else None


@functools.cache
def flash_attn_varlen():
    """`flash_attn.flash_attn_varlen_func` when the `flash-attn` package is installed (the `flash` extra);
    looked up once (a failed import is not cached by Python, and this is asked in every layer)."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def ltc_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """`query`/`key`/`value`: `[batch, heads, seq, head_dim]`. Returns `([batch, seq, heads, head_dim], None)`."""
    packed = kwargs.pop("ltc_packed", None)
    decoupled = kwargs.pop("ltc_decoupled", None)
    # transformers passes flash-attn's exclusive bound (ModernBERT: its config's sliding_window + 1)
    window = kwargs.pop("sliding_window", None)
    window = None if window is None else window - 1
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if decoupled is not None and decoupled.attending:
        return _label_pass(module, query, key, value, decoupled, dropout, scaling, window), None
    if packed is not None:
        output = _varlen_attention(query, key, value, packed, dropout, scaling, window)
    else:
        output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                           scaling=scaling, **kwargs)
    if decoupled is not None:
        decoupled.keys[module] = key
        decoupled.values[module] = value
    return output, None


def fused_varlen_runs(device: torch.device, dtype: torch.dtype, dropout: float, head_size: int) -> bool:
    """Whether packed attention gets a fused varlen kernel here: CUDA, fp16/bf16, heads of at most 256, and
    flash-attn installed, or torch's varlen_attn (torch >= 2.10) and no attention dropout (it has none).
    Elsewhere packed batches take an exact per-sequence loop, slower than padded SDPA, so
    `sequence_packing="auto"` packs only where this holds."""
    return (device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and head_size <= MAX_FUSED_HEAD_SIZE
            and (flash_attn_varlen() is not None or (torch_varlen_attn() is not None and dropout == 0.0)))


# SDPA over nested jagged tensors reaches its flash / memory-efficient CUDA kernels for half-precision heads that are
# a multiple of 8 (up to 256); elsewhere it takes its math path, slower than padding.
NESTED_SDPA_HEAD_MULTIPLE = 8


def packed_attention_is_fused(device: torch.device, dtype: torch.dtype, dropout: float, head_size: int) -> bool:
    """Whether a packed batch's attention runs fused here, which is where `sequence_packing="auto"` packs: a
    varlen kernel (`fused_varlen_runs`), or, with attention dropout (training) and no flash-attn, SDPA over
    nested jagged tensors (`nested_sdpa`), whose CUDA kernels take dropout."""
    if fused_varlen_runs(device, dtype, dropout, head_size):
        return True
    return (dropout > 0.0 and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
            and head_size <= MAX_FUSED_HEAD_SIZE and head_size % NESTED_SDPA_HEAD_MULTIPLE == 0)


def packing_pays(device: torch.device, dtype: torch.dtype, dropout: float, head_size: int, grad: bool) -> bool:
    """Where `sequence_packing="auto"` packs a padded batch: where the packed attention runs fused
    (`packed_attention_is_fused`), and on the CPU for inference without gradients, where the per-sequence loop
    (SDPA without a mask) beat padded batches in 7 of 8 interleaved rounds, 1.03x-1.23x in the median of two
    runs (MiniLM predicting GoEmotions; docs/benchmarks.md, "Prediction on the CPU"). CPU training is not
    measured, and stays padded."""
    if packed_attention_is_fused(device, dtype, dropout, head_size):
        return True
    return device.type == "cpu" and not grad and dropout == 0.0


def _pad_head_size(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero columns up to a multiple of `multiple`: q . k is unchanged, and the output's extra columns are 0."""
    missing = -t.shape[-1] % multiple
    return F.pad(t, (0, missing)) if missing else t


def _varlen_attention(query, key, value, packed: PackedSequences, dropout, scaling, window=None):
    if window is not None:  # a local layer: windows in position ids, which the fused kernels do not take
        return _windowed_sequence_loop(query, key, value, packed, dropout, scaling, window)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [total, heads, head_dim]
    cu, max_len, head_size = packed.cu_seqlens, packed.max_seqlen, q.shape[-1]
    if fused_varlen_runs(q.device, q.dtype, dropout, head_size):
        flash = flash_attn_varlen()
        if flash is not None:
            return flash(q, k, v, cu, cu, max_len, max_len, dropout_p=dropout, softmax_scale=scaling).unsqueeze(0)
        q, k, v = (_pad_head_size(t, TORCH_VARLEN_HEAD_MULTIPLE) for t in (q, k, v))
        output = torch_varlen_attn()(q, k, v, cu, cu, max_len, max_len, scale=scaling)  # the scale of the real size
        return output[..., :head_size].unsqueeze(0)
    # With dropout on CUDA: nested SDPA, whose varlen kernels take dropout. Not on the CPU, where its math path is
    # slower than the loop below (3.5x in fp32, 14x in bf16 for 16 texts of 20-80 tokens, 12 heads of 64).
    if dropout > 0.0 and q.device.type == "cuda":
        return nested_sdpa(query, key, value, packed, dropout, scaling)
    # Per-sequence loop: exact on every device and dtype, still free of padding.
    bounds = packed.host_offsets
    pieces = [
        F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout,
                                       scale=scaling)
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(pieces, dim=2).transpose(1, 2)


def within_window(query_positions: torch.Tensor, key_positions: torch.Tensor, window: int) -> torch.Tensor:
    """bool `[..., q, k]`: which keys a local layer's queries reach, `|p_query - p_key| <= window` (position ids
    `[..., q]` and `[..., k]`): the one definition of the window every execution applies."""
    return (query_positions[..., :, None] - key_positions[..., None, :]).abs() <= window


def _windowed_sequence_loop(query, key, value, packed: PackedSequences, dropout, scaling, window: int):
    """The per-sequence loop with each sequence's local window `|p_query - p_key| <= window` as its mask."""
    if packed.position_ids is None:
        raise ValueError("a local attention layer ran on packed sequences without their position ids "
                         "(PackedSequences.position_ids)")
    bounds, positions = packed.host_offsets, packed.position_ids
    pieces = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        near = within_window(positions[a:b], positions[a:b], window)  # [S, S]; the diagonal always holds
        pieces.append(F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                                     attn_mask=near, dropout_p=dropout, scale=scaling))
    return torch.cat(pieces, dim=2).transpose(1, 2)


def position_window_masks(attention_mask: torch.Tensor | None, position_ids: torch.Tensor, window: int,
                          additive_dtype: torch.dtype | None = None) -> dict:
    """The masks of a padded batch for an encoder with local layers (the mapping ModernBERT takes as its
    `attention_mask`): `full_attention` keeps the real keys, `sliding_attention` also only the keys within
    `window` position ids of the query. bool `[B, 1, S, S]` (True: attend), or with `additive_dtype` 0 / the
    dtype's minimum (eager attention's format). A padding query with no key in reach gets every key, as
    transformers' SDPA masks do: its output is never read, and an empty row would be NaN."""
    batch, seq_len = position_ids.shape
    keys = (torch.ones(batch, seq_len, dtype=torch.bool, device=position_ids.device) if attention_mask is None
            else attention_mask.bool())
    full = keys[:, None, None, :].expand(batch, 1, seq_len, seq_len)
    near = within_window(position_ids, position_ids, window)  # [B, S, S]
    sliding = near[:, None] & full
    sliding = sliding | ~sliding.any(dim=-1, keepdim=True)
    masks = {"full_attention": full, "sliding_attention": sliding}
    if additive_dtype is not None:
        minimum = torch.finfo(additive_dtype).min
        masks = {name: torch.zeros(mask.shape, dtype=additive_dtype, device=mask.device).masked_fill(~mask, minimum)
                 for name, mask in masks.items()}
    return masks


def nested_sdpa(query, key, value, packed: PackedSequences, dropout, scaling):
    """Packed attention with dropout as SDPA over nested jagged tensors (one call for the whole batch, no
    per-sequence loop): on CUDA PyTorch runs its flash / memory-efficient varlen kernels, which take dropout
    (torch's varlen_attn does not); on the CPU its math path. `query`/`key`/`value`: `[1, heads, total, d]`;
    returns `[1, total, heads, d]`, like the other packed paths. The lengths come from the host offsets, so
    building the nested tensors reads nothing back from the device."""
    bounds = packed.host_offsets
    min_seqlen = min(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    # [total, heads, d] must be contiguous (nested SDPA's rule); the encoder's q/k/v views already are, so no copy.
    nested = [torch.nested.nested_tensor_from_jagged(t[0].transpose(0, 1).contiguous(), packed.cu_seqlens.long(),
                                                     max_seqlen=packed.max_seqlen, min_seqlen=min_seqlen)
              .transpose(1, 2)
              for t in (query, key, value)]  # [B, heads, jagged, d]
    output = F.scaled_dot_product_attention(*nested, dropout_p=dropout, scale=scaling)
    return output.transpose(1, 2).values().unsqueeze(0)


def _label_pass(module, query, key, value, text: DecoupledText, dropout, scaling, window=None):
    """Label queries `[B, heads, n, d]` over the layer's cached text keys `[B, heads, T, d]` and their own key
    (`ltc_fast.ops.labels_attend_text`: its fused kernel on CUDA); in a local layer only the text within `window`
    position ids of the label (its own key is at distance 0)."""
    text_visible = None
    if window is not None:
        if text.text_positions is None or text.label_positions is None:
            raise ValueError("a local attention layer ran a label pass without the text's and the labels' "
                             "position ids")
        text_visible = within_window(text.label_positions, text.text_positions, window)  # [B, n, T]
    # transformers passes dropout 0 outside training
    return labels_attend_text(query, text.keys[module], text.values[module], key, value, text.key_padding, scaling,
                              dropout, training=dropout > 0, backend=text.ops_backend, text_visible=text_visible)


def sdpa_mask_without_sync(*args, allow_is_bidirectional_skip: bool = False, attention_mask=None, **kwargs):
    """SDPA's masks for padded calls. transformers drops a padding mask that holds no padding, which it finds by
    reading the mask (`.all()`: a host sync every forward); here it is dropped only where no mask was given,
    which the model knows without reading anything."""
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs,
                     allow_is_bidirectional_skip=allow_is_bidirectional_skip and attention_mask is None)


def register() -> None:
    """Make `attn_implementation="ltc_fast"` known to transformers (idempotent)."""
    AttentionInterface.register(NAME, ltc_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask_without_sync)


register()
