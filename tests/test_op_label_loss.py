"""`label_loss_and_probas` (C++ extension and its PyTorch twin) against torch's own
`F.binary_cross_entropy_with_logits` / `F.cross_entropy` + sigmoid / softmax: loss, probas and dlogits
(autograd with a random upstream gradient), every option and reduction, odd shapes, extreme logits, fp64 /
fp32 / fp16 / bf16 logits; backend selection; torch.compile and opcheck of the custom ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import assert_relative_close
from ltc_fast.ops import loss_extension
from ltc_fast.ops.dispatch import ENV_VAR as BACKEND_ENV_VAR
from ltc_fast.ops.label_loss import label_loss_and_probas

EXTENSION_LOADED = loss_extension.load().loaded
needs_extension = pytest.mark.skipif(not EXTENSION_LOADED, reason=f"loss extension {loss_extension.extension_status()}")
BACKENDS = [pytest.param("extension", marks=needs_extension), "torch"]
SHAPES = [(1, 1), (1, 7), (5, 1), (3, 29), (8, 28)]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
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


def _oracle_dtype(logits):
    """float64 for the exact oracle (float64 logits); float32 for torch's same-precision run of lower ones."""
    return torch.promote_types(logits.dtype, torch.float32)


def multi_label_oracle(logits, targets, pos_weight=None, label_mask=None, reduction="mean", divisor=None):
    """torch's BCE on the unmasked elements only (so torch's own mean is the mean over them), in float64 for
    float64 logits (the exact oracle), else float32 (torch's same-precision result)."""
    dtype = _oracle_dtype(logits)
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
    x = logits.to(_oracle_dtype(logits))
    if divisor is not None:
        return F.cross_entropy(x, targets, ignore_index=ignore_index, label_smoothing=label_smoothing,
                               reduction="sum") / divisor
    return F.cross_entropy(x, targets, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction)


def run_with_grads(fn, logits, upstream=None):
    """loss, probas and dlogits of `fn(leaf)` for a random (or the given) upstream gradient of the loss."""
    leaf = logits.detach().clone().requires_grad_()
    loss, probas = fn(leaf)
    if upstream is None:
        upstream = torch.randn(loss.shape, dtype=torch.float64).to(loss.dtype)
    (dlogits,) = torch.autograd.grad(loss, leaf, grad_outputs=upstream)
    return loss.detach(), probas.detach(), dlogits, upstream


def dlogits_floor(upstream, logits, tol, weight=1.0):
    """The least scale a dlogits comparison is relative to. dlogits is upstream * weight * (p - y) / count:
    where p is close to y the difference cancels, so rounding in the logits' dtype bounds its absolute error
    at the scale of those terms, however small the result. count <= numel, so this floor is on the strict
    side; it only matters when every entry cancels (B = N = 1, a soft target near p)."""
    eps = torch.finfo(logits.dtype).eps
    return 2 * eps / tol * float(upstream.abs().max()) * weight / logits.numel()


def _oracle_with_grads(oracle, logits, upstream):
    leaf = logits.detach().clone().requires_grad_()
    value = oracle(leaf)
    (grad,) = torch.autograd.grad(value, leaf, grad_outputs=upstream.to(value.dtype))
    return value.detach().double(), grad.double()


def _assert_within_rule(what, actual, exact, torchs, tol, scale, dtype):
    """max error <= tol * scale, or the accuracy rule: twice torch's own same-precision error plus one unit in
    the last place. tol alone failed for an unlucky seed where torch itself was off by more (a 1e5-label
    softmax, a cancelling mean); the rule is what the kernels promise."""
    if actual.numel() == 0:
        return
    error = (actual.double() - exact).abs().max()
    torch_error = (torchs - exact).abs().max()
    bound = max(tol * scale, 2 * torch_error + torch.finfo(dtype).eps * exact.abs().max())
    assert error <= bound, f"{what}: max abs error {error:.3e} > {float(bound):.3e} (torch's own: {torch_error:.3e})"


def check_against_oracle(ours, oracle, logits, probas_fn):
    loss, probas, dlogits, upstream = ours
    expected, expected_dlogits = _oracle_with_grads(oracle, logits.double(), upstream.double())
    torch_loss, torch_dlogits = _oracle_with_grads(oracle, logits, upstream)
    tol = TOLERANCE[logits.dtype]
    assert loss.shape == expected.shape
    assert probas.dtype == logits.dtype and dlogits.dtype == logits.dtype
    scale = max(float(expected.abs().max()) if expected.numel() else 0.0, 1e-3)
    _assert_within_rule("loss", loss, expected, torch_loss, tol, scale, logits.dtype)
    # Probas: within tol, or within the accuracy rule (twice torch's own same-precision error plus one unit in
    # the last place): a softmax over 1e5 labels in fp32 is off by more than 1e-5 in torch itself for some seeds.
    exact_probas = probas_fn(logits.double())
    torch_error = (probas_fn(logits).double() - exact_probas).abs().max()
    last_place = torch.finfo(logits.dtype).eps * exact_probas.abs().max()
    probas_error = (probas.double() - exact_probas).abs().max()
    assert probas_error <= max(tol, 2 * torch_error + last_place), \
        f"probas: {probas_error:.3e} vs torch's {torch_error:.3e}"
    grad_scale = max(float(expected_dlogits.abs().max()), dlogits_floor(upstream, logits, tol))
    _assert_within_rule("dlogits", dlogits, expected_dlogits, torch_dlogits, tol, grad_scale, logits.dtype)


# ----------------------------------------------------------------------------------------- multi-label
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_multi_label_matches_torch(backend, dtype, shape, reduction):
    logits, targets = random_multi_label(shape, dtype)
    if backend == "extension":
        poison_heap(logits, logits.double() if reduction == "none" else logits[0, 0])
    ours = run_with_grads(lambda x: label_loss_and_probas(x, targets.to(dtype), True, backend=backend,
                                                          reduction=reduction), logits)
    check_against_oracle(ours, lambda x: multi_label_oracle(x, targets, reduction=reduction), logits, torch.sigmoid)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mask_kind", ["none", "per_label", "per_element_bool", "per_element_float"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "divisor"])
def test_multi_label_options_match_torch(backend, dtype, mask_kind, reduction):
    shape = (4, 13)
    logits, targets = random_multi_label(shape, dtype)
    pos_weight = torch.rand(shape[1], dtype=torch.float64) * 3 + 0.1
    label_mask = {"none": None, "per_label": torch.rand(shape[1]) < 0.6,
                  "per_element_bool": torch.rand(shape) < 0.6,
                  "per_element_float": (torch.rand(shape) < 0.6).to(dtype)}[mask_kind]
    divisor = 17.0 if reduction == "divisor" else None
    torch_reduction = "mean" if reduction == "divisor" else reduction
    ours = run_with_grads(lambda x: label_loss_and_probas(x, targets.to(dtype), True, divisor, backend=backend,
                                                          pos_weight=pos_weight.to(dtype), label_mask=label_mask,
                                                          reduction=torch_reduction), logits)
    check_against_oracle(ours, lambda x: multi_label_oracle(x, targets, pos_weight, label_mask, torch_reduction,
                                                             divisor), logits, torch.sigmoid)
    if label_mask is not None:  # masked elements get no gradient at all
        assert (ours[2][~label_mask.bool().expand(shape)] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mask_kind", ["per_label", "per_element"])
def test_multi_label_options_across_row_and_chunk_boundaries(backend, dtype, mask_kind):
    # The CPU kernel works on vectors within a row and splits the flat elements into chunks of 16,384: at
    # [3, 6007] (not a multiple of any vector width) a chunk ends mid-row, where pos_weight and a per-label
    # mask must restart at label 0.
    shape = (3, 6007)
    logits, targets = random_multi_label(shape, dtype)
    pos_weight = torch.rand(shape[1], dtype=torch.float64) * 3 + 0.1
    label_mask = torch.rand(shape[1] if mask_kind == "per_label" else shape) < 0.6
    ours = run_with_grads(lambda x: label_loss_and_probas(x, targets.to(dtype), True, backend=backend,
                                                          pos_weight=pos_weight.to(dtype), label_mask=label_mask,
                                                          reduction="sum"), logits)
    check_against_oracle(ours, lambda x: multi_label_oracle(x, targets, pos_weight, label_mask, "sum"), logits,
                         torch.sigmoid)
    assert (ours[2][~label_mask.expand(shape)] == 0).all()


# ---------------------------------------------------------------------------------------- single-label
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_single_label_matches_torch(backend, dtype, shape, reduction):
    logits = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    targets = torch.randint(0, shape[1], (shape[0],))
    if backend == "extension":
        poison_heap(logits, logits[:, 0].double())
    ours = run_with_grads(lambda x: label_loss_and_probas(x, targets, False, backend=backend, reduction=reduction),
                          logits)
    check_against_oracle(ours, lambda x: single_label_oracle(x, targets, reduction=reduction), logits,
                         lambda x: torch.softmax(x, -1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.9])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "divisor"])
def test_single_label_options_match_torch(backend, dtype, label_smoothing, reduction):
    logits = (torch.randn(6, 11, dtype=torch.float64) * 3).to(dtype)
    targets = torch.randint(0, 11, (6,))
    targets[1] = targets[4] = -7  # ignored rows
    divisor = 5 if reduction == "divisor" else None
    torch_reduction = "mean" if reduction == "divisor" else reduction
    ours = run_with_grads(lambda x: label_loss_and_probas(x, targets, False, divisor, backend=backend,
                                                          ignore_index=-7, label_smoothing=label_smoothing,
                                                          reduction=torch_reduction), logits)
    check_against_oracle(ours, lambda x: single_label_oracle(x, targets, -7, label_smoothing, torch_reduction,
                                                             divisor), logits, lambda x: torch.softmax(x, -1))
    assert (ours[2][[1, 4]] == 0).all()  # ignored rows: no gradient


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
    shape = (3, 100003)
    logits = torch.randn(shape) * 4
    if multi_label:
        targets = (torch.rand(shape) < 0.01).float()
        ours = run_with_grads(lambda x: label_loss_and_probas(x, targets, True, backend=backend), logits)
        check_against_oracle(ours, lambda x: multi_label_oracle(x, targets), logits, torch.sigmoid)
    else:
        targets = torch.randint(0, shape[1], (3,))
        ours = run_with_grads(lambda x: label_loss_and_probas(x, targets, False, backend=backend), logits)
        check_against_oracle(ours, lambda x: single_label_oracle(x, targets), logits, lambda x: torch.softmax(x, -1))


def extreme_logits(dtype):
    values = torch.tensor([100.0, -100.0, 1e4, -1e4, 0.0, 30.0, -30.0, 1e4, -1e4, 5.0], dtype=torch.float64)
    return torch.stack([values, values.flip(0), -values, torch.full_like(values, 1e4)]).to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_extreme_logits_give_finite_loss_and_gradient(backend, dtype, multi_label, reduction):
    logits = extreme_logits(dtype).clamp(torch.finfo(dtype).min, torch.finfo(dtype).max)  # fp16 tops at 65504
    if multi_label:
        targets = (torch.rand(logits.shape) < 0.5).to(dtype)
        oracle = lambda x: multi_label_oracle(x, targets, reduction=reduction)  # noqa: E731
        probas_fn = torch.sigmoid
    else:
        targets = torch.tensor([0, 3, 4, 9])
        oracle = lambda x: single_label_oracle(x, targets, reduction=reduction)  # noqa: E731
        probas_fn = lambda x: torch.softmax(x, -1)  # noqa: E731
    loss, probas, dlogits, upstream = run_with_grads(
        lambda x: label_loss_and_probas(x, targets, multi_label, backend=backend, reduction=reduction), logits)
    assert loss.isfinite().all() and probas.isfinite().all() and dlogits.isfinite().all()
    leaf = logits.double().requires_grad_()
    expected = oracle(leaf)
    (expected_dlogits,) = torch.autograd.grad(expected, leaf, grad_outputs=upstream.double())
    # The logits are exact in every dtype, and losses accumulate in fp32: relative to the loss's size.
    assert_relative_close(loss.double(), expected.detach(), 1e-6, "loss", scale=float(expected.detach().abs().max()))
    dtype_eps = torch.finfo(dtype).eps
    assert_relative_close(probas.double(), probas_fn(logits.double()), dtype_eps, "probas", scale=1.0)
    assert_relative_close(dlogits.double(), expected_dlogits, 2 * dtype_eps, "dlogits",
                          scale=float(expected_dlogits.abs().max()))


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
    """Loss, probas and dlogits equal torch's own elementwise, infinities and NaN included (a -inf logit once
    gave the extension a NaN loss: 0 * inf in the smoothing term on the CPU, exp(-inf - -inf) on CUDA)."""
    if multi_label and label_smoothing:
        pytest.skip("label smoothing is single-label only")
    values, class_ids = INFINITE_ROWS[row]
    logits = torch.tensor([values] * len(class_ids), device=device)
    if multi_label:
        targets, options = (torch.rand(logits.shape, device=device) < 0.5).float(), {}
        torch_loss = lambda x: F.binary_cross_entropy_with_logits(x, targets, reduction="none")  # noqa: E731
        probas_fn = torch.sigmoid
    else:
        targets, options = torch.tensor(class_ids, device=device), {"label_smoothing": label_smoothing}
        torch_loss = lambda x: F.cross_entropy(x, targets, reduction="none", **options)  # noqa: E731
        probas_fn = lambda x: torch.softmax(x, -1)  # noqa: E731

    def run(fn):
        leaf = logits.clone().requires_grad_()
        loss, probas = fn(leaf)
        loss.sum().backward()
        return loss.detach(), probas.detach(), leaf.grad

    ours = run(lambda x: label_loss_and_probas(x, targets, multi_label, backend=backend, reduction="none",
                                               **options))
    expected = run(lambda x: (torch_loss(x), probas_fn(x)))
    for what, mine, theirs in zip(("loss", "probas", "dlogits"), ours, expected):
        torch.testing.assert_close(mine, theirs, equal_nan=True, rtol=1e-6, atol=1e-7, msg=f"{row}: {what}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("multi_label", [True, False])
def test_half_precision_error_at_most_twice_torchs(backend, dtype, multi_label):
    """Against float64 on the same (rounded) logits, our error is at most 2x that of torch computing in the
    same dtype (plus a hair, for when torch happens to be exact)."""
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
        return loss.detach().double(), probas.detach().double(), dlogits.double()

    truth = loss_probas_dlogits(exact, logits.double())
    ours = loss_probas_dlogits(lambda x: label_loss_and_probas(x, targets, multi_label, backend=backend), logits)
    theirs = loss_probas_dlogits(torch_same_dtype, logits)
    for what, mine, torchs, exact_value in zip(("loss", "probas", "dlogits"), ours, theirs, truth):
        our_error = (mine - exact_value).abs().max()
        torch_error = (torchs - exact_value).abs().max()
        assert our_error <= 2 * torch_error + 1e-7 * exact_value.abs().max(), \
            f"{what}: error {our_error:.3e} vs torch's {torch_error:.3e}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("multi_label", [True, False])
def test_gradient_through_the_probas_too(backend, multi_label):
    logits = torch.randn(4, 6, dtype=torch.float64)
    targets = (torch.rand(4, 6) < 0.5).double() if multi_label else torch.randint(0, 6, (4,))
    weights = torch.randn(4, 6, dtype=torch.float64)

    def objective(fn, x):
        loss, probas = fn(x)
        return loss + (probas * weights).sum()

    leaf = logits.clone().requires_grad_()
    (ours,) = torch.autograd.grad(objective(lambda x: label_loss_and_probas(x, targets, multi_label,
                                                                            backend=backend), leaf), leaf)
    oracle = ((lambda x: (multi_label_oracle(x, targets), torch.sigmoid(x))) if multi_label else
              (lambda x: (single_label_oracle(x, targets), torch.softmax(x, -1))))
    leaf = logits.clone().requires_grad_()
    (expected,) = torch.autograd.grad(objective(oracle, leaf), leaf)
    assert_relative_close(ours, expected, 1e-10, "dlogits")


# -------------------------------------------------------------------------------------------- shape fuzzing
@needs_extension
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 9), num_labels=st.integers(1, 70), multi_label=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "none"]), option=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_extension_matches_its_twin_on_random_shapes(batch, num_labels, multi_label, reduction, option, seed):
    """The extension against the PyTorch twin (itself checked against torch above), fp32, to 1e-5."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_labels, generator=generator) * 5
    if multi_label:
        targets = (torch.rand(batch, num_labels, generator=generator) < 0.3).float()
        options = {"pos_weight": torch.rand(num_labels, generator=generator) + 0.5,
                   "label_mask": torch.rand(batch, num_labels, generator=generator) < 0.7} if option else {}
    else:
        targets = torch.randint(0, num_labels, (batch,), generator=generator)
        targets[torch.rand(batch, generator=generator) < 0.2] = -100
        options = {"label_smoothing": 0.2} if option else {}
    upstream_shape = () if reduction != "none" else (batch, num_labels) if multi_label else (batch,)
    upstream = torch.randn(upstream_shape, generator=generator)
    results = [run_with_grads(lambda x: label_loss_and_probas(x, targets, multi_label, backend=backend,
                                                              reduction=reduction, **options), logits, upstream)
               for backend in ("extension", "torch")]
    # The loss is a difference of values as large as the logits (log-sum-exp - x, softplus terms): fp32
    # rounding of those bounds its absolute error however small the loss is, so its scale has that floor.
    loss_floor = float(logits.abs().max()) * 2 * torch.finfo(torch.float32).eps / 1e-5
    weight = max(float(options["pos_weight"].max()), 1.0) if "pos_weight" in options else 1.0
    floors = {"loss": loss_floor, "probas": 1e-6, "dlogits": dlogits_floor(upstream, logits, 1e-5, weight)}
    for what, ours, twin in zip(("loss", "probas", "dlogits"), results[0][:3], results[1][:3]):
        assert_relative_close(ours, twin, 1e-5, what, scale=max(float(twin.abs().max()), floors[what]))
