"""The shared label head: one `Linear(H, 1)` applied to the states at the label positions only.

Two implementations of one function, chosen by `ltc_fast.ops.dispatch.resolve_backend`:
- `label_head_logits_torch`, the plain-PyTorch twin: the definition and the test oracle;
- a Triton kernel that reads only the N label rows of each sequence, drops them out and projects them in one
  pass (`logits[b, i] = w . dropout(h[row(b, i)]) + bias`, accumulated in fp32), registered as the custom op
  `ltc_fast::label_head`. Its backward writes `dh` only at the label rows of a zero-initialised gradient (the
  gradient of `hidden_states` itself, no other dense temporary) and reduces `dw` deterministically from
  per-program partial sums.

Dropout: the kernel draws its keep mask from Philox (`tl.rand4x`, four draws per call: see `_draws`) at a seed
drawn from torch's default generator (so `torch.manual_seed` makes runs reproducible) and the element's label
item and column; the backward recomputes the same mask. `dropout_keep_mask` materialises that mask, so the
twin can be checked with it.

Layouts: padded `hidden_states` `[B, S, H]` (label i of sequence b at position `LABEL_START + i`) or packed
`[total, H]` with `label_rows` int64 `[B, N]` (see `ltc_fast.layout.packed_label_rows`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import LABEL_START
from .dispatch import resolve_backend
from .triton_support import TRITON, draw_dropout_seed, launch_guard, tl, triton, triton_applies

OP = "label_head_logits"
FAST_BACKEND = TRITON


# ------------------------------------------------------------------------------------------------ the twin
def label_states(hidden_states: torch.Tensor, num_labels: int, label_rows: torch.Tensor | None = None):
    """`[B, N, H]`: the hidden states of the label tokens."""
    if label_rows is None:
        return hidden_states[:, LABEL_START:LABEL_START + num_labels]
    return hidden_states[label_rows]


def label_head_logits_torch(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_labels: int,
    dropout_p: float = 0.0,
    training: bool = False,
    label_rows: torch.Tensor | None = None,
    keep_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch: `F.dropout` then `F.linear` on the label states; the definition of `label_head_logits`.

    Args:
        hidden_states, weight, bias, num_labels, dropout_p, training, label_rows: as in `label_head_logits`.
        keep_mask: (batch_size, num_labels, hidden), bool: replaces dropout's random mask (used when `training`
            and `dropout_p > 0`), e.g. with the mask the Triton kernel drew (`dropout_keep_mask`), to compare the
            two exactly. None: `F.dropout`'s own draw.
    Returns:
        logits: (batch_size, num_labels), `F.linear`'s dtype (hidden_states', or autocast's under autocast).
    """
    states = label_states(hidden_states, num_labels, label_rows)
    if keep_mask is not None and training and dropout_p > 0:
        states = states * keep_mask / (1.0 - dropout_p) if dropout_p < 1 else states * 0.0
    else:
        states = F.dropout(states, p=dropout_p, training=training)
    return F.linear(states, weight, bias).squeeze(-1)


# ------------------------------------------------------------------------------------------ Triton kernels
# Triton compiles a variant per value class of plain int arguments (== 1, divisible by 16): the ones that change
# from call to call (the dropout seed, the batch's geometry) are not specialised, so that a training loop does
# not JIT-compile a new variant every few steps.
_PER_CALL_INTS = ["seed", "num_items", "num_labels", "seq_len"]

if triton is not None:
    # Globals read inside kernels must be constexpr objects for Triton's compiler.
    _LABEL_START = tl.constexpr(LABEL_START)

    @triton.jit
    def _draws(seed, items, start, H: tl.constexpr, BLOCK_H: tl.constexpr):
        """Four uniform draws `[items, BLOCK_H]` per Philox call, for the four column chunks
        `start + k * BLOCK_H + j` (k = 0..3) of a super-block of 4 * BLOCK_H columns. The counter of column j
        of super-block s is `item * H + s * BLOCK_H + j`, distinct for every column that exists. Before, one call
        per element kept one of its four outputs: four times the Philox rounds, and register spills."""
        cols = (start // 4) + tl.arange(0, BLOCK_H)
        return tl.rand4x(seed, items[:, None] * H + cols[None, :])

    @triton.jit
    def _rows_of_items(items, item_ok, label_rows_ptr, num_labels, seq_len, GIVEN_ROWS: tl.constexpr):
        """The row of `hidden_states` (flattened to `[rows, H]`) holding each label item `b * N + i`."""
        if GIVEN_ROWS:
            return tl.load(label_rows_ptr + items, mask=item_ok, other=0).to(tl.int64)
        return (items // num_labels) * seq_len + _LABEL_START + items % num_labels

    @triton.jit(do_not_specialize=_PER_CALL_INTS)
    def _head_forward_kernel(
        hidden_ptr, label_rows_ptr, weight_ptr, bias_ptr, out_ptr,
        seed, p, scale, num_items, num_labels, seq_len,
        H: tl.constexpr, GIVEN_ROWS: tl.constexpr, DROPOUT: tl.constexpr,
        BLOCK_ITEMS: tl.constexpr, BLOCK_H: tl.constexpr,
    ):
        items = tl.program_id(0).to(tl.int64) * BLOCK_ITEMS + tl.arange(0, BLOCK_ITEMS)
        item_ok = items < num_items
        rows = _rows_of_items(items, item_ok, label_rows_ptr, num_labels, seq_len, GIVEN_ROWS)
        total = tl.zeros((BLOCK_ITEMS,), dtype=tl.float32)
        # A loop, not static_range: unrolled, the compiler hoisted every chunk's loads and ran out of registers.
        for start in range(0, H, 4 * BLOCK_H):
            if DROPOUT:
                draws = _draws(seed, items, start, H, BLOCK_H)
            for k in tl.static_range(4):
                cols = start + k * BLOCK_H + tl.arange(0, BLOCK_H)
                col_ok = cols < H
                states = tl.load(hidden_ptr + rows[:, None] * H + cols[None, :],
                                 mask=item_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
                if DROPOUT:
                    states = tl.where(draws[k] >= p, states * scale, 0.0)
                weight = tl.load(weight_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
                total += tl.sum(states * weight[None, :], axis=1)
        total += tl.load(bias_ptr).to(tl.float32)
        tl.store(out_ptr + items, total.to(out_ptr.dtype.element_ty), mask=item_ok)

    @triton.jit(do_not_specialize=_PER_CALL_INTS)
    def _head_backward_kernel(
        grad_ptr, hidden_ptr, label_rows_ptr, weight_ptr, grad_hidden_ptr, weight_partials_ptr,
        seed, p, scale, num_items, num_labels, seq_len,
        H: tl.constexpr, GIVEN_ROWS: tl.constexpr, DROPOUT: tl.constexpr,
        BLOCK_ITEMS: tl.constexpr, BLOCK_H: tl.constexpr,
    ):
        """dh[row(item)] = g[item] * w * mask * scale, written only at label rows; this program's share of
        dw = sum over its items of g[item] * dropout(h[row(item)]), summed over programs afterwards."""
        program = tl.program_id(0)
        items = program.to(tl.int64) * BLOCK_ITEMS + tl.arange(0, BLOCK_ITEMS)
        item_ok = items < num_items
        rows = _rows_of_items(items, item_ok, label_rows_ptr, num_labels, seq_len, GIVEN_ROWS)
        grad = tl.load(grad_ptr + items, mask=item_ok, other=0.0).to(tl.float32)
        for start in range(0, H, 4 * BLOCK_H):
            if DROPOUT:
                draws = _draws(seed, items, start, H, BLOCK_H)
            for k in tl.static_range(4):
                cols = start + k * BLOCK_H + tl.arange(0, BLOCK_H)
                col_ok = cols < H
                both_ok = item_ok[:, None] & col_ok[None, :]
                states = tl.load(hidden_ptr + rows[:, None] * H + cols[None, :], mask=both_ok,
                                 other=0.0).to(tl.float32)
                weight = tl.load(weight_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
                factor = grad[:, None]
                if DROPOUT:
                    factor = tl.where(draws[k] >= p, factor * scale, 0.0)
                tl.store(grad_hidden_ptr + rows[:, None] * H + cols[None, :],
                         (factor * weight[None, :]).to(grad_hidden_ptr.dtype.element_ty), mask=both_ok)
                tl.store(weight_partials_ptr + program * H + cols, tl.sum(factor * states, axis=0),
                         mask=col_ok)

    @triton.jit(do_not_specialize=["seed", "num_items"])
    def _keep_mask_kernel(out_ptr, seed, p, num_items, H: tl.constexpr, BLOCK_ITEMS: tl.constexpr,
                          BLOCK_H: tl.constexpr):
        items = tl.program_id(0).to(tl.int64) * BLOCK_ITEMS + tl.arange(0, BLOCK_ITEMS)
        for start in range(0, H, 4 * BLOCK_H):
            draws = _draws(seed, items, start, H, BLOCK_H)
            for k in tl.static_range(4):
                cols = start + k * BLOCK_H + tl.arange(0, BLOCK_H)
                tl.store(out_ptr + items[:, None] * H + cols[None, :], (draws[k] >= p).to(tl.int8),
                         mask=(items < num_items)[:, None] & (cols < H)[None, :])


def head_blocks(hidden: int) -> dict:
    """The tile of every head kernel: 16 label items x BLOCK_H columns, BLOCK_H a quarter of the row (one Philox
    call serves four chunks), 16 to 64. Larger tiles spilled registers at 4 warps on sm_90 (registers and spills
    per kernel: tests/test_op_gpu_compile.py reports them). The dropout mask's layout depends on BLOCK_H, so
    every kernel takes it from here."""
    return {"BLOCK_ITEMS": 16, "BLOCK_H": min(max(triton.next_power_of_2(triton.cdiv(hidden, 4)), 16), 64)}


def _dropout_args(dropout_p: float, seed: torch.Tensor | None) -> tuple[bool, int, float, float]:
    """(dropout on?, seed, p, scale) for the kernels; no mask at all for p = 0 or without a seed (eval)."""
    if seed is None or dropout_p == 0:
        return False, 0, 0.0, 1.0
    return True, int(seed), float(dropout_p), (1.0 / (1.0 - dropout_p) if dropout_p < 1 else 0.0)


def _geometry(hidden_states, label_rows) -> tuple[int, int]:
    """(B, S): S is the padded sequence length (0 when `label_rows` give the rows)."""
    if label_rows is None:
        return hidden_states.shape[0], hidden_states.shape[1]
    return label_rows.shape[0], 0


def dropout_keep_mask(seed: torch.Tensor | int, batch_size: int, num_labels: int, hidden_size: int,
                      dropout_p: float, device) -> torch.Tensor:
    """The keep mask (bool `[B, N, H]`) the head kernel uses for this seed, computed by the same Triton code."""
    out = torch.empty(batch_size, num_labels, hidden_size, dtype=torch.int8, device=device)
    num_items = batch_size * num_labels
    blocks = head_blocks(hidden_size)
    with launch_guard(out):
        _keep_mask_kernel[(triton.cdiv(num_items, blocks["BLOCK_ITEMS"]),)](
            out, int(seed), float(dropout_p), num_items, H=hidden_size, **blocks)
    return out.bool()


def head_forward_triton(hidden_states, weight, bias, label_rows, num_labels, dropout_p, seed) -> torch.Tensor:
    """Launch the forward kernel: the logits `[B, N]` in hidden_states' dtype (`seed` None: no dropout)."""
    hidden_states = hidden_states.contiguous()
    batch, seq_len = _geometry(hidden_states, label_rows)
    hidden = hidden_states.shape[-1]
    out = hidden_states.new_empty(batch, num_labels)
    dropout, seed, p, scale = _dropout_args(dropout_p, seed)
    num_items = batch * num_labels
    if num_items == 0:
        return out  # an empty batch: no program to launch
    blocks = head_blocks(hidden)
    with launch_guard(hidden_states):
        _head_forward_kernel[(triton.cdiv(num_items, blocks["BLOCK_ITEMS"]),)](
            hidden_states, hidden_states if label_rows is None else label_rows.contiguous(), weight.contiguous(),
            bias, out, seed, p, scale, num_items, num_labels, seq_len,
            H=hidden, GIVEN_ROWS=label_rows is not None, DROPOUT=dropout, **blocks,
        )
    return out


def head_backward_triton(grad_logits, hidden_states, weight, bias, label_rows, num_labels, dropout_p, seed):
    """Launch the backward kernel: (dh, dw, dbias), shaped and typed as hidden_states, weight and bias. `dh` is
    zero outside the label rows; the kernel writes the label rows only."""
    hidden_states = hidden_states.contiguous()
    grad_logits = grad_logits.contiguous()
    batch, seq_len = _geometry(hidden_states, label_rows)
    hidden = hidden_states.shape[-1]
    grad_hidden = torch.zeros_like(hidden_states)
    dropout, seed, p, scale = _dropout_args(dropout_p, seed)
    num_items = batch * num_labels
    blocks = head_blocks(hidden)
    programs = max(triton.cdiv(num_items, blocks["BLOCK_ITEMS"]), 1)  # one program (of no items): empty batch
    weight_partials = torch.empty(programs, hidden, dtype=torch.float32, device=hidden_states.device)
    with launch_guard(hidden_states):
        _head_backward_kernel[(programs,)](
            grad_logits, hidden_states, hidden_states if label_rows is None else label_rows.contiguous(),
            weight.contiguous(), grad_hidden, weight_partials, seed, p, scale, num_items, num_labels, seq_len,
            H=hidden, GIVEN_ROWS=label_rows is not None, DROPOUT=dropout, **blocks,
        )
    grad_weight = weight_partials.sum(dim=0).reshape(weight.shape).to(weight.dtype)
    grad_bias = grad_logits.float().sum().reshape(bias.shape).to(bias.dtype)
    return grad_hidden, grad_weight, grad_bias


# ---------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("ltc_fast::label_head", mutates_args=())
def _head_op(hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, label_rows: torch.Tensor | None,
             num_labels: int, dropout_p: float, seed: torch.Tensor | None) -> torch.Tensor:
    return head_forward_triton(hidden_states, weight, bias, label_rows, num_labels, dropout_p, seed)


@_head_op.register_fake
def _(hidden_states, weight, bias, label_rows, num_labels, dropout_p, seed):
    batch = hidden_states.shape[0] if label_rows is None else label_rows.shape[0]
    return hidden_states.new_empty(batch, num_labels)


@torch.library.custom_op("ltc_fast::label_head_backward", mutates_args=())
def _head_backward_op(grad_logits: torch.Tensor, hidden_states: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor, label_rows: torch.Tensor | None, num_labels: int, dropout_p: float,
                      seed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return head_backward_triton(grad_logits, hidden_states, weight, bias, label_rows, num_labels, dropout_p, seed)


@_head_backward_op.register_fake
def _(grad_logits, hidden_states, weight, bias, label_rows, num_labels, dropout_p, seed):
    return torch.empty_like(hidden_states), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    hidden_states, weight, bias, label_rows, num_labels, dropout_p, seed = inputs
    ctx.save_for_backward(hidden_states, weight, bias, label_rows, seed)
    ctx.num_labels, ctx.dropout_p = num_labels, dropout_p


def _backward(ctx, grad_logits):
    hidden_states, weight, bias, label_rows, seed = ctx.saved_tensors
    grad_hidden, grad_weight, grad_bias = _head_backward_op(
        grad_logits, hidden_states, weight, bias, label_rows, ctx.num_labels, ctx.dropout_p, seed)
    needs = ctx.needs_input_grad
    return (grad_hidden if needs[0] else None, grad_weight if needs[1] else None, grad_bias if needs[2] else None,
            None, None, None, None)


_head_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------- validation
def _validate(hidden_states, weight, bias, num_labels, dropout_p, label_rows, check_values) -> None:
    """Shapes, dtypes and devices; and, when `check_values` and outside torch.compile, the values of
    `label_rows` (a host sync)."""
    if not isinstance(hidden_states, torch.Tensor) or not hidden_states.is_floating_point():
        raise ValueError("hidden_states must be a floating-point tensor")
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
    hidden = hidden_states.shape[-1]
    if label_rows is None:
        if hidden_states.dim() != 3 or hidden_states.shape[1] < LABEL_START + num_labels:
            raise ValueError(f"hidden_states must be [batch_size, seq_len, hidden] with seq_len >= "
                             f"{LABEL_START + num_labels} ([CLS] and {num_labels} labels), or 2-D packed states "
                             f"with label_rows; got shape {list(hidden_states.shape)}")
    else:
        if hidden_states.dim() != 2:
            raise ValueError(f"with label_rows, hidden_states must be 2-D packed states [total, hidden], got "
                             f"shape {list(hidden_states.shape)}")
        if (label_rows.dtype != torch.int64 or label_rows.dim() != 2 or label_rows.shape[1] != num_labels
                or label_rows.device != hidden_states.device):
            raise ValueError(f"label_rows must be int64 [batch_size, {num_labels}] on {hidden_states.device}, got "
                             f"{label_rows.dtype} shape {list(label_rows.shape)} on {label_rows.device}")
    if tuple(weight.shape) != (1, hidden) or bias is None or bias.numel() != 1:
        raise ValueError(f"weight and bias must be those of Linear({hidden}, 1): weight [1, {hidden}] and bias [1]; "
                         f"got weight {list(weight.shape)} and bias "
                         f"{None if bias is None else list(bias.shape)}")
    if weight.device != hidden_states.device or bias.device != hidden_states.device:
        raise ValueError(f"weight ({weight.device}) and bias ({bias.device}) must be on hidden_states' device "
                         f"({hidden_states.device})")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    if label_rows is not None and check_values and not torch.compiler.is_compiling():
        total = hidden_states.shape[0]
        if label_rows.numel() and bool(((label_rows < 0) | (label_rows >= total)).any()):
            raise ValueError(f"label_rows must index rows of hidden_states [0, {total}); got values from "
                             f"{int(label_rows.min())} to {int(label_rows.max())}")


# ----------------------------------------------------------------------------------------- public function
def label_head_logits(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_labels: int,
    dropout_p: float = 0.0,
    training: bool = False,
    backend: str | None = None,
    *,
    label_rows: torch.Tensor | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """The shared head on the label states only: `logits[b, i] = weight . dropout(h(b, i)) + bias`.

    `h(b, i)` is `hidden_states[b, LABEL_START + i]` (padded) or `hidden_states[label_rows[b, i]]` (packed).
    The reference projects all `S` positions and slices afterwards; only the N label states matter.

    Args:
        hidden_states: padded (batch_size, seq_len, hidden) with seq_len >= LABEL_START + num_labels, or
            packed (total_tokens, hidden) with `label_rows`; floating (fp32 / fp16 / bf16 / fp64).
        weight: (1, hidden), hidden_states' dtype, on its device: `Linear(hidden, 1).weight`.
        bias: (1,), hidden_states' dtype, on its device: `Linear(hidden, 1).bias`.
        num_labels: int >= 1, N.
        dropout_p: float in [0, 1], the dropout on the label states (applied only when `training`).
        training: bool; the kernel draws its dropout seed from torch's default generator.
        backend: "auto" (None), "torch" or "triton", see `ltc_fast.ops.dispatch`.
        label_rows: (batch_size, num_labels), int64, on hidden_states' device: the packed row of label i of
            sequence b (distinct rows, in [0, total_tokens)); None for padded states.
        check_values: False skips reading `label_rows` back to check its range (a host sync on a GPU), for
            callers that built them.
    Returns:
        logits: (batch_size, num_labels), hidden_states' dtype (autocast's under autocast, as `F.linear`'s),
            accumulated in fp32 on the kernel.
    Raises:
        ValueError for bad shapes, dtypes, devices or `label_rows` values, before any kernel runs.
    """
    _validate(hidden_states, weight, bias, num_labels, dropout_p, label_rows, check_values)
    device_type = hidden_states.device.type
    if torch.is_autocast_enabled(device_type):
        # What F.linear does under autocast, done before either backend runs so that both compute in, and
        # return, autocast's dtype (the kernel alone would keep the fp32 of the encoder's LayerNorm output).
        hidden_states, weight, bias = (t.to(torch.get_autocast_dtype(device_type))
                                       for t in (hidden_states, weight, bias))
    applies, why_not = triton_applies(backend, hidden_states, weight, bias)
    if resolve_backend(OP, backend, FAST_BACKEND, applies, why_not) == FAST_BACKEND:
        seed = draw_dropout_seed() if training and dropout_p > 0 else None
        return _head_op(hidden_states, weight, bias, label_rows, num_labels, float(dropout_p), seed)
    return label_head_logits_torch(hidden_states, weight, bias, num_labels, dropout_p, training, label_rows)
