"""Encoder input embeddings with the label rows injected after [CLS].

Two implementations of one function, chosen by `ltc_fast.ops.dispatch.resolve_backend`:
- `inject_label_embeddings_torch`, the plain-PyTorch twin: the definition and the test oracle;
- a Triton kernel that writes every output row straight from the word table or the label table (no word
  embeddings of the whole text followed by a concatenation), registered as the custom op
  `ltc_fast::inject_label_embeddings` so that `torch.compile` keeps it whole. Its backward sums each label
  row's gradient over the batch in a second kernel (one program per block of label rows looping over the
  sequences: no atomics, deterministic) and hands the text rows to `aten.embedding_dense_backward`, PyTorch's
  own (deterministic) embedding backward, which also gives the padding row no gradient.

Layouts: padded text ids `[B, T]` -> `[B, T + N, E]`; packed ids `[total_text]` with `cu_seqlens` ->
`[total_text + B * N, E]` (see `ltc_fast.layout`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import layout
from ..layout import LABEL_START
from .dispatch import resolve_backend
from .triton_support import TRITON, launch_guard, tl, triton, triton_applies

OP = "inject_label_embeddings"
FAST_BACKEND = TRITON


# ------------------------------------------------------------------------------------------------ the twin
def inject_label_embeddings_torch(
    text_ids: torch.Tensor,
    word_embeddings: torch.Tensor,
    label_embeddings: torch.Tensor,
    padding_idx: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch: `F.embedding` of the text with the N label rows after [CLS]; the definition of
    `inject_label_embeddings`.

    Args:
        text_ids, word_embeddings, label_embeddings, padding_idx, cu_seqlens: as in `inject_label_embeddings`.
    Returns:
        embeddings: padded (batch_size, text_len + num_labels, embedding_dim) or packed
            (total_text + batch_size * num_labels, embedding_dim), the tables' dtype.
    """
    words = F.embedding(text_ids, word_embeddings, padding_idx=padding_idx)
    if cu_seqlens is None:
        labels = label_embeddings.unsqueeze(0).expand(text_ids.shape[0], -1, -1)
        return torch.cat([words[:, :LABEL_START], labels, words[:, LABEL_START:]], dim=1)
    batch, num_labels = cu_seqlens.numel() - 1, label_embeddings.shape[0]
    rows = torch.cat([layout.packed_text_rows(cu_seqlens, num_labels, text_ids.numel()),
                      layout.packed_label_rows(cu_seqlens, num_labels).flatten()])
    sources = torch.cat([words, label_embeddings.repeat(batch, 1)])
    return sources.new_empty(sources.shape).index_copy(0, rows, sources)


# ------------------------------------------------------------------------------------------ Triton kernels
# The batch's geometry changes from call to call: not specialised (Triton would compile a variant per value class,
# == 1 or divisible by 16, a JIT of seconds inside a training step). The table widths and strides stay
# specialised: they are fixed per model and their divisibility lets Triton vectorise the row copies.
_PER_CALL_INTS = ["total_rows", "num_seqs", "text_len"]

if triton is not None:
    # Globals read inside kernels must be constexpr objects for Triton's compiler.
    _LABEL_START = tl.constexpr(LABEL_START)

    @triton.jit
    def _sequence_of_rows(rows, row_ok, cu_seqlens_ptr, num_seqs, num_labels, SEARCH_STEPS: tl.constexpr):
        """The sequence each packed output row belongs to: a binary search over the sequence starts
        `cu_seqlens[b] + b * N` (SEARCH_STEPS = ceil(log2(B)) halvings of [0, B))."""
        low = tl.zeros_like(rows)
        high = tl.zeros_like(rows) + num_seqs
        for _ in tl.static_range(SEARCH_STEPS):
            mid = (low + high) // 2
            start = tl.load(cu_seqlens_ptr + mid, mask=row_ok, other=0).to(tl.int64) + mid * num_labels
            at_or_after = start <= rows
            low = tl.where(at_or_after, mid, low)
            high = tl.where(at_or_after, high, mid)
        return low

    @triton.jit(do_not_specialize=_PER_CALL_INTS)
    def _inject_forward_kernel(
        text_ids_ptr, cu_seqlens_ptr, word_ptr, label_ptr, out_ptr,
        total_rows, num_seqs, num_labels, text_len, width, num_words,
        word_stride, label_stride,
        PACKED: tl.constexpr, SEARCH_STEPS: tl.constexpr,
        BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
        row_ok = rows < total_rows
        col_ok = cols < width
        if PACKED:
            seq = _sequence_of_rows(rows, row_ok, cu_seqlens_ptr, num_seqs, num_labels, SEARCH_STEPS)
            text_start = tl.load(cu_seqlens_ptr + seq, mask=row_ok, other=0).to(tl.int64)
        else:
            seq = rows // (text_len + num_labels)
            text_start = seq * text_len
        position = rows - text_start - seq * num_labels  # within the sequence: [CLS], labels, the rest
        is_label = (position >= _LABEL_START) & (position < _LABEL_START + num_labels)
        text_index = text_start + tl.where(position < _LABEL_START, position, position - num_labels)
        word_id = tl.load(text_ids_ptr + text_index, mask=row_ok & ~is_label, other=0).to(tl.int64)
        # An id outside the table (unchecked input: check_values=False, torch.compile) reads nothing and gives
        # a NaN row, which shows in the logits, rather than another row or memory past the table.
        id_ok = (word_id >= 0) & (word_id < num_words)
        label_id = position - _LABEL_START
        both_ok = row_ok[:, None] & col_ok[None, :]
        word_row = tl.load(word_ptr + word_id[:, None] * word_stride + cols[None, :],
                           mask=both_ok & (~is_label & id_ok)[:, None], other=float("nan"))
        label_row = tl.load(label_ptr + label_id[:, None] * label_stride + cols[None, :],
                            mask=both_ok & is_label[:, None], other=0.0)
        tl.store(out_ptr + rows[:, None] * width + cols[None, :],
                 tl.where(is_label[:, None], label_row, word_row), mask=both_ok)

    @triton.jit(do_not_specialize=["num_seqs", "text_len"])
    def _label_grad_kernel(
        grad_ptr, cu_seqlens_ptr, out_ptr,
        num_seqs, num_labels, text_len, width,
        PACKED: tl.constexpr, BLOCK_LABELS: tl.constexpr, BLOCK_COLS: tl.constexpr,
    ):
        """d label_embeddings[i] = sum over sequences b of d out[row of label i in b], summed in fp32 in a
        fixed order: the same bits on every run."""
        labels = tl.program_id(0) * BLOCK_LABELS + tl.arange(0, BLOCK_LABELS)
        cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
        mask = (labels < num_labels)[:, None] & (cols < width)[None, :]
        total = tl.zeros((BLOCK_LABELS, BLOCK_COLS), dtype=tl.float32)
        # A while loop, not `range(num_seqs)`: Triton's interpreter cannot iterate over a runtime scalar with
        # numpy >= 2.4 (it calls int() on a 1-element array).
        seq = 0
        while seq < num_seqs:
            if PACKED:
                text_start = tl.load(cu_seqlens_ptr + seq).to(tl.int64)
            else:
                text_start = (seq * text_len).to(tl.int64)
            rows = text_start + seq * num_labels + _LABEL_START + labels
            total += tl.load(grad_ptr + rows[:, None] * width + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            seq += 1
        tl.store(out_ptr + labels[:, None] * width + cols[None, :], total.to(out_ptr.dtype.element_ty), mask=mask)


def _column_block(width: int) -> int:
    return min(triton.next_power_of_2(width), 256)


def forward_blocks(width: int) -> dict:
    """The forward kernel's tile: rows x columns of about 4096 elements (also what the sm_90 compile test
    builds)."""
    block_cols = _column_block(width)
    return {"BLOCK_ROWS": max(1, 4096 // block_cols), "BLOCK_COLS": block_cols}


def label_grad_blocks(num_labels: int, width: int) -> dict:
    """The label-gradient kernel's tile: label rows x columns of at most 2048 elements."""
    block_cols = _column_block(width)
    return {"BLOCK_LABELS": max(1, min(triton.next_power_of_2(num_labels), 2048 // block_cols)),
            "BLOCK_COLS": block_cols}


def _batch_size(text_ids: torch.Tensor, cu_seqlens: torch.Tensor | None) -> int:
    return text_ids.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def _output_shape(text_ids, cu_seqlens, num_labels, width):
    if cu_seqlens is None:
        return (text_ids.shape[0], text_ids.shape[1] + num_labels, width)
    return (text_ids.shape[0] + (cu_seqlens.shape[0] - 1) * num_labels, width)


def inject_forward_triton(text_ids, cu_seqlens, word_embeddings, label_embeddings) -> torch.Tensor:
    """Launch the forward kernel: the injected embeddings, shaped as `inject_label_embeddings` returns them."""
    num_labels, width = label_embeddings.shape
    batch = _batch_size(text_ids, cu_seqlens)
    out = word_embeddings.new_empty(_output_shape(text_ids, cu_seqlens, num_labels, width))
    text_ids = text_ids.contiguous()
    word_embeddings = word_embeddings if word_embeddings.stride(1) == 1 else word_embeddings.contiguous()
    label_embeddings = label_embeddings if label_embeddings.stride(1) == 1 else label_embeddings.contiguous()
    total_rows = out.shape[0] * (out.shape[1] if out.dim() == 3 else 1)
    if out.numel() == 0:
        return out  # an empty batch: no program to launch
    blocks = forward_blocks(width)
    grid = (triton.cdiv(total_rows, blocks["BLOCK_ROWS"]), triton.cdiv(width, blocks["BLOCK_COLS"]))
    with launch_guard(out):
        _inject_forward_kernel[grid](
            text_ids, text_ids if cu_seqlens is None else cu_seqlens, word_embeddings, label_embeddings, out,
            total_rows, batch, num_labels, text_ids.shape[-1], width, word_embeddings.shape[0],
            word_embeddings.stride(0), label_embeddings.stride(0),
            PACKED=cu_seqlens is not None,
            # halvings of the packed search; 0 when padded (one variant whatever the batch size)
            SEARCH_STEPS=max(batch - 1, 0).bit_length() if cu_seqlens is not None else 0,
            **blocks,
        )
    return out


def label_grad_triton(grad_out, cu_seqlens, num_labels) -> torch.Tensor:
    """Launch the label-gradient kernel: the gradient of `label_embeddings` `[N, E]` from the gradient of the
    injected output."""
    grad_out = grad_out.contiguous()
    width = grad_out.shape[-1]
    if cu_seqlens is None:
        batch, text_len = grad_out.shape[0], grad_out.shape[1] - num_labels
    else:
        batch, text_len = cu_seqlens.shape[0] - 1, 0
    out = grad_out.new_empty(num_labels, width)
    if batch == 0:
        return out.zero_()
    blocks = label_grad_blocks(num_labels, width)
    grid = (triton.cdiv(num_labels, blocks["BLOCK_LABELS"]), triton.cdiv(width, blocks["BLOCK_COLS"]))
    with launch_guard(out):
        _label_grad_kernel[grid](
            grad_out, grad_out if cu_seqlens is None else cu_seqlens, out,
            batch, num_labels, text_len, width,
            PACKED=cu_seqlens is not None, **blocks,
        )
    return out


def _word_grad(grad_out, text_ids, cu_seqlens, num_words, num_labels, padding_idx) -> torch.Tensor:
    """The word table's gradient: the text rows of the output's gradient through PyTorch's embedding
    backward (rows summed per id, none for `padding_idx`)."""
    if cu_seqlens is None:  # padded: every row's label block is the same columns
        text_grad = torch.cat([grad_out[:, :LABEL_START], grad_out[:, LABEL_START + num_labels:]], dim=1)
        text_grad = text_grad.reshape(-1, grad_out.shape[-1])
    else:
        rows = layout.packed_text_rows(cu_seqlens, num_labels, text_ids.numel())
        text_grad = grad_out.index_select(0, rows)
    return torch.ops.aten.embedding_dense_backward(text_grad, text_ids.reshape(-1), num_words, padding_idx, False)


# ---------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("ltc_fast::inject_label_embeddings", mutates_args=())
def _inject_op(text_ids: torch.Tensor, cu_seqlens: torch.Tensor | None, word_embeddings: torch.Tensor,
               label_embeddings: torch.Tensor, padding_idx: int) -> torch.Tensor:
    # padding_idx does not change the forward; it is an argument so that the backward knows it.
    return inject_forward_triton(text_ids, cu_seqlens, word_embeddings, label_embeddings)


@_inject_op.register_fake
def _(text_ids, cu_seqlens, word_embeddings, label_embeddings, padding_idx):
    num_labels, width = label_embeddings.shape
    return word_embeddings.new_empty(_output_shape(text_ids, cu_seqlens, num_labels, width))


@torch.library.custom_op("ltc_fast::inject_label_embeddings_label_grad", mutates_args=())
def _label_grad_op(grad_out: torch.Tensor, cu_seqlens: torch.Tensor | None, num_labels: int) -> torch.Tensor:
    return label_grad_triton(grad_out, cu_seqlens, num_labels)


@_label_grad_op.register_fake
def _(grad_out, cu_seqlens, num_labels):
    return grad_out.new_empty(num_labels, grad_out.shape[-1])


def _setup_context(ctx, inputs, output):
    text_ids, cu_seqlens, word_embeddings, label_embeddings, padding_idx = inputs
    ctx.save_for_backward(text_ids, cu_seqlens)
    ctx.num_words = word_embeddings.shape[0]
    ctx.num_labels = label_embeddings.shape[0]
    ctx.padding_idx = padding_idx


def _backward(ctx, grad_out):
    text_ids, cu_seqlens = ctx.saved_tensors
    word_grad = label_grad = None
    if ctx.needs_input_grad[2]:
        word_grad = _word_grad(grad_out, text_ids, cu_seqlens, ctx.num_words, ctx.num_labels, ctx.padding_idx)
    if ctx.needs_input_grad[3]:
        label_grad = _label_grad_op(grad_out, cu_seqlens, ctx.num_labels)
    return None, None, word_grad, label_grad, None


_inject_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------- validation
def _validate(text_ids, word_embeddings, label_embeddings, padding_idx, cu_seqlens, check_values) -> None:
    """Shapes, dtypes and devices; and, when `check_values` and outside torch.compile, the values (ids in range,
    offsets), which costs a host sync."""
    if not isinstance(text_ids, torch.Tensor) or text_ids.is_floating_point() or text_ids.is_complex():
        raise ValueError(f"text_ids must be an integer tensor, got "
                         f"{text_ids.dtype if isinstance(text_ids, torch.Tensor) else type(text_ids).__name__}")
    for name, table in (("word_embeddings", word_embeddings), ("label_embeddings", label_embeddings)):
        if table.dim() != 2:
            raise ValueError(f"{name} must be 2-D [rows, embedding_dim], got shape {list(table.shape)}")
        if table.device != text_ids.device:
            raise ValueError(f"{name} is on {table.device} but text_ids on {text_ids.device}")
    if label_embeddings.shape[1] != word_embeddings.shape[1] or label_embeddings.dtype != word_embeddings.dtype:
        raise ValueError(f"label_embeddings must match word_embeddings' width and dtype "
                         f"({word_embeddings.shape[1]}, {word_embeddings.dtype}), got "
                         f"({label_embeddings.shape[1]}, {label_embeddings.dtype})")
    num_words = word_embeddings.shape[0]
    if padding_idx is not None and not -num_words <= padding_idx < num_words:
        raise ValueError(f"padding_idx must index a row of word_embeddings ({num_words} rows), got {padding_idx}")
    if cu_seqlens is None:
        if text_ids.dim() != 2 or text_ids.shape[1] < LABEL_START:
            raise ValueError(f"text_ids must be [batch_size, seq_len] with seq_len >= {LABEL_START} ([CLS]), or "
                             f"1-D packed ids with cu_seqlens; got shape {list(text_ids.shape)}")
    else:
        if text_ids.dim() != 1:
            raise ValueError(f"with cu_seqlens, text_ids must be 1-D packed ids [total_text], got shape "
                             f"{list(text_ids.shape)}")
        if (cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64)
                or cu_seqlens.device != text_ids.device):
            raise ValueError(f"cu_seqlens must be int32 or int64 [batch_size + 1] on {text_ids.device}, got "
                             f"{cu_seqlens.dtype} shape {list(cu_seqlens.shape)} on {cu_seqlens.device}")
    if not check_values or torch.compiler.is_compiling():
        return  # value checks need the data on the host: not inside a compiled graph
    bad_ids = ((text_ids < 0) | (text_ids >= num_words)).any()
    if bool(bad_ids):
        raise ValueError(f"text_ids must lie in [0, {num_words}) (rows of word_embeddings); got values from "
                         f"{int(text_ids.min())} to {int(text_ids.max())}")
    if cu_seqlens is not None:
        offsets = cu_seqlens.tolist()
        lengths = [b - a for a, b in zip(offsets, offsets[1:])]
        if offsets[0] != 0 or offsets[-1] != text_ids.shape[0] or min(lengths) < LABEL_START:
            raise ValueError(f"cu_seqlens must rise from 0 to len(text_ids) = {text_ids.shape[0]} with every text "
                             f"at least {LABEL_START} token long ([CLS]); got {offsets}")


# ----------------------------------------------------------------------------------------- public function
def inject_label_embeddings(
    text_ids: torch.Tensor,
    word_embeddings: torch.Tensor,
    label_embeddings: torch.Tensor,
    padding_idx: int | None = None,
    backend: str | None = None,
    *,
    cu_seqlens: torch.Tensor | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """Text ids -> encoder input embeddings with the N label rows after [CLS].

    Equal to the reference's `word_embeddings(input_ids)` on its label-token ids, including no gradient to the
    padding row (`padding_idx`), but without a `[V + N, E]` table or label ids in the input. Packed sequence b
    sits at rows `cu_seqlens[b] + b * N ...`: [CLS], the N labels, the rest of its text (see `ltc_fast.layout`).
    The backward is deterministic on every backend.

    Args:
        text_ids: padded (batch_size, text_len) with text_len >= LABEL_START ([CLS] first), or packed
            (total_text,) with `cu_seqlens`; integer ids in [0, vocab_size).
        word_embeddings: (vocab_size, embedding_dim), floating, on text_ids' device.
        label_embeddings: (num_labels, embedding_dim), word_embeddings' dtype, on text_ids' device.
        padding_idx: int in [-vocab_size, vocab_size) (negative counts from the end), the row that gets no
            gradient; None: every row gets its gradient.
        backend: "auto" (None), "torch" or "triton", see `ltc_fast.ops.dispatch`.
        cu_seqlens: (batch_size + 1,), int32 or int64, on text_ids' device: sequence b is
            `text_ids[cu_seqlens[b]:cu_seqlens[b + 1]]`, rising from 0 to total_text, each at least LABEL_START
            long; None for padded ids.
        check_values: False skips the checks that read `text_ids` and `cu_seqlens` (a host sync on a GPU), for
            callers that built or checked them; an id outside the table then gives a NaN row on the Triton
            path.
    Returns:
        embeddings: padded (batch_size, text_len + num_labels, embedding_dim) or packed
            (total_text + batch_size * num_labels, embedding_dim), word_embeddings' dtype.
    Raises:
        ValueError for bad shapes, dtypes, devices or values, before any kernel runs.
    """
    _validate(text_ids, word_embeddings, label_embeddings, padding_idx, cu_seqlens, check_values)
    applies, why_not = triton_applies(backend, text_ids, word_embeddings, label_embeddings)
    if resolve_backend(OP, backend, FAST_BACKEND, applies, why_not) == FAST_BACKEND:
        if padding_idx is not None and padding_idx < 0:
            padding_idx += word_embeddings.shape[0]
        return _inject_op(text_ids, cu_seqlens, word_embeddings, label_embeddings,
                          -1 if padding_idx is None else padding_idx)
    return inject_label_embeddings_torch(text_ids, word_embeddings, label_embeddings, padding_idx, cu_seqlens)
