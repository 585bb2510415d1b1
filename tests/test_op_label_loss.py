"""`label_loss_and_probas` (C++ extension and its PyTorch twin) against torch's own
`F.binary_cross_entropy_with_logits` / `F.cross_entropy` + sigmoid / softmax by the accuracy rule (an exact
oracle, torch at the logits' precision the plain path): loss, probas and dlogits (autograd with a random
upstream gradient), every option and reduction, odd shapes, extreme logits, fp64 / fp32 / fp16 / bf16 logits;
backend selection; torch.compile and opcheck of the custom ops."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import (EXTENDED, FLOAT_DTYPES, AccuracyRuleSamples, assert_within_accuracy_rule, draws_for,
                           extended, from_extended)
from ltc_fast.ops import loss_extension
from ltc_fast.ops.dispatch import ENV_VAR as BACKEND_ENV_VAR
from ltc_fast.ops.label_loss import label_loss_and_probas

EXTENSION_LOADED = loss_extension.load().loaded
needs_extension = pytest.mark.skipif(not EXTENSION_LOADED, reason=f"loss extension {loss_extension.extension_status()}")
BACKENDS = [pytest.param("extension", marks=needs_extension), "torch"]
SHAPES = [(1, 1), (1, 7), (5, 1), (3, 29), (8, 28)]
DEVICES = [pytest.param("cuda", marks=pytest.mark.gpu), "cpu"]


@pytest.fixture(autouse=True)
def no_backend_override(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)


def test_the_extension_is_loaded_where_ci_requires_it():
    """CI (.ci/run) sets LTC_FAST_REQUIRE_EXTENSION=prebuilt: a failed build must not pass on the torch path."""
    required = loss_extension.required()
    if not required:
        pytest.skip(f"{loss_extension.REQUIRE_ENV_VAR} is not set")
    status = loss_extension.extension_status()
    assert loss_extension.load().loaded, status
    if required == "prebuilt":
        assert status.startswith("prebuilt"), status


# ------------------------------------------------------------------------------------------------ oracles
# The accuracy rule (tests/helpers.py): our error against an exact oracle at most twice that of torch's own
# functions at the logits' precision (the plain path), plus one unit in the last place. For fp32 and lower
# logits the oracle is torch's own functions in fp64 on the same logits. For fp64 logits torch has nothing more
# precise, and its fp64 result is itself off by more than its last place where the value cancels (p - y near
# 0, a probability near 1 from exp(x - logsumexp)): there the oracle is the closed form below in numpy's
# extended precision (tests/helpers.py: EXTENDED).


def poison_heap(*like: torch.Tensor) -> None:
    """Best effort on the CPU (reliable with CUDA's caching allocator): free NaN-filled blocks the size of the
    outputs just before the kernel allocates them, so an element it forgets to write is likely NaN."""
    for tensor in like:
        torch.full_like(tensor, float("nan"))


def random_multi_label(shape, dtype, scale=3.0):
    logits = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)
    targets = (torch.rand(shape, dtype=torch.float64) < 0.3).double()
    targets[0, 0] = 0.37  # a soft target: BCE takes any value in [0, 1]
    return logits, targets


def _torch_dtype(logits):
    """float64 for float64 logits (the oracle of lower ones); float32 for lower ones (torch's same-precision
    result: our losses are float32 for them)."""
    return torch.promote_types(logits.dtype, torch.float32)


def multi_label_oracle(logits, targets, pos_weight=None, label_mask=None, reduction="mean", divisor=None):
    """torch's BCE on the unmasked elements only (so torch's own mean is the mean over them), in float64 for
    float64 logits, else float32."""
    dtype = _torch_dtype(logits)
    x, y = logits.to(dtype), targets.to(dtype)
    weights = None if pos_weight is None else pos_weight.to(dtype).expand_as(x)
    keep = torch.ones_like(x, dtype=torch.bool) if label_mask is None else label_mask.bool().expand_as(x)
    picked_weights = None if weights is None else weights[keep]
    if reduction == "none":
        full = F.binary_cross_entropy_with_logits(x, y, pos_weight=weights, reduction="none")
        return torch.where(keep, full, torch.zeros_like(full))
    if divisor is not None:
        return F.binary_cross_entropy_with_logits(x[keep], y[keep], pos_weight=picked_weights, reduction="sum") / divisor
    return F.binary_cross_entropy_with_logits(x[keep], y[keep], pos_weight=picked_weights, reduction=reduction)


def single_label_oracle(logits, targets, ignore_index=-100, label_smoothing=0.0, reduction="mean", divisor=None):
    x = logits.to(_torch_dtype(logits))
    if divisor is not None:
        return F.cross_entropy(x, targets, ignore_index=ignore_index, label_smoothing=label_smoothing,
                               reduction="sum") / divisor
    return F.cross_entropy(x, targets, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction)


@dataclasses.dataclass
class Problem:
    """One call's targets and options, for torch's functions (`loss`, `probas`) and for the closed form in
    extended precision (`extended`)."""
    targets: torch.Tensor
    multi_label: bool
    reduction: str = "mean"
    divisor: float | None = None
    pos_weight: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None
    ignore_index: int = -100
    label_smoothing: float = 0.0

    def loss(self, x):
        if self.multi_label:
            return multi_label_oracle(x, self.targets, self.pos_weight, self.label_mask, self.reduction, self.divisor)
        return single_label_oracle(x, self.targets, self.ignore_index, self.label_smoothing, self.reduction,
                                   self.divisor)

    def probas(self, x):
        return torch.sigmoid(x) if self.multi_label else torch.softmax(x, -1)

    def extended(self, logits, upstream, probas_weights=None):
        """Loss, probas and dlogits (for the loss's upstream gradient, plus `probas_weights` on the probas) from
        the closed forms, in np.longdouble, rounded to fp64. Multi-label, per element, with w = pos_weight:
        (1 - y) x + (1 + (w - 1) y) log(1 + e^-x), slope (1 + (w - 1) y) sigmoid(x) - w y. Single-label, per
        row, with p = softmax(x): (1 - s) (lse - x_t) + s mean_j (lse - x_j), slopes p_j - (1 - s) [j = t] - s / N."""
        long = np.longdouble
        x = extended(logits)
        if self.multi_label:
            y = extended(self.targets) * np.ones_like(x)
            w = np.ones_like(x) if self.pos_weight is None else extended(self.pos_weight) * np.ones_like(x)
            keep = np.ones(x.shape, bool) if self.label_mask is None else \
                np.broadcast_to(self.label_mask.bool().cpu().numpy(), x.shape)
            probas = 1 / (1 + np.exp(-x))
            elements = np.where(keep, (1 - y) * x + (1 + (w - 1) * y) * np.logaddexp(long(0), -x), 0)
            slopes = np.where(keep, (1 + (w - 1) * y) * probas - w * y, 0)
            count = keep.sum()
        else:
            classes = self.targets.cpu().numpy()
            kept = classes != self.ignore_index
            top = x.max(-1, keepdims=True)
            log_probas = x - (top + np.log(np.exp(x - top).sum(-1, keepdims=True)))
            probas = np.exp(log_probas)
            chosen = np.zeros_like(x)
            chosen[np.flatnonzero(kept), classes[kept]] = 1
            smoothing = long(self.label_smoothing)
            rows = -(1 - smoothing) * (log_probas * chosen).sum(-1) - smoothing * log_probas.mean(-1)
            elements = np.where(kept, rows, 0)
            slopes = np.where(kept[:, None], probas - (1 - smoothing) * chosen - smoothing / x.shape[-1], 0)
            count = kept.sum()
        up = extended(upstream)
        if self.reduction == "none":
            loss, scale = elements, (up if self.multi_label else up[:, None])
        else:
            factor = long(1) / long(self.divisor) if self.divisor is not None else \
                (long(1) / count if self.reduction == "mean" and count else long(self.reduction != "mean"))
            loss, scale = elements.sum() * factor, up * factor
        dlogits = slopes * scale
        if probas_weights is not None:
            pw = extended(probas_weights)
            dlogits = dlogits + (probas * (1 - probas) * pw if self.multi_label else
                                 probas * (pw - (probas * pw).sum(-1, keepdims=True)))
        return tuple(from_extended(v) for v in (loss, probas, dlogits))


def run_with_grads(fn, logits, upstream=None):
    """loss, probas and dlogits of `fn(leaf)` for a random (or the given) upstream gradient of the loss."""
    leaf = logits.detach().clone().requires_grad_()
    loss, probas = fn(leaf)
    if upstream is None:
        upstream = torch.randn(loss.shape, dtype=torch.float64).to(loss.dtype)
    (dlogits,) = torch.autograd.grad(loss, leaf, grad_outputs=upstream)
    return loss.detach(), probas.detach(), dlogits, upstream


def torch_results(problem, logits, upstream):
    """Loss, probas and dlogits from torch's own functions on `logits` (at their precision, see _torch_dtype)."""
    leaf = logits.detach().clone().requires_grad_()
    loss = problem.loss(leaf)
    (dlogits,) = torch.autograd.grad(loss, leaf, grad_outputs=upstream.to(loss.dtype))
    return loss.detach(), problem.probas(logits), dlogits


def exact_results(problem, logits, upstream):
    if logits.dtype == torch.float64:
        return problem.extended(logits, upstream)
    return torch_results(problem, logits.double(), upstream.double())


def add_to_rule(samples, ours, problem, logits):
    """One call's loss, probas and dlogits for the accuracy rule (see the top of this section)."""
    loss, probas, dlogits, upstream = ours
    exact = exact_results(problem, logits, upstream)
    assert loss.shape == exact[0].shape
    assert probas.dtype == logits.dtype and dlogits.dtype == logits.dtype
    for what, mine, plain, exact_value in zip(("loss", "probas", "dlogits"), (loss, probas, dlogits),
                                              torch_results(problem, logits, upstream), exact):
        samples.add(what, mine, plain, exact_value)


def check_against_oracle(draw, loss_values):
    """The accuracy rule for loss, probas and dlogits, pooled over calls of `draw()` (fresh inputs each, giving
    `(ours, problem, logits)`) until the loss holds RULE_VALUES values: a mean or a sum is one value, and one
    value against one is a coin toss, not an accuracy."""
    samples = AccuracyRuleSamples()
    for _ in range(draws_for(loss_values)):
        add_to_rule(samples, *draw())
    samples.check()


def loss_values(shape, reduction, multi_label=True):
    return (shape[0] * shape[1] if multi_label else shape[0]) if reduction == "none" else 1


# ----------------------------------------------------------------------------------------- multi-label
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_multi_label_matches_torch(backend, dtype, shape, reduction):
    def draw():
        logits, targets = random_multi_label(shape, dtype)
        if backend == "extension":
            poison_heap(logits, logits.double() if reduction == "none" else logits[0, 0])
        ours = run_with_grads(lambda x: label_loss_and_probas(x, targets.to(dtype), True, backend=backend,
                                                              reduction=reduction), logits)
        return ours, Problem(targets, True, reduction), logits

    check_against_oracle(draw, loss_values(shape, reduction))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mask_kind", ["none", "per_label", "per_element_bool", "per_element_float"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "divisor"])
def test_multi_label_options_match_torch(backend, dtype, mask_kind, reduction):
    shape = (4, 13)
    divisor = 17.0 if reduction == "divisor" else None
    torch_reduction = "mean" if reduction == "divisor" else reduction

    def draw():
        logits, targets = random_multi_label(shape, dtype)
        pos_weight = torch.rand(shape[1], dtype=torch.float64) * 3 + 0.1
        label_mask = {"none": None, "per_label": torch.rand(shape[1]) < 0.6,
                      "per_element_bool": torch.rand(shape) < 0.6,
                      "per_element_float": (torch.rand(shape) < 0.6).to(dtype)}[mask_kind]
        if label_mask is not None:
            label_mask.view(-1)[0] = 1  # something counted (torch's mean over nothing is NaN, ours 0)
        ours = run_with_grads(lambda x: label_loss_and_probas(x, targets.to(dtype), True, divisor, backend=backend,
                                                              pos_weight=pos_weight.to(dtype), label_mask=label_mask,
                                                              reduction=torch_reduction), logits)
        if label_mask is not None:  # masked elements get no gradient at all
            assert (ours[2][~label_mask.bool().expand(shape)] == 0).all()
        return ours, Problem(targets, True, torch_reduction, divisor, pos_weight, label_mask), logits

    check_against_oracle(draw, loss_values(shape, torch_reduction))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mask_kind", ["per_label", "per_element"])
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_multi_label_options_across_row_and_chunk_boundaries(backend, dtype, mask_kind, reduction):
    # The CPU kernel works on vectors within a row and splits the flat elements into chunks of 16,384: at
    # [3, 6007] (not a multiple of any vector width) a chunk ends mid-row, where pos_weight and a per-label
    # mask must restart at label 0.
    shape = (3, 6007)

    def draw():
        logits, targets = random_multi_label(shape, dtype)
        pos_weight = torch.rand(shape[1], dtype=torch.float64) * 3 + 0.1
        label_mask = torch.rand(shape[1] if mask_kind == "per_label" else shape) < 0.6
        ours = run_with_grads(lambda x: label_loss_and_probas(x, targets.to(dtype), True, backend=backend,
                                                              pos_weight=pos_weight.to(dtype), label_mask=label_mask,
                                                              reduction=reduction), logits)
        assert (ours[2][~label_mask.expand(shape)] == 0).all()
        return ours, Problem(targets, True, reduction, pos_weight=pos_weight, label_mask=label_mask), logits

    check_against_oracle(draw, loss_values(shape, reduction))


# ---------------------------------------------------------------------------------------- single-label
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_single_label_matches_torch(backend, dtype, shape, reduction):
    def draw():
        logits = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
        targets = torch.randint(0, shape[1], (shape[0],))
        if backend == "extension":
            poison_heap(logits, logits[:, 0].double())
        ours = run_with_grads(lambda x: label_loss_and_probas(x, targets, False, backend=backend,
                                                              reduction=reduction), logits)
        return ours, Problem(targets, False, reduction), logits

    check_against_oracle(draw, loss_values(shape, reduction, multi_label=False))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.9])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "divisor"])
def test_single_label_options_match_torch(backend, dtype, label_smoothing, reduction):
    divisor = 5 if reduction == "divisor" else None
    torch_reduction = "mean" if reduction == "divisor" else reduction

    def draw():
        logits = (torch.randn(6, 11, dtype=torch.float64) * 3).to(dtype)
        targets = torch.randint(0, 11, (6,))
        targets[1] = targets[4] = -7  # ignored rows
        ours = run_with_grads(lambda x: label_loss_and_probas(x, targets, False, divisor, backend=backend,
                                                              ignore_index=-7, label_smoothing=label_smoothing,
                                                              reduction=torch_reduction), logits)
        assert (ours[2][[1, 4]] == 0).all()  # ignored rows: no gradient
        problem = Problem(targets, False, torch_reduction, divisor, ignore_index=-7, label_smoothing=label_smoothing)
        return ours, problem, logits

    check_against_oracle(draw, loss_values((6, 11), torch_reduction, multi_label=False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignored_rows_contribute_nothing(backend):
    logits = torch.randn(5, 9)
    targets = torch.tensor([3, -100, 0, -100, 8])
    kept = targets != -100
    loss, _ = label_loss_and_probas(logits, targets, False, backend=backend, reduction="sum")
    loss_kept, _ = label_loss_and_probas(logits[kept], targets[kept], False, backend=backend, reduction="sum")
    assert torch.allclose(loss, loss_kept, rtol=1e-6, atol=0)
    mean, _ = label_loss_and_probas(logits, targets, False, backend=backend)
    assert torch.allclose(mean, loss_kept / 3, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("multi_label", [True, False])
def test_nothing_counted_gives_loss_zero_not_nan(backend, multi_label):
    """The documented convention: an all-ignored (all-masked) batch has mean loss 0 and zero gradient.
    torch's cross_entropy gives NaN there."""
    logits = torch.randn(3, 5, requires_grad=True)
    if multi_label:
        targets, options = torch.ones(3, 5), {"label_mask": torch.zeros(5, dtype=torch.bool)}
    else:
        targets, options = torch.full((3,), -100), {}
        assert F.cross_entropy(logits, targets).isnan()
    loss, probas = label_loss_and_probas(logits, targets, multi_label, backend=backend, **options)
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()
    assert probas.isfinite().all()


# -------------------------------------------------------------------------- large N, extreme logits, dtypes
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("multi_label", [True, False])
def test_large_odd_number_of_labels(backend, multi_label):
    """One draw: probas and dlogits hold 300,009 values; the mean loss is one value, where the extension's
    (accumulated in fp64) is measured far inside the rule."""
    shape = (3, 100003)
    logits = torch.randn(shape) * 4
    targets = (torch.rand(shape) < 0.01).float() if multi_label else torch.randint(0, shape[1], (3,))
    ours = run_with_grads(lambda x: label_loss_and_probas(x, targets, multi_label, backend=backend), logits)
    samples = AccuracyRuleSamples()
    add_to_rule(samples, ours, Problem(targets, multi_label), logits)
    samples.check()


def extreme_logits(dtype):
    values = torch.tensor([100.0, -100.0, 1e4, -1e4, 0.0, 30.0, -30.0, 1e4, -1e4, 5.0], dtype=torch.float64)
    return torch.stack([values, values.flip(0), -values, torch.full_like(values, 1e4)]).to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_extreme_logits_give_finite_loss_and_gradient(backend, dtype, multi_label, reduction):
    if dtype == torch.float64 and not EXTENDED:
        pytest.skip("np.longdouble is no wider than float64 here: no oracle for fp64 logits")
    logits = extreme_logits(dtype).clamp(torch.finfo(dtype).min, torch.finfo(dtype).max)  # fp16 tops at 65504
    targets = (torch.rand(logits.shape) < 0.5).to(dtype) if multi_label else torch.tensor([0, 3, 4, 9])
    ours = run_with_grads(
        lambda x: label_loss_and_probas(x, targets, multi_label, backend=backend, reduction=reduction), logits)
    loss, probas, dlogits, _ = ours
    assert loss.isfinite().all() and probas.isfinite().all() and dlogits.isfinite().all()
    # The logits are exact in every dtype, so the oracle sees the very same logits.
    samples = AccuracyRuleSamples()
    add_to_rule(samples, ours, Problem(targets, multi_label, reduction), logits)
    samples.check()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("multi_label", [True, False])
def test_probas_have_the_logits_dtype_under_autocast(device, backend, multi_label):
    """CUDA autocast runs softmax in fp32; the twin's probas must still have the logits' dtype, as the
    extension's do, whatever the backend."""
    logits = torch.randn(3, 5, device=device, dtype=torch.bfloat16)
    targets = (torch.rand(3, 5, device=device) < 0.5).float() if multi_label else torch.tensor([0, 4, 2], device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        for given in (targets, None):
            loss, probas = label_loss_and_probas(logits, given, multi_label, backend=backend)
            assert probas.dtype == torch.bfloat16
            assert given is None or loss.dtype == torch.float32


INF = float("inf")
INFINITE_ROWS = {  # one row each; single-label targets point at a finite logit, then at an infinite one
    "some -inf": ([-INF, 1.0, 2.0, -INF, 0.5], [1, 0]),
    "+inf": ([INF, 1.0, 2.0, 0.0, -1.0], [1, 0]),
    "two +inf": ([INF, INF, 0.0, 1.0, 2.0], [2, 0]),
    "nothing but -inf": ([-INF] * 5, [1, 0]),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("row", list(INFINITE_ROWS))
@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_infinite_logits_give_torchs_values(device, backend, row, multi_label, label_smoothing):
    """Loss, probas and dlogits are torch's own elementwise: infinities and NaN exactly, finite values by the
    accuracy rule (a -inf logit once gave the extension a NaN loss: 0 * inf in the smoothing term on the CPU,
    exp(-inf - -inf) on CUDA)."""
    if multi_label and label_smoothing:
        pytest.skip("label smoothing is single-label only")
    values, class_ids = INFINITE_ROWS[row]
    logits = torch.tensor([values] * len(class_ids), device=device)
    if multi_label:
        targets, options = (torch.rand(logits.shape, device=device) < 0.5).float(), {}
        torch_loss = lambda x: F.binary_cross_entropy_with_logits(  # noqa: E731
            x, targets.to(x.dtype), reduction="none")
        probas_fn = torch.sigmoid
    else:
        targets, options = torch.tensor(class_ids, device=device), {"label_smoothing": label_smoothing}
        torch_loss = lambda x: F.cross_entropy(x, targets, reduction="none", **options)  # noqa: E731
        probas_fn = lambda x: torch.softmax(x, -1)  # noqa: E731

    def run(fn, x):
        leaf = x.clone().requires_grad_()
        loss, probas = fn(leaf)
        loss.sum().backward()
        return loss.detach(), probas.detach(), leaf.grad

    ours = run(lambda x: label_loss_and_probas(x, targets, multi_label, backend=backend, reduction="none",
                                               **options), logits)
    plain = run(lambda x: (torch_loss(x), probas_fn(x)), logits)
    exact = run(lambda x: (torch_loss(x), probas_fn(x)), logits.double())
    for what, mine, theirs, exact_value in zip(("loss", "probas", "dlogits"), ours, plain, exact):
        assert_within_accuracy_rule(mine, theirs, exact_value, f"{row}: {what}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("multi_label", [True, False])
def test_half_precision_error_at_most_twice_torchs(backend, dtype, multi_label):
    """The accuracy rule in half precision: float64 on the same (rounded) logits is the oracle, torch computing
    in the logits' dtype the plain path (our loss is float32, accumulated in float32)."""
    shape = (7, 301)
    logits = (torch.randn(shape) * 3).to(dtype)
    upstream = torch.randn(()).to(dtype)  # exact in every dtype: the same upstream gradient for all three
    if multi_label:
        targets = (torch.rand(shape) < 0.3).to(dtype)
        torch_same_dtype = lambda x: (F.binary_cross_entropy_with_logits(x, targets), torch.sigmoid(x))  # noqa: E731
        exact = lambda x: (multi_label_oracle(x, targets), torch.sigmoid(x))  # noqa: E731
    else:
        targets = torch.randint(0, shape[1], (shape[0],))
        torch_same_dtype = lambda x: (F.cross_entropy(x, targets), torch.softmax(x, -1))  # noqa: E731
        exact = lambda x: (single_label_oracle(x, targets), torch.softmax(x, -1))  # noqa: E731

    def loss_probas_dlogits(fn, x):
        leaf = x.clone().requires_grad_()
        loss, probas = fn(leaf)
        (dlogits,) = torch.autograd.grad(loss, leaf, grad_outputs=upstream.to(loss.dtype))
        return loss.detach(), probas.detach(), dlogits

    truth = loss_probas_dlogits(exact, logits.double())
    ours = loss_probas_dlogits(lambda x: label_loss_and_probas(x, targets, multi_label, backend=backend), logits)
    theirs = loss_probas_dlogits(torch_same_dtype, logits)
    for what, mine, torchs, exact_value in zip(("loss", "probas", "dlogits"), ours, theirs, truth):
        assert_within_accuracy_rule(mine, torchs, exact_value, what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("multi_label", [True, False])
def test_gradient_through_the_probas_too(backend, dtype, multi_label):
    """dlogits of loss + sum(probas * weights), pooled over draws."""
    def gradient(fn, x, weights):
        leaf = x.detach().clone().requires_grad_()
        loss, probas = fn(leaf)
        (grad,) = torch.autograd.grad(loss + (probas * weights.to(probas.dtype)).sum(), leaf)
        return grad

    samples = AccuracyRuleSamples()
    for _ in range(draws_for(4 * 6)):
        logits = torch.randn(4, 6, dtype=torch.float64).to(dtype)
        targets = (torch.rand(4, 6) < 0.5).to(dtype) if multi_label else torch.randint(0, 6, (4,))
        weights = torch.randn(4, 6, dtype=torch.float64).to(dtype)
        problem = Problem(targets, multi_label)
        torchs = lambda x, problem=problem: (problem.loss(x), problem.probas(x))  # noqa: E731
        ours = gradient(lambda x, t=targets: label_loss_and_probas(x, t, multi_label, backend=backend), logits,
                        weights)
        if dtype == torch.float64:
            exact = problem.extended(logits, torch.ones((), dtype=torch.float64), probas_weights=weights)[2]
        else:
            exact = gradient(torchs, logits.double(), weights)
        samples.add("dlogits", ours, gradient(torchs, logits, weights), exact)
    samples.check()


# -------------------------------------------------------------------------------------------- shape fuzzing
@needs_extension
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 9), num_labels=st.integers(1, 70), multi_label=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "none"]), option=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_extension_matches_its_twin_on_random_shapes(batch, num_labels, multi_label, reduction, option, seed):
    """The extension in fp32 against its PyTorch twin (itself checked against torch above): the accuracy rule,
    the twin in fp64 the oracle and in fp32 the plain path, pooled over draws of this shape and options."""
    generator = torch.Generator().manual_seed(seed)
    upstream_shape = () if reduction != "none" else (batch, num_labels) if multi_label else (batch,)
    samples = AccuracyRuleSamples()
    for _ in range(draws_for(max(1, torch.Size(upstream_shape).numel()))):
        logits = torch.randn(batch, num_labels, generator=generator) * 5
        if multi_label:
            targets = (torch.rand(batch, num_labels, generator=generator) < 0.3).float()
            options = {"pos_weight": torch.rand(num_labels, generator=generator) + 0.5,
                       "label_mask": torch.rand(batch, num_labels, generator=generator) < 0.7} if option else {}
        else:
            targets = torch.randint(0, num_labels, (batch,), generator=generator)
            targets[torch.rand(batch, generator=generator) < 0.2] = -100
            options = {"label_smoothing": 0.2} if option else {}
        upstream = torch.randn(upstream_shape, generator=generator)
        call = functools.partial(label_loss_and_probas, targets=targets, multi_label=multi_label,
                                 reduction=reduction, **options)
        exact = run_with_grads(functools.partial(call, backend="torch"), logits.double(), upstream.double())
        twin = run_with_grads(functools.partial(call, backend="torch"), logits, upstream)
        ours = run_with_grads(functools.partial(call, backend="extension"), logits, upstream)
        for what, mine, plain, exact_value in zip(("loss", "probas", "dlogits"), ours, twin, exact):
            samples.add(what, mine, plain, exact_value)
    samples.check()
