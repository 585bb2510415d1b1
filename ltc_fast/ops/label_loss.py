"""Loss and probabilities over `[B, N]` label logits: sigmoid + BCE or softmax + cross-entropy.

Two implementations of one function, `label_loss_and_probas`, chosen by `ltc_fast.ops.dispatch.resolve_backend`:
- `label_loss_and_probas_torch`, the plain-PyTorch twin (`F.binary_cross_entropy_with_logits` /
  `F.cross_entropy` + sigmoid / softmax): the definition, the test oracle and the path used where the
  extension is not built;
- the C++/CUDA extension (`csrc/`, loaded by `loss_extension`): loss, probas and, in backward, dlogits in one
  pass over the logits each, as the custom ops `torch.ops.ltc_fast_ext.multi_label_forward` / `_backward` and
  `single_label_forward` / `_backward`. Their schemas and kernels come from the compiled module; their fake
  kernels and autograd (below) are registered the first time `label_loss_and_probas` picks the extension, so
  `torch.compile` traces through them (nothing is loaded at import: a first load may JIT-compile).
Both take every option and give the same numbers; inputs are validated once, before either runs.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from . import loss_extension
from .dispatch import TORCH, resolve_backend

OP = "label_loss_and_probas"
FAST_BACKEND = "extension"
REDUCTIONS = ("mean", "sum", "none")
LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ------------------------------------------------------------------------------------------------ the twin
def label_loss_and_probas_torch(
    logits: torch.Tensor,
    targets: torch.Tensor | None,
    multi_label: bool,
    num_items_in_batch: torch.Tensor | int | float | None = None,
    *,
    pos_weight: torch.Tensor | None = None,
    label_mask: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Plain PyTorch: `label_loss_and_probas` without validation or a backend choice (see it for the
    conventions: the mean over what counts, 0 when nothing counts).

    Args:
        logits: (batch_size, num_labels), float16 / bfloat16 / float32 / float64.
        targets: multi-label: (batch_size, num_labels), floating, in [0, 1]; single-label: (batch_size,),
            integer class ids in [0, num_labels) or `ignore_index`; None: probabilities only.
        multi_label: sigmoid + BCE-with-logits (True) or softmax + cross-entropy (False).
        num_items_in_batch: int, float or 0-d tensor, the divisor of `reduction="mean"`; None: the number of
            elements (multi-label) or rows (single-label) that count.
        pos_weight: (num_labels,), floating; multi-label only.
        label_mask: (num_labels,) or (batch_size, num_labels), bool or 0/1; multi-label only.
        ignore_index: int; single-label only.
        label_smoothing: float in [0, 1); single-label only.
        reduction: "mean", "sum" or "none".
    Returns:
        loss: float32 (float64 for float64 logits): () for "mean" and "sum"; for "none" (batch_size, num_labels)
            multi-label, (batch_size,) single-label. None when `targets` is None.
        probas: (batch_size, num_labels), the logits' dtype: sigmoid (multi-label) or softmax over labels.
    """
    if targets is None:
        return None, _probas(logits, multi_label)
    acc = _accumulation_dtype(logits)
    elementwise = reduction == "none"
    if multi_label:
        # The validated inputs already are in these dtypes (then these are no-ops); direct callers need not be.
        targets = targets.to(acc)
        pos_weight = None if pos_weight is None else pos_weight.to(acc)
        if label_mask is not None and label_mask.dtype != torch.bool:
            label_mask = label_mask != 0
        x = logits.to(acc)
        if label_mask is None and not elementwise:
            loss = F.binary_cross_entropy_with_logits(x, targets, pos_weight=pos_weight, reduction="sum")
        else:
            loss = F.binary_cross_entropy_with_logits(x, targets, pos_weight=pos_weight, reduction="none")
            if label_mask is not None:
                loss = loss.masked_fill(~label_mask, 0.0)
            if not elementwise:
                loss = loss.sum()
    else:
        loss = F.cross_entropy(logits.to(acc), targets, ignore_index=ignore_index,
                               label_smoothing=float(label_smoothing), reduction="none" if elementwise else "sum")
    probas = _probas(logits, multi_label)
    if reduction == "mean":
        loss = _mean(loss, logits, targets, multi_label, label_mask, ignore_index, num_items_in_batch)
    return loss, probas


def _accumulation_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _probas(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """sigmoid / softmax in the logits' dtype: CUDA autocast runs softmax in fp32 and would return fp32 where the
    extension returns the logits' dtype."""
    return (torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)).to(logits.dtype)


def _unmasked_count(logits: torch.Tensor, label_mask: torch.Tensor | None):
    if label_mask is None:
        return logits.numel()
    count = label_mask.sum()
    return count * logits.shape[0] if label_mask.dim() == 1 else count


def _mean(loss, logits, targets, multi_label, label_mask, ignore_index, num_items_in_batch):
    """The summed loss over its divisor: `num_items_in_batch` when given, else what counts (unmasked elements,
    non-ignored rows); both backends reduce through this."""
    if num_items_in_batch is not None:
        divisor = num_items_in_batch
    else:
        count = (_unmasked_count(logits, label_mask) if multi_label
                 else (targets != ignore_index).sum())
        # clamp: with nothing counted the sum is 0, so the mean is 0 (see the docstring), not 0/0.
        divisor = count.clamp(min=1) if isinstance(count, torch.Tensor) else max(count, 1)
    return loss / divisor


# ------------------------------------------------ custom ops: the extension's glue, fake kernels, autograd
def _extension_multi_label(logits, targets, pos_weight, label_mask, elementwise):
    """(summed or element-wise loss, probas) from the extension; inputs validated and normalised."""
    return torch.ops.ltc_fast_ext.multi_label_forward(logits, targets, pos_weight, label_mask, elementwise)


def _extension_single_label(logits, targets, ignore_index, label_smoothing, elementwise):
    loss, probas, _ = torch.ops.ltc_fast_ext.single_label_forward(logits, targets, ignore_index, label_smoothing,
                                                                  elementwise)
    return loss, probas


# Fake kernels: the real ones return contiguous tensors, whatever the logits' strides.
def _loss_like(logits: torch.Tensor, shape) -> torch.Tensor:
    return logits.new_empty(shape, dtype=_accumulation_dtype(logits))


def _fake_multi_label_forward(logits, targets, pos_weight, label_mask, elementwise):
    return _loss_like(logits, logits.shape if elementwise else ()), logits.new_empty(logits.shape)


def _fake_multi_label_backward(grad, logits, targets, pos_weight, label_mask):
    return logits.new_empty(logits.shape)


def _fake_single_label_forward(logits, targets, ignore_index, label_smoothing, elementwise):
    batch = logits.shape[0]
    stats = _loss_like(logits, (batch, 2))
    return _loss_like(logits, (batch,) if elementwise else ()), logits.new_empty(logits.shape), stats


def _fake_single_label_backward(grad, logits, targets, softmax_stats, ignore_index, label_smoothing):
    return logits.new_empty(logits.shape)


def _no_zero_filled_grads(ctx) -> None:
    """Hand backward None, not a zero-filled [B, N] tensor, for an output nothing differentiated (the probas,
    almost always): autograd's default would allocate those zeros and push them through the probas' branch,
    costing more than the kernel itself on large inputs."""
    ctx.set_materialize_grads(False)


def _multi_label_setup_context(ctx, inputs, output):
    logits, targets, pos_weight, label_mask, _ = inputs
    _no_zero_filled_grads(ctx)
    ctx.save_for_backward(logits, targets, pos_weight, label_mask, output[1])


def _multi_label_backward(ctx, grad_loss, grad_probas):
    logits, targets, pos_weight, label_mask, probas = ctx.saved_tensors
    dlogits = None
    if grad_loss is not None:
        dlogits = torch.ops.ltc_fast_ext.multi_label_backward(grad_loss.to(_accumulation_dtype(logits)), logits,
                                                              targets, pos_weight, label_mask)
    if grad_probas is not None:  # rare: a loss on the probas themselves; d sigmoid = p (1 - p)
        through_probas = grad_probas * probas * (1 - probas)
        dlogits = through_probas if dlogits is None else dlogits + through_probas
    return dlogits, None, None, None, None


def _single_label_setup_context(ctx, inputs, output):
    logits, targets, ignore_index, label_smoothing, _ = inputs
    _no_zero_filled_grads(ctx)
    ctx.ignore_index, ctx.label_smoothing = ignore_index, label_smoothing
    ctx.save_for_backward(logits, targets, output[2], output[1])
    ctx.mark_non_differentiable(output[2])


def _single_label_backward(ctx, grad_loss, grad_probas, _grad_stats):
    logits, targets, softmax_stats, probas = ctx.saved_tensors
    dlogits = None
    if grad_loss is not None:
        dlogits = torch.ops.ltc_fast_ext.single_label_backward(grad_loss.to(_accumulation_dtype(logits)), logits,
                                                               targets, softmax_stats, ctx.ignore_index,
                                                               ctx.label_smoothing)
    if grad_probas is not None:  # rare: softmax backward, p * (g - sum(g * p))
        through_probas = probas * (grad_probas - (grad_probas * probas).sum(dim=-1, keepdim=True))
        dlogits = through_probas if dlogits is None else dlogits + through_probas
    return dlogits, None, None, None, None


_registered = False
_registration_lock = threading.Lock()


def _register_python_parts() -> None:
    """Fake kernels (shapes for torch.compile / meta tensors) and autograd of the extension's ops, registered
    once, after the extension has defined the ops."""
    global _registered
    if _registered:
        return
    with _registration_lock:
        if _registered:
            return
        ns = loss_extension.OPS_NAMESPACE
        torch.library.register_fake(f"{ns}::multi_label_forward", _fake_multi_label_forward)
        torch.library.register_fake(f"{ns}::multi_label_backward", _fake_multi_label_backward)
        torch.library.register_fake(f"{ns}::single_label_forward", _fake_single_label_forward)
        torch.library.register_fake(f"{ns}::single_label_backward", _fake_single_label_backward)
        torch.library.register_autograd(f"{ns}::multi_label_forward", _multi_label_backward,
                                        setup_context=_multi_label_setup_context)
        torch.library.register_autograd(f"{ns}::single_label_forward", _single_label_backward,
                                        setup_context=_single_label_setup_context)
        _registered = True


# Constant for the process: torch.compile calls it once while tracing and keeps the answer, so the loading and
# registration behind it (locks Dynamo cannot trace) never break a compiled model's graph.
@torch._dynamo.assume_constant_result
def _extension_ready(device: torch.device) -> bool:
    """The extension runs on `device`, its fake kernels and autograd registered."""
    if not loss_extension.runs_on(device):
        return False
    _register_python_parts()
    return True


# ---------------------------------------------------------------------------------------------- validation
def _describe(tensor) -> str:
    if not isinstance(tensor, torch.Tensor):
        return type(tensor).__name__
    return f"{tensor.dtype} {list(tensor.shape)} on {tensor.device}"


def _data_checks_allowed(check_values: bool) -> bool:
    """Value checks (class ids in range, 0/1 masks) read the data: a host sync, skipped when the caller says it
    checked them; under torch.compile they would break the graph, so they run in eager mode only. There an
    out-of-range class id still never passes silently: the CPU kernel raises, the CUDA kernel gives that row a
    NaN loss and NaN gradients (a device assert would kill the CUDA context), and torch's twin raises on the CPU
    and device-asserts on CUDA."""
    return check_values and not torch.compiler.is_compiling()


def _check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.dtype not in LOGIT_DTYPES:
        raise ValueError(f"logits must be a float16/bfloat16/float32/float64 tensor [B, N], got {_describe(logits)}")
    if logits.shape[1] == 0:
        raise ValueError(f"logits must have at least one label (N >= 1), got shape {list(logits.shape)}")


def _check_same_device(name: str, tensor: torch.Tensor, logits: torch.Tensor) -> None:
    if tensor.device != logits.device:
        raise ValueError(f"{name} must be on the logits' device {logits.device}, got {tensor.device}")


def _checked_multi_label(logits, targets, pos_weight, label_mask, label_smoothing, ignore_index, check_values):
    """Validate the multi-label inputs; return targets and pos_weight in the accumulation dtype and the mask as
    bool (no copy where they already are)."""
    if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape or not targets.is_floating_point():
        raise ValueError(f"targets for multi-label must be a float tensor of the logits' shape {list(logits.shape)}, "
                         f"got {_describe(targets)}")
    _check_same_device("targets", targets, logits)
    if label_smoothing != 0.0:
        raise ValueError(f"label_smoothing applies to single-label (softmax) only; got {label_smoothing!r} with "
                         "multi_label=True")
    if ignore_index != -100:
        raise ValueError(f"ignore_index applies to single-label only (use label_mask for multi-label); got "
                         f"{ignore_index!r} with multi_label=True")
    acc = _accumulation_dtype(logits)
    num_labels = logits.shape[1]
    if pos_weight is not None:
        if (not isinstance(pos_weight, torch.Tensor) or pos_weight.shape != (num_labels,)
                or not pos_weight.is_floating_point()):
            raise ValueError(f"pos_weight must be a float tensor [N] = [{num_labels}] (one weight per label), got "
                             f"{_describe(pos_weight)}")
        _check_same_device("pos_weight", pos_weight, logits)
        pos_weight = pos_weight.to(acc)
    if label_mask is not None:
        if not isinstance(label_mask, torch.Tensor) or label_mask.shape not in ((num_labels,), logits.shape):
            raise ValueError(f"label_mask must have shape [N] = [{num_labels}] or [B, N] = {list(logits.shape)}, "
                             f"got {_describe(label_mask)}")
        _check_same_device("label_mask", label_mask, logits)
        if label_mask.dtype != torch.bool:
            if label_mask.is_complex():
                raise ValueError(f"label_mask must be bool or 0/1 values, got {_describe(label_mask)}")
            if _data_checks_allowed(check_values) and ((label_mask != 0) & (label_mask != 1)).any():
                raise ValueError(f"label_mask must be bool or hold only 0 and 1, got values "
                                 f"{torch.unique(label_mask).tolist()[:8]}")
            label_mask = label_mask != 0
    return targets.to(acc), pos_weight, label_mask


def _check_single_label(logits, targets, pos_weight, label_mask, ignore_index, label_smoothing,
                        check_values) -> None:
    batch, num_labels = logits.shape
    if (not isinstance(targets, torch.Tensor) or targets.shape != (batch,) or targets.is_floating_point()
            or targets.is_complex() or targets.dtype == torch.bool):
        raise ValueError(f"targets for single-label must be integer class ids [B] = [{batch}], got "
                         f"{_describe(targets)}")
    _check_same_device("targets", targets, logits)
    if pos_weight is not None or label_mask is not None:
        name = "pos_weight" if pos_weight is not None else "label_mask"
        raise ValueError(f"{name} applies to multi-label (sigmoid) only; got one with multi_label=False")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be a float in [0, 1), got {label_smoothing!r}")
    if _data_checks_allowed(check_values):
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= num_labels))
        if bad.any():
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"targets hold class id {int(targets[row])} at row {row}; class ids must be in "
                             f"[0, {num_labels - 1}] (N={num_labels}) or ignore_index={ignore_index}")


def _check_reduction(reduction, num_items_in_batch) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if num_items_in_batch is not None and reduction != "mean":
        raise ValueError(f"num_items_in_batch is the divisor of reduction='mean'; got it with reduction={reduction!r}")


# ----------------------------------------------------------------------------------------- public function
def _choose_backend(backend, logits, targets, pos_weight) -> str:
    if resolve_backend(OP, backend, FAST_BACKEND, True) == TORCH:
        return TORCH  # forced: do not even load the extension
    why_not = ""
    if not _extension_ready(logits.device):
        why_not = f"the loss extension is {loss_extension.extension_status()} (for {logits.device.type} tensors)"
    elif any(t is not None and t.requires_grad for t in (targets, pos_weight)):
        why_not = "the extension gives no gradient for targets or pos_weight, and one requires grad"
    return resolve_backend(OP, backend, FAST_BACKEND, not why_not, why_not)


def label_loss_and_probas(
    logits: torch.Tensor,
    targets: torch.Tensor | None,
    multi_label: bool,
    num_items_in_batch: torch.Tensor | int | float | None = None,
    backend: str | None = None,
    *,
    pos_weight: torch.Tensor | None = None,
    label_mask: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    check_values: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The loss and the probabilities of `[B, N]` label logits: `(loss, probas)`.

    multi-label: element-wise BCE-with-logits, `probas = sigmoid(logits)`; `pos_weight` weighs the positive
    term of each label (as in torch); elements where `label_mask` is 0 (labels not sampled this step) add
    nothing to the loss, get no gradient and do not count in the mean. single-label: softmax cross-entropy,
    `probas = softmax(logits, -1)`; rows whose id is `ignore_index` add nothing and do not count in the mean;
    `label_smoothing` as in `F.cross_entropy`.
    The mean divides the sum by the number of unmasked elements (multi-label) or of non-ignored rows
    (single-label), torch's conventions, unless `num_items_in_batch` is given: the `transformers.Trainer` passes
    the number of label items over all gradient-accumulation micro-batches, so the accumulated loss is the mean
    over the whole batch. When nothing counts (every element masked, every row ignored) the mean is 0 with zero
    gradient, not NaN (`F.cross_entropy` gives NaN for an all-ignored batch; this function does not).
    Infinite logits give torch's values on every backend: a -inf logit is a probability of 0 (finite loss unless
    it is the target); +inf, or a row of nothing but -inf, gives NaN in single-label as in torch.

    Args:
        logits: (batch_size, num_labels), float16 / bfloat16 / float32 / float64; num_labels >= 1.
        targets: multi-label: (batch_size, num_labels), floating, in [0, 1], on the logits' device;
            single-label: (batch_size,), integer class ids in [0, num_labels) or `ignore_index`. None: no loss
            (the probabilities alone; the extension is then not even loaded unless `backend="extension"`).
        multi_label: sigmoid + BCE-with-logits (True) or softmax + cross-entropy (False).
        num_items_in_batch: int, float or 0-d tensor: the divisor of `reduction="mean"` (only with it); None:
            the number of elements / rows that count.
        backend: "auto" (None), "torch" or "extension", see `ltc_fast.ops.dispatch`; "auto" takes the extension
            when it is loaded for the logits' device and no gradient is needed for `targets` or `pos_weight`.
        pos_weight: (num_labels,), floating; multi-label only.
        label_mask: (num_labels,) or (batch_size, num_labels), bool or 0/1 values; multi-label only.
        ignore_index: int, default -100; single-label only.
        label_smoothing: float in [0, 1), default 0; single-label only.
        reduction: "mean" (default), "sum" or "none".
        check_values: False skips the checks that read the data (class ids in range, a 0/1 mask: a host sync on
            a GPU), for callers that checked it themselves.
    Returns:
        loss: float32 (float64 for float64 logits, whatever the logits' dtype, accumulated in that precision):
            () for "mean" and "sum"; for "none" (batch_size, num_labels) multi-label, (batch_size,) single-label,
            zero where masked / ignored. None when `targets` is None.
        probas: (batch_size, num_labels), the logits' dtype.
    Raises:
        ValueError, naming the argument, for bad input, before any kernel runs.
    """
    _check_logits(logits)
    if targets is not None:
        if multi_label:
            targets, pos_weight, label_mask = _checked_multi_label(logits, targets, pos_weight, label_mask,
                                                                   label_smoothing, ignore_index, check_values)
        else:
            _check_single_label(logits, targets, pos_weight, label_mask, ignore_index, label_smoothing,
                                check_values)
        _check_reduction(reduction, num_items_in_batch)
    if targets is None:
        # Probabilities alone are one torch kernel already; nothing to fuse, so the extension is not even
        # loaded (a first load may JIT-compile it) unless the caller forces it.
        if backend == FAST_BACKEND:
            _choose_backend(backend, logits, targets, pos_weight)
        else:
            resolve_backend(OP, backend, FAST_BACKEND, True)  # still rejects a bad backend name / variable
        return None, _probas(logits, multi_label)
    if _choose_backend(backend, logits, targets, pos_weight) != FAST_BACKEND:
        return label_loss_and_probas_torch(logits, targets, multi_label, num_items_in_batch, pos_weight=pos_weight,
                                           label_mask=label_mask, ignore_index=ignore_index,
                                           label_smoothing=label_smoothing, reduction=reduction)
    elementwise = reduction == "none"
    if multi_label:
        loss, probas = _extension_multi_label(logits, targets, pos_weight, label_mask, elementwise)
    else:
        loss, probas = _extension_single_label(logits, targets, ignore_index, float(label_smoothing), elementwise)
    if reduction == "mean":
        loss = _mean(loss, logits, targets, multi_label, label_mask, ignore_index, num_items_in_batch)
    return loss, probas
