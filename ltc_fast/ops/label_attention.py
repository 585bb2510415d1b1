"""Decoupled label attention: each label query attends the text's keys and values and its own key, in one softmax.

In a decoupled pass (`ltc_fast.attention.DecoupledText`) the text is encoded first; then, in every layer, label
i of text b attends the text's cached keys and values (`[B, heads, T, d]`, padding masked out) plus its own key
and value, and nothing else: a label's output does not depend on the other labels in the pass.

Two implementations of one function, chosen by `ltc_fast.ops.dispatch.resolve_backend`:
- `labels_attend_text_torch`, the plain-PyTorch twin: the definition and the test oracle. It builds the `[n, T]`
  scores, masks, concatenates the self score, takes an fp32 softmax and two matmuls;
- a Triton kernel (flash-attention style, registered as the custom op `ltc_fast::label_attention`): a block of
  label queries walks the text in tiles with an online softmax that starts from the self term (so a row is never
  all masked and needs no -inf guard), accumulating in fp32; no score tensor reaches memory. It writes the output
  straight in `[B, n, heads, d]`, the layout the encoder's output projection reads, and the rows' log-sum-exp for
  the backward. The backward recomputes the scores: one kernel per block of label rows (query, self key and self
  value gradients) and one per block of text rows (text key and value gradients, summed over the labels in a
  loop: no atomics, deterministic).

Dropout on the attention weights (the encoder's attention dropout, in training): the kernel draws its keep mask
from Philox at a seed drawn from torch's default generator and the element's place `(b, head, label, key)`, the
self key last; the backward draws the same. `attention_keep_mask` materialises that mask, so the twin can be
checked with it. Local attention windows (ModernBERT's local layers: `text_visible`) run on the twin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import resolve_backend
from .triton_support import TRITON, draw_dropout_seed, launch_guard, tl, triton, triton_applies

OP = "labels_attend_text"
FAST_BACKEND = TRITON
# The head sizes the kernels take, per dtype: beyond them the tiles spill registers on sm_90 (fp32's tl.dot runs
# on FMA units, not tensor cores, and needs more of them); wider heads run the twin.
MAX_KERNEL_HEAD_SIZE = {torch.float16: 128, torch.bfloat16: 128, torch.float32: 64}


# ------------------------------------------------------------------------------------------------ the twin
def labels_attend_text_torch(
    query: torch.Tensor,
    text_keys: torch.Tensor,
    text_values: torch.Tensor,
    self_keys: torch.Tensor,
    self_values: torch.Tensor,
    key_padding: torch.Tensor,
    scale: float,
    dropout_p: float = 0.0,
    training: bool = False,
    text_visible: torch.Tensor | None = None,
    keep_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch; the definition of `label_attention` (arguments as there).

    Args:
        keep_mask: (batch_size, heads, num_labels, text_len + 1), bool: replaces dropout's random mask (used when
            `training` and `dropout_p > 0`; the last column is the self key), e.g. the kernel's
            (`attention_keep_mask`), to compare the two exactly. None: `F.dropout`'s own draw.
    Returns:
        (batch_size, num_labels, heads, head_size), query's dtype.
    """
    scores = torch.matmul(query, text_keys.transpose(-1, -2)) * scale  # [B, heads, n, T]
    visible = key_padding[:, None, None, :]
    if text_visible is not None:
        visible = visible & text_visible[:, None]
    scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
    self_score = (query * self_keys).sum(-1, keepdim=True) * scale  # [B, heads, n, 1]
    weights = torch.softmax(torch.cat([scores, self_score], dim=-1), dim=-1, dtype=torch.float32).to(query.dtype)
    if keep_mask is not None and training and dropout_p > 0:
        weights = weights * keep_mask / (1.0 - dropout_p) if dropout_p < 1 else weights * 0.0
    else:
        weights = F.dropout(weights, p=dropout_p, training=training)
    output = torch.matmul(weights[..., :-1], text_values) + weights[..., -1:] * self_values
    return output.transpose(1, 2)


# ------------------------------------------------------------------------------------------ Triton kernels
# Ints that change from call to call (the seed, the batch's geometry and the strides that follow from it) are not
# specialised: Triton would compile a variant per value class (== 1, divisible by 16) inside a training loop.
_PER_CALL_INTS = ["seed", "num_heads", "num_labels", "text_len",
                  "q_b", "q_h", "q_n", "k_b", "k_h", "k_n", "v_b", "v_h", "v_n",
                  "sk_b", "sk_h", "sk_n", "sv_b", "sv_h", "sv_n", "pad_b"]

if triton is not None:
    @triton.jit
    def _keep(seed, p, bh, rows, cols, num_labels, text_len):
        """Dropout's keep decision for weights (rows, cols) of program bh: one Philox draw per element at its
        place in the `[B * heads, n, T + 1]` weights (the self key at column T)."""
        places = (bh.to(tl.int64) * num_labels + rows[:, None]) * (text_len + 1) + cols[None, :]
        return tl.rand(seed, places) >= p

    @triton.jit
    def _load_rows(ptr, row_stride, rows, rows_ok, HEAD: tl.constexpr, BLOCK_D: tl.constexpr):
        """A `[rows, BLOCK_D]` tile of a `[*, head_size]` matrix whose last dimension is contiguous; 0 outside."""
        dims = tl.arange(0, BLOCK_D)
        return tl.load(ptr + rows[:, None].to(tl.int64) * row_stride + dims[None, :],
                       mask=rows_ok[:, None] & (dims < HEAD)[None, :], other=0.0)

    @triton.jit
    def _text_scores(query, keys, scale, pad_ptr, cols, text_len):
        """fp32 scores `[rows, cols]` of a query tile against a tile of text keys, and which keys are real."""
        visible = (cols < text_len) & (tl.load(pad_ptr + cols, mask=cols < text_len, other=0) != 0)
        return tl.dot(query, tl.trans(keys), input_precision="ieee") * scale, visible

    @triton.jit
    def _load_stats(stats_ptr, bh, num_labels, rows, rows_ok):
        """The forward's softmax statistics of these rows: (max, 1 / sum), fp32."""
        stats = (bh.to(tl.int64) * num_labels + rows) * 2
        return (tl.load(stats_ptr + stats, mask=rows_ok, other=0.0),
                tl.load(stats_ptr + stats + 1, mask=rows_ok, other=0.0))

    @triton.jit(do_not_specialize=_PER_CALL_INTS)
    def _forward_kernel(
        q_ptr, k_ptr, v_ptr, sk_ptr, sv_ptr, pad_ptr, out_ptr, stats_ptr,
        seed, p, scale, num_heads, num_labels, text_len,
        q_b, q_h, q_n, k_b, k_h, k_n, v_b, v_h, v_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, pad_b,
        HEAD: tl.constexpr, DROPOUT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        bh = tl.program_id(1)
        b, h = bh // num_heads, bh % num_heads
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rows_ok = rows < num_labels
        query = _load_rows(q_ptr + b.to(tl.int64) * q_b + h * q_h, q_n, rows, rows_ok, HEAD, BLOCK_D)
        self_key = _load_rows(sk_ptr + b.to(tl.int64) * sk_b + h * sk_h, sk_n, rows, rows_ok, HEAD, BLOCK_D)
        self_value = _load_rows(sv_ptr + b.to(tl.int64) * sv_b + h * sv_h, sv_n, rows, rows_ok, HEAD, BLOCK_D)
        # The online softmax starts at the self term: running max = self score, running sum = exp(0) = 1.
        row_max = tl.sum(query.to(tl.float32) * self_key.to(tl.float32), axis=1) * scale
        row_sum = tl.full((BLOCK_M,), 1.0, tl.float32)
        self_weight = tl.full((BLOCK_M, 1), 1.0, tl.float32)
        if DROPOUT:
            self_weight = tl.where(_keep(seed, p, bh, rows, tl.full((1,), 0, tl.int64) + text_len, num_labels,
                                         text_len), 1.0 / (1.0 - p), 0.0)
        acc = self_weight * self_value.to(tl.float32)
        k_base = k_ptr + b.to(tl.int64) * k_b + h * k_h
        v_base = v_ptr + b.to(tl.int64) * v_b + h * v_h
        pad_base = pad_ptr + b.to(tl.int64) * pad_b
        for start in range(0, text_len, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            keys = _load_rows(k_base, k_n, cols, cols < text_len, HEAD, BLOCK_D)
            scores, visible = _text_scores(query, keys, scale, pad_base, cols, text_len)
            scores = tl.where(visible[None, :], scores, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(scores, axis=1))
            rescale = tl.exp(row_max - new_max)
            weights = tl.exp(scores - new_max[:, None])
            row_sum = row_sum * rescale + tl.sum(weights, axis=1)
            if DROPOUT:
                weights = tl.where(_keep(seed, p, bh, rows, cols, num_labels, text_len), weights / (1.0 - p), 0.0)
            values = _load_rows(v_base, v_n, cols, cols < text_len, HEAD, BLOCK_D)
            acc = acc * rescale[:, None] + tl.dot(weights.to(values.dtype), values, input_precision="ieee")
            row_max = new_max
        acc = acc / row_sum[:, None]
        dims = tl.arange(0, BLOCK_D)
        # out: [B, n, heads, d], contiguous
        out_rows = (b.to(tl.int64) * num_labels + rows) * num_heads + h
        tl.store(out_ptr + out_rows[:, None] * HEAD + dims[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=rows_ok[:, None] & (dims < HEAD)[None, :])
        # The softmax's row statistics for the backward, max and 1 / sum apart: exp(s - lse) with lse = max + log(sum)
        # would lose eps * |lse| of every weight's exponent, a lot for large scores.
        stats = (bh.to(tl.int64) * num_labels + rows) * 2
        tl.store(stats_ptr + stats, row_max, mask=rows_ok)
        tl.store(stats_ptr + stats + 1, 1.0 / row_sum, mask=rows_ok)

    @triton.jit
    def _tile_weights(query, grad_out, keys, values, row_max, inverse_sum, rows_ok, pad_base, cols, text_len, scale,
                      seed, p, bh, rows, num_labels, DROPOUT: tl.constexpr):
        """A tile's attention weights P, recomputed from the forward's statistics (0 at padding and outside), and
        dP = D (dO . v), the gradient of the weights before dropout, D the keep-and-rescale factor (returned too:
        1 without dropout)."""
        scores, visible = _text_scores(query, keys, scale, pad_base, cols, text_len)
        # masked before exp: a padding key's score may exceed the row's max, exp would overflow
        exponents = tl.where(rows_ok[:, None] & visible[None, :], scores - row_max[:, None], float("-inf"))
        weights = tl.exp(exponents) * inverse_sum[:, None]
        grad_weights = tl.dot(grad_out, tl.trans(values), input_precision="ieee")
        kept = tl.full((1, 1), 1.0, tl.float32)
        if DROPOUT:
            kept = tl.where(_keep(seed, p, bh, rows, cols, num_labels, text_len), 1.0 / (1.0 - p), 0.0)
            grad_weights = grad_weights * kept
        return weights, grad_weights, kept

    @triton.jit(do_not_specialize=_PER_CALL_INTS)
    def _label_rows_backward_kernel(
        q_ptr, k_ptr, v_ptr, sk_ptr, sv_ptr, pad_ptr, grad_out_ptr, stats_ptr, delta_ptr,
        grad_q_ptr, grad_sk_ptr, grad_sv_ptr,
        seed, p, scale, num_heads, num_labels, text_len,
        q_b, q_h, q_n, k_b, k_h, k_n, v_b, v_h, v_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, pad_b,
        HEAD: tl.constexpr, DROPOUT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Gradients of the query, self key and self value of a block of label rows:
        dS = P (dP - delta), dq = sum_j dS_j k_j * scale, over the text keys and the self key.

        delta = sum_j P_j dP_j is summed here in a first pass over the text, from the same P and dP as the
        second pass uses (and written for the text rows' kernel), not as dO . O (flash attention's shortcut):
        where one key takes all the weight (P = 1 in fp32, a peaked head), dP - delta is then exactly 0, as in
        the twin's softmax backward, instead of the rounding difference of two sums of products."""
        bh = tl.program_id(1)
        b, h = bh // num_heads, bh % num_heads
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rows_ok = rows < num_labels
        query = _load_rows(q_ptr + b.to(tl.int64) * q_b + h * q_h, q_n, rows, rows_ok, HEAD, BLOCK_D)
        self_key = _load_rows(sk_ptr + b.to(tl.int64) * sk_b + h * sk_h, sk_n, rows, rows_ok, HEAD, BLOCK_D)
        self_value = _load_rows(sv_ptr + b.to(tl.int64) * sv_b + h * sv_h, sv_n, rows, rows_ok, HEAD, BLOCK_D)
        # grad_out: [B, n, heads, d], contiguous (the output's layout)
        grad_out = _load_rows(grad_out_ptr + b.to(tl.int64) * num_labels * num_heads * HEAD + h * HEAD,
                              num_heads * HEAD, rows, rows_ok, HEAD, BLOCK_D)
        row_max, inverse_sum = _load_stats(stats_ptr, bh, num_labels, rows, rows_ok)
        self_score = tl.sum(query.to(tl.float32) * self_key.to(tl.float32), axis=1) * scale
        self_p = tl.exp(self_score - row_max) * inverse_sum
        self_dp = tl.sum(grad_out.to(tl.float32) * self_value.to(tl.float32), axis=1)
        self_kept = tl.full((BLOCK_M,), 1.0, tl.float32)
        if DROPOUT:
            keep = _keep(seed, p, bh, rows, tl.full((1,), 0, tl.int64) + text_len, num_labels, text_len)
            self_kept = tl.sum(tl.where(keep, 1.0 / (1.0 - p), 0.0), axis=1)
        self_dp = self_dp * self_kept
        k_base = k_ptr + b.to(tl.int64) * k_b + h * k_h
        v_base = v_ptr + b.to(tl.int64) * v_b + h * v_h
        pad_base = pad_ptr + b.to(tl.int64) * pad_b
        delta = self_p * self_dp
        for start in range(0, text_len, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            keys = _load_rows(k_base, k_n, cols, cols < text_len, HEAD, BLOCK_D)
            values = _load_rows(v_base, v_n, cols, cols < text_len, HEAD, BLOCK_D)
            weights, grad_weights, _ = _tile_weights(query, grad_out, keys, values, row_max, inverse_sum, rows_ok,
                                                     pad_base, cols, text_len, scale, seed, p, bh, rows, num_labels,
                                                     DROPOUT)
            delta += tl.sum(weights * grad_weights, axis=1)
        tl.store(delta_ptr + bh.to(tl.int64) * num_labels + rows, delta, mask=rows_ok)
        self_ds = self_p * (self_dp - delta)
        # loaded again rather than held in registers over the first pass
        self_key = _load_rows(sk_ptr + b.to(tl.int64) * sk_b + h * sk_h, sk_n, rows, rows_ok, HEAD, BLOCK_D)
        grad_q = self_ds[:, None] * self_key.to(tl.float32)
        for start in range(0, text_len, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            keys = _load_rows(k_base, k_n, cols, cols < text_len, HEAD, BLOCK_D)
            values = _load_rows(v_base, v_n, cols, cols < text_len, HEAD, BLOCK_D)
            weights, grad_weights, _ = _tile_weights(query, grad_out, keys, values, row_max, inverse_sum, rows_ok,
                                                     pad_base, cols, text_len, scale, seed, p, bh, rows, num_labels,
                                                     DROPOUT)
            grad_scores = weights * (grad_weights - delta[:, None])
            grad_q += tl.dot(grad_scores.to(keys.dtype), keys, input_precision="ieee")
        dims = tl.arange(0, BLOCK_D)
        both_ok = rows_ok[:, None] & (dims < HEAD)[None, :]
        # The three gradients: [B, heads, n, d], contiguous
        places = (bh.to(tl.int64) * num_labels + rows)[:, None] * HEAD + dims[None, :]
        tl.store(grad_q_ptr + places, (grad_q * scale).to(grad_q_ptr.dtype.element_ty), mask=both_ok)
        tl.store(grad_sk_ptr + places, (self_ds[:, None] * query.to(tl.float32) * scale)
                 .to(grad_sk_ptr.dtype.element_ty), mask=both_ok)
        tl.store(grad_sv_ptr + places, ((self_p * self_kept)[:, None] * grad_out.to(tl.float32))
                 .to(grad_sv_ptr.dtype.element_ty), mask=both_ok)

    @triton.jit(do_not_specialize=_PER_CALL_INTS)
    def _text_rows_backward_kernel(
        q_ptr, k_ptr, v_ptr, pad_ptr, grad_out_ptr, stats_ptr, delta_ptr, grad_k_ptr, grad_v_ptr,
        seed, p, scale, num_heads, num_labels, text_len,
        q_b, q_h, q_n, k_b, k_h, k_n, v_b, v_h, v_n, pad_b,
        HEAD: tl.constexpr, DROPOUT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Gradients of a block of text keys and values, summed over every label row in a loop:
        dv_j = sum_i D_ij P_ij dO_i, dk_j = sum_i dS_ij q_i * scale. Padding keys get exact zeros."""
        bh = tl.program_id(1)
        b, h = bh // num_heads, bh % num_heads
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols_ok = cols < text_len
        keys = _load_rows(k_ptr + b.to(tl.int64) * k_b + h * k_h, k_n, cols, cols_ok, HEAD, BLOCK_D)
        values = _load_rows(v_ptr + b.to(tl.int64) * v_b + h * v_h, v_n, cols, cols_ok, HEAD, BLOCK_D)
        grad_k = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
        grad_v = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
        q_base = q_ptr + b.to(tl.int64) * q_b + h * q_h
        grad_out_base = grad_out_ptr + b.to(tl.int64) * num_labels * num_heads * HEAD + h * HEAD
        pad_base = pad_ptr + b.to(tl.int64) * pad_b
        for start in range(0, num_labels, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            rows_ok = rows < num_labels
            query = _load_rows(q_base, q_n, rows, rows_ok, HEAD, BLOCK_D)
            grad_out = _load_rows(grad_out_base, num_heads * HEAD, rows, rows_ok, HEAD, BLOCK_D)
            row_max, inverse_sum = _load_stats(stats_ptr, bh, num_labels, rows, rows_ok)
            delta = tl.load(delta_ptr + bh.to(tl.int64) * num_labels + rows, mask=rows_ok, other=0.0)
            weights, grad_weights, kept = _tile_weights(query, grad_out, keys, values, row_max, inverse_sum, rows_ok,
                                                        pad_base, cols, text_len, scale, seed, p, bh, rows,
                                                        num_labels, DROPOUT)
            grad_v += tl.dot(tl.trans((weights * kept).to(grad_out.dtype)), grad_out, input_precision="ieee")
            grad_scores = weights * (grad_weights - delta[:, None])
            grad_k += tl.dot(tl.trans(grad_scores.to(query.dtype)), query, input_precision="ieee")
        dims = tl.arange(0, BLOCK_D)
        both_ok = cols_ok[:, None] & (dims < HEAD)[None, :]
        # Both gradients: [B, heads, T, d], contiguous
        places = (bh.to(tl.int64) * text_len + cols)[:, None] * HEAD + dims[None, :]
        tl.store(grad_k_ptr + places, (grad_k * scale).to(grad_k_ptr.dtype.element_ty), mask=both_ok)
        tl.store(grad_v_ptr + places, grad_v.to(grad_v_ptr.dtype.element_ty), mask=both_ok)

    @triton.jit(do_not_specialize=["seed", "num_labels", "text_len"])
    def _keep_mask_kernel(out_ptr, seed, p, num_labels, text_len, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        bh = tl.program_id(1)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        for start in range(0, text_len + 1, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            keep = _keep(seed, p, bh, rows, cols, num_labels, text_len)
            places = (bh.to(tl.int64) * num_labels + rows[:, None]) * (text_len + 1) + cols[None, :]
            inside = (rows < num_labels)[:, None] & (cols <= text_len)[None, :]
            tl.store(out_ptr + places, keep.to(tl.int8), mask=inside)


def attention_blocks(head_size: int, dtype: torch.dtype) -> dict:
    """The launch of every attention kernel: BLOCK_M label rows x BLOCK_N text keys, the head padded to a power
    of two (tl.dot takes 16 or more), and the warps. Chosen so that no kernel spills registers on sm_90 with
    dropout on (Philox is register-hungry): tests/test_op_gpu_compile.py reports registers and spills."""
    block_d = max(triton.next_power_of_2(head_size), 16)
    if dtype == torch.float32:
        rows, keys = 16, 32
    else:
        rows, keys = (32, 64) if block_d <= 64 else (16, 32)
    return {"BLOCK_M": rows, "BLOCK_N": keys, "BLOCK_D": block_d, "num_warps": 8}


KEEP_MASK_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 64}


def _row_strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _dropout_args(dropout_p: float, seed: torch.Tensor | None) -> tuple[bool, int, float]:
    if seed is None or dropout_p == 0:
        return False, 0, 0.0
    return True, int(seed), float(dropout_p)


def attention_keep_mask(seed: torch.Tensor | int, batch_size: int, num_heads: int, num_labels: int, text_len: int,
                        dropout_p: float, device) -> torch.Tensor:
    """The keep mask (bool `[B, heads, n, T + 1]`, the self key last) the kernels use for this seed."""
    out = torch.empty(batch_size, num_heads, num_labels, text_len + 1, dtype=torch.int8, device=device)
    if out.numel():
        with launch_guard(out):
            _keep_mask_kernel[(triton.cdiv(num_labels, KEEP_MASK_BLOCKS["BLOCK_M"]), batch_size * num_heads)](
                out, int(seed), float(dropout_p), num_labels, text_len, **KEEP_MASK_BLOCKS)
    return out.bool()


def _kernel_inputs(query, text_keys, text_values, self_keys, self_values, key_padding):
    tensors = [_last_dim_contiguous(t) for t in (query, text_keys, text_values, self_keys, self_values)]
    padding = key_padding.contiguous().view(torch.uint8)
    return tensors, padding


def attention_forward_triton(query, text_keys, text_values, self_keys, self_values, key_padding, scale, dropout_p,
                             seed) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: the output `[B, n, heads, d]` (query's dtype) and the rows' softmax statistics
    `[B, heads, n, 2]` (max and 1 / sum, fp32). `seed` None: no dropout."""
    (query, text_keys, text_values, self_keys, self_values), padding = _kernel_inputs(
        query, text_keys, text_values, self_keys, self_values, key_padding)
    batch, heads, num_labels, head_size = query.shape
    text_len = text_keys.shape[2]
    out = query.new_empty(batch, num_labels, heads, head_size)
    stats = torch.empty(batch, heads, num_labels, 2, dtype=torch.float32, device=query.device)
    if out.numel() == 0:
        return out, stats
    dropout, seed, p = _dropout_args(dropout_p, seed)
    blocks = attention_blocks(head_size, query.dtype)
    with launch_guard(query):
        _forward_kernel[(triton.cdiv(num_labels, blocks["BLOCK_M"]), batch * heads)](
            query, text_keys, text_values, self_keys, self_values, padding, out, stats,
            seed, p, float(scale), heads, num_labels, text_len,
            *_row_strides(query), *_row_strides(text_keys), *_row_strides(text_values), *_row_strides(self_keys),
            *_row_strides(self_values), padding.stride(0), HEAD=head_size, DROPOUT=dropout, **blocks)
    return out, stats


def attention_backward_triton(grad_out, stats, query, text_keys, text_values, self_keys, self_values, key_padding,
                              scale, dropout_p, seed):
    """Launch both backward kernels: the gradients of query, text keys, text values, self keys and self values,
    contiguous, in the inputs' dtype."""
    (query, text_keys, text_values, self_keys, self_values), padding = _kernel_inputs(
        query, text_keys, text_values, self_keys, self_values, key_padding)
    batch, heads, num_labels, head_size = query.shape
    text_len = text_keys.shape[2]
    grad_out = grad_out.contiguous()
    # delta_i = sum_j P_ij dP_ij, the softmax backward's row term: written by the label rows' kernel, read by the text's
    delta = torch.empty(batch, heads, num_labels, dtype=torch.float32, device=query.device)
    grads = [torch.empty(t.shape, dtype=t.dtype, device=t.device)
             for t in (query, text_keys, text_values, self_keys, self_values)]
    grad_q, grad_k, grad_v, grad_sk, grad_sv = grads
    if batch * heads == 0:
        return tuple(grads)
    dropout, seed, p = _dropout_args(dropout_p, seed)
    blocks = attention_blocks(head_size, query.dtype)
    geometry = (seed, p, float(scale), heads, num_labels, text_len)
    qkv_strides = (*_row_strides(query), *_row_strides(text_keys), *_row_strides(text_values))
    with launch_guard(query):
        if num_labels:
            _label_rows_backward_kernel[(triton.cdiv(num_labels, blocks["BLOCK_M"]), batch * heads)](
                query, text_keys, text_values, self_keys, self_values, padding, grad_out, stats, delta,
                grad_q, grad_sk, grad_sv, *geometry, *qkv_strides, *_row_strides(self_keys),
                *_row_strides(self_values), padding.stride(0), HEAD=head_size, DROPOUT=dropout, **blocks)
        if text_len:
            _text_rows_backward_kernel[(triton.cdiv(text_len, blocks["BLOCK_N"]), batch * heads)](
                query, text_keys, text_values, padding, grad_out, stats, delta, grad_k, grad_v, *geometry,
                *qkv_strides, padding.stride(0), HEAD=head_size, DROPOUT=dropout, **blocks)
    return tuple(grads)


# ---------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("ltc_fast::label_attention", mutates_args=())
def _attention_op(query: torch.Tensor, text_keys: torch.Tensor, text_values: torch.Tensor, self_keys: torch.Tensor,
                  self_values: torch.Tensor, key_padding: torch.Tensor, scale: float, dropout_p: float,
                  seed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_forward_triton(query, text_keys, text_values, self_keys, self_values, key_padding, scale,
                                    dropout_p, seed)


@_attention_op.register_fake
def _(query, text_keys, text_values, self_keys, self_values, key_padding, scale, dropout_p, seed):
    batch, heads, num_labels, head_size = query.shape
    return (query.new_empty(batch, num_labels, heads, head_size),
            query.new_empty(batch, heads, num_labels, 2, dtype=torch.float32))


@torch.library.custom_op("ltc_fast::label_attention_backward", mutates_args=())
def _attention_backward_op(grad_out: torch.Tensor, stats: torch.Tensor, query: torch.Tensor,
                           text_keys: torch.Tensor, text_values: torch.Tensor, self_keys: torch.Tensor,
                           self_values: torch.Tensor, key_padding: torch.Tensor, scale: float, dropout_p: float,
                           seed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                               torch.Tensor, torch.Tensor]:
    return attention_backward_triton(grad_out, stats, query, text_keys, text_values, self_keys, self_values,
                                     key_padding, scale, dropout_p, seed)


@_attention_backward_op.register_fake
def _(grad_out, stats, query, text_keys, text_values, self_keys, self_values, key_padding, scale, dropout_p,
      seed):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device)
                 for t in (query, text_keys, text_values, self_keys, self_values))


def _setup_context(ctx, inputs, output):
    query, text_keys, text_values, self_keys, self_values, key_padding, scale, dropout_p, seed = inputs
    _, stats = output
    ctx.save_for_backward(stats, query, text_keys, text_values, self_keys, self_values, key_padding, seed)
    ctx.scale, ctx.dropout_p = scale, dropout_p


def _backward(ctx, grad_out, _grad_stats):
    stats, *inputs, key_padding, seed = ctx.saved_tensors
    grads = _attention_backward_op(grad_out, stats, *inputs, key_padding, ctx.scale, ctx.dropout_p, seed)
    return (*(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad)), None, None, None, None)


_attention_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------- validation
def _validate(query, text_keys, text_values, self_keys, self_values, key_padding, dropout_p, text_visible) -> None:
    """Shapes, dtypes and devices, before anything runs."""
    names = ("query", "text_keys", "text_values", "self_keys", "self_values")
    tensors = (query, text_keys, text_values, self_keys, self_values)
    for name, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D floating-point tensor [batch_size, heads, rows, head_size], got "
                             f"{f'{t.dtype} {list(t.shape)}' if isinstance(t, torch.Tensor) else type(t).__name__}")
    batch, heads, num_labels, head_size = query.shape
    expected = {"text_keys": (batch, heads, text_keys.shape[2], head_size),
                "text_values": (batch, heads, text_keys.shape[2], head_size),
                "self_keys": (batch, heads, num_labels, head_size),
                "self_values": (batch, heads, num_labels, head_size)}
    for name, t in zip(names[1:], tensors[1:]):
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"{name} must have shape {list(expected[name])} (from query {list(query.shape)} and "
                             f"text_keys {list(text_keys.shape)}), got {list(t.shape)}")
        if t.dtype != query.dtype or t.device != query.device:
            raise ValueError(f"{name} must be {query.dtype} on {query.device} like query, got {t.dtype} on {t.device}")
    text_len = text_keys.shape[2]
    if (not isinstance(key_padding, torch.Tensor) or key_padding.dtype != torch.bool
            or tuple(key_padding.shape) != (batch, text_len) or key_padding.device != query.device):
        given = (f"{key_padding.dtype} {list(key_padding.shape)} on {key_padding.device}"
                 if isinstance(key_padding, torch.Tensor) else type(key_padding).__name__)
        raise ValueError(f"key_padding must be bool [{batch}, {text_len}] on {query.device} (True: a real text token), "
                         f"got {given}")
    if text_visible is not None and (text_visible.dtype != torch.bool
                                     or tuple(text_visible.shape) != (batch, num_labels, text_len)):
        raise ValueError(f"text_visible must be bool [{batch}, {num_labels}, {text_len}], got {text_visible.dtype} "
                         f"{list(text_visible.shape)}")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")


def _kernel_applies(backend, query, tensors, text_visible) -> tuple[bool, str]:
    applies, why_not = triton_applies(backend, *tensors)
    if not applies:
        return applies, why_not
    if text_visible is not None:
        return False, "text_visible (a local attention window) is computed by the twin only"
    if query.dtype not in MAX_KERNEL_HEAD_SIZE:
        return False, f"the kernel computes in {[str(d) for d in MAX_KERNEL_HEAD_SIZE]}, the inputs are {query.dtype}"
    if query.shape[-1] > MAX_KERNEL_HEAD_SIZE[query.dtype]:
        return False, (f"the kernel takes {query.dtype} head sizes up to {MAX_KERNEL_HEAD_SIZE[query.dtype]}, "
                       f"got {query.shape[-1]}")
    return True, ""


# ----------------------------------------------------------------------------------------- public function
def labels_attend_text(
    query: torch.Tensor,
    text_keys: torch.Tensor,
    text_values: torch.Tensor,
    self_keys: torch.Tensor,
    self_values: torch.Tensor,
    key_padding: torch.Tensor,
    scale: float,
    dropout_p: float = 0.0,
    training: bool = False,
    backend: str | None = None,
    *,
    text_visible: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label queries attend the text's keys and values plus their own key and value, one softmax over both:

        out[b, i] = sum_j w_ij text_values[b, j] + w_i,self self_values[b, i],
        w_i = dropout(softmax([q_i . text_keys[b, j] * scale for visible j] + [q_i . self_keys[b, i] * scale]))

    Args:
        query, self_keys, self_values: (batch_size, heads, num_labels, head_size), one floating dtype and device;
            the last dimension contiguous avoids a copy (the encoder's projections give such views).
        text_keys, text_values: (batch_size, heads, text_len, head_size), the same dtype and device.
        key_padding: (batch_size, text_len), bool: True for a real text token, False for padding.
        scale: the scores' factor (usually head_size ** -0.5).
        dropout_p: float in [0, 1], dropout on the attention weights (applied only when `training`); the
            kernel draws its seed from torch's default generator.
        backend: "auto" (None), "torch" or "triton", see `ltc_fast.ops.dispatch`.
        text_visible: (batch_size, num_labels, text_len), bool, or None: which text keys each label may see
            besides the padding (a local layer's window); computed by the twin.
    Returns:
        (batch_size, num_labels, heads, head_size), query's dtype (the kernel accumulates in fp32).
    Raises:
        ValueError for bad shapes, dtypes or devices, before any kernel runs.
    """
    _validate(query, text_keys, text_values, self_keys, self_values, key_padding, dropout_p, text_visible)
    tensors = (query, text_keys, text_values, self_keys, self_values, key_padding)
    applies, why_not = _kernel_applies(backend, query, tensors, text_visible)
    if resolve_backend(OP, backend, FAST_BACKEND, applies, why_not) == FAST_BACKEND:
        seed = draw_dropout_seed() if training and dropout_p > 0 else None
        out, _ = _attention_op(*tensors, float(scale), float(dropout_p), seed)
        return out
    return labels_attend_text_torch(*tensors, scale, dropout_p, training, text_visible)
