"""`label_loss_and_probas` around its kernels: bad input (ValueError before any kernel runs), backend
selection and the environment variables, loading the extension (warned once when unavailable), the custom ops
under `torch.library.opcheck` and `torch.compile`, the model using the extension, and the CUDA kernels.
Which backend ran is what the `kernel_calls` fixture (tests/conftest.py) saw: the twin
`label_loss_and_probas_torch` or the extension's ops `ltc_fast_ext::*`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_relative_close, reference_and_ltc, text_batch
from ltc_fast.ops import loss_extension
from ltc_fast.ops.dispatch import ENV_VAR as BACKEND_ENV_VAR
from ltc_fast.ops.label_loss import label_loss_and_probas

ROOT = Path(__file__).resolve().parents[1]
EXTENSION_LOADED = loss_extension.load().loaded
needs_extension = pytest.mark.skipif(not EXTENSION_LOADED, reason=f"loss extension {loss_extension.extension_status()}")
TWIN = "label_loss_and_probas_torch"
MULTI_OP, SINGLE_OP = "ltc_fast_ext::multi_label_forward", "ltc_fast_ext::single_label_forward"


@pytest.fixture(autouse=True)
def no_backend_override(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)


@pytest.fixture
def unavailable_extension(monkeypatch):
    monkeypatch.setattr(loss_extension, "load", lambda: loss_extension.ExtensionState(False, "simulated: no compiler"))


@pytest.fixture
def extension_ops():
    """`torch.ops.ltc_fast_ext` as the public function leaves it: the first call that picks the extension gives
    its ops their fake kernels and autograd (which opcheck checks)."""
    label_loss_and_probas(torch.zeros(1, 1), torch.zeros(1, 1), True, backend="extension")
    return torch.ops.ltc_fast_ext


# ------------------------------------------------------------------------------------------------ bad input
B, N = 3, 5
MULTI = (torch.zeros(B, N), torch.zeros(B, N), True)
SINGLE = (torch.zeros(B, N), torch.tensor([0, 4, -100]), False)
BAD_INPUTS = {
    "logits 1-d": ((torch.zeros(N), torch.zeros(N), True), {}, r"logits must be .*\[B, N\], got torch.float32 \[5\]"),
    "logits int": ((torch.zeros(B, N, dtype=torch.long), torch.zeros(B, N), True), {}, r"logits must be .*torch.int64"),
    "no labels": ((torch.zeros(B, 0), torch.zeros(B, 0), True), {}, r"at least one label"),
    "multi targets shape": ((torch.zeros(B, N), torch.zeros(B, N + 1), True), {},
                            r"targets for multi-label .* \[3, 5\], got torch.float32 \[3, 6\]"),
    "multi targets dtype": ((torch.zeros(B, N), torch.zeros(B, N, dtype=torch.long), True), {},
                            r"targets for multi-label must be a float tensor.*torch.int64"),
    "targets device": ((torch.zeros(B, N), torch.zeros(B, N, device="meta"), True), {},
                       r"targets must be on the logits' device cpu, got meta"),
    "pos_weight length": (MULTI, {"pos_weight": torch.ones(N - 1)},
                          r"pos_weight must be a float tensor \[N\] = \[5\].*got torch.float32 \[4\]"),
    "pos_weight dtype": (MULTI, {"pos_weight": torch.ones(N, dtype=torch.long)}, r"pos_weight must be a float"),
    "label_mask shape": (MULTI, {"label_mask": torch.ones(B, N - 1, dtype=torch.bool)},
                         r"label_mask must have shape \[N\] = \[5\] or \[B, N\] = \[3, 5\], got torch.bool \[3, 4\]"),
    "label_mask values": (MULTI, {"label_mask": torch.full((N,), 2.0)}, r"label_mask must be bool or hold only 0 and 1"),
    "smoothing multi": (MULTI, {"label_smoothing": 0.1}, r"label_smoothing applies to single-label"),
    "ignore_index multi": (MULTI, {"ignore_index": 3}, r"ignore_index applies to single-label only"),
    "single targets float": ((torch.zeros(B, N), torch.zeros(B), False), {},
                             r"targets for single-label must be integer class ids \[B\] = \[3\], got torch.float32"),
    "single targets shape": ((torch.zeros(B, N), torch.zeros(B, 1, dtype=torch.long), False), {},
                             r"class ids \[B\] = \[3\], got torch.int64 \[3, 1\]"),
    "class id too large": ((torch.zeros(B, N), torch.tensor([0, 5, 1]), False), {},
                           r"class id 5 at row 1; class ids must be in \[0, 4\]"),
    "class id negative": ((torch.zeros(B, N), torch.tensor([0, 1, -3]), False), {}, r"class id -3 at row 2"),
    "pos_weight single": (SINGLE, {"pos_weight": torch.ones(N)}, r"pos_weight applies to multi-label"),
    "label_mask single": (SINGLE, {"label_mask": torch.ones(N, dtype=torch.bool)}, r"label_mask applies to multi"),
    "smoothing one": (SINGLE, {"label_smoothing": 1.0}, r"label_smoothing must be a float in \[0, 1\), got 1.0"),
    "smoothing negative": (SINGLE, {"label_smoothing": -0.1}, r"label_smoothing must be .* got -0.1"),
    "reduction": (SINGLE, {"reduction": "avg"}, r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"),
    "divisor without mean": (MULTI, {"reduction": "sum", "num_items_in_batch": 4},
                             r"num_items_in_batch is the divisor of reduction='mean'; got it with reduction='sum'"),
    "backend": (MULTI, {"backend": "cuda"}, r"backend must be one of 'auto', 'torch', 'extension'; got 'cuda'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_value_error_before_any_kernel(case, kernel_calls):
    (logits, targets, multi_label), options, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        label_loss_and_probas(logits, targets, multi_label, **options)
    assert kernel_calls == []


@needs_extension
def test_the_ops_themselves_refuse_bad_input():
    """The kernels' own guards, for direct calls and for compiled graphs (where data checks are skipped)."""
    logits = torch.zeros(B, N)
    with pytest.raises(RuntimeError, match="class id 7 at row 0"):
        torch.ops.ltc_fast_ext.single_label_forward(logits, torch.tensor([7, 0, 0]), -100, 0.0, False)
    with pytest.raises(RuntimeError, match=r"targets must be Float \[3, 5\], got Double"):
        torch.ops.ltc_fast_ext.multi_label_forward(logits, torch.zeros(B, N, dtype=torch.float64), None, None, False)
    with pytest.raises(RuntimeError, match="pos_weight must be"):
        torch.ops.ltc_fast_ext.multi_label_forward(logits, torch.zeros(B, N), torch.ones(N + 1), None, False)


# -------------------------------------------------------------------------------------- backend selection
@needs_extension
@pytest.mark.parametrize("multi_label", [True, False])
def test_auto_uses_the_extension_when_loaded(kernel_calls, multi_label):
    logits, targets = (MULTI if multi_label else SINGLE)[:2]
    label_loss_and_probas(logits, targets, multi_label)
    assert kernel_calls == [MULTI_OP if multi_label else SINGLE_OP]


def test_environment_variable_forces_the_torch_path(monkeypatch, kernel_calls):
    monkeypatch.setenv(BACKEND_ENV_VAR, "torch")
    label_loss_and_probas(*MULTI)
    label_loss_and_probas(*SINGLE)
    assert kernel_calls == [TWIN, TWIN]


def test_forcing_torch_does_not_even_load_the_extension(monkeypatch, kernel_calls):
    monkeypatch.setattr(loss_extension, "load", lambda: pytest.fail("backend='torch' loaded the extension"))
    label_loss_and_probas(*MULTI, backend="torch")
    assert kernel_calls == [TWIN]


def test_unavailable_extension_falls_back_under_auto_and_fails_when_forced(unavailable_extension, kernel_calls):
    loss, _ = label_loss_and_probas(*SINGLE)
    assert kernel_calls == [TWIN] and loss.isfinite()
    with pytest.raises(RuntimeError, match="backend='extension' was requested .* unavailable: simulated: no compiler"):
        label_loss_and_probas(*SINGLE, backend="extension")


@needs_extension
def test_targets_that_require_grad_take_the_twin(kernel_calls):
    """The extension gives no gradient for targets (soft-label distillation would need one)."""
    logits = torch.randn(B, N, requires_grad=True)
    targets = torch.rand(B, N, requires_grad=True)
    loss, _ = label_loss_and_probas(logits, targets, True)
    loss.backward()
    assert kernel_calls == [TWIN]
    expected = -logits.detach() / logits.numel()  # d BCE / d y = -x
    assert_relative_close(targets.grad, expected, 1e-6, "dtargets")


# ------------------------------------------------------------------------------------------------ loading
def test_extension_status_names_the_path():
    status = loss_extension.extension_status()
    assert re.fullmatch(r"(prebuilt|jit) CPU(\+CUDA)?|unavailable: .+", status), status
    assert loss_extension.source_dir() is not None, "csrc/ sources not found for the JIT build"


# A fresh process without the prebuilt module (`import ltc_fast._loss_ext` fails), as an install without a compiler
# has it: what extension_status() says there, what the public function does, and the warnings it gave.
WITHOUT_PREBUILT = """
import json, sys, warnings
sys.modules[%r] = None
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from ltc_fast.ops import extension_status, label_loss_and_probas
    statuses = [extension_status() for _ in range(3)]
    loss, _ = label_loss_and_probas(torch.zeros(2, 3), torch.zeros(2, 3), True)
    try:
        label_loss_and_probas(torch.zeros(2, 3), torch.zeros(2, 3), True, backend="extension")
        forced = ""
    except RuntimeError as error:
        forced = str(error)
warned = [str(w.message) for w in caught
          if issubclass(w.category, RuntimeWarning) and "loss extension" in str(w.message)]
print(json.dumps({"statuses": statuses, "loss": loss.item(), "forced": forced, "warned": warned}))
""" % loss_extension.PREBUILT_MODULE


def _without_prebuilt_module(**env_changes) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in (loss_extension.NO_BUILD_ENV_VAR, loss_extension.REQUIRE_ENV_VAR)}
    env.update(env_changes, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", WITHOUT_PREBUILT], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_unavailable_and_reported_once(seen: dict, why: str) -> None:
    status = seen["statuses"][0]
    assert seen["statuses"] == [status] * 3 and status.startswith("unavailable: no prebuilt ") and why in status
    assert len(seen["warned"]) == 1 and f"{status}; using the PyTorch loss path" in seen["warned"][0]
    assert seen["loss"] == pytest.approx(0.6931472)  # the twin's BCE at logit 0: log 2
    assert "backend='extension' was requested but cannot run here" in seen["forced"] and status in seen["forced"]


def test_no_build_environment_variable_skips_the_jit_build_and_warns_once():
    seen = _without_prebuilt_module(**{loss_extension.NO_BUILD_ENV_VAR: "1"})
    _assert_unavailable_and_reported_once(seen, f"and {loss_extension.NO_BUILD_ENV_VAR} is set")


def test_a_failed_jit_build_is_a_status_not_an_exception(tmp_path):
    # torch's JIT build cannot create its build directory under a regular file: it fails at once.
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    seen = _without_prebuilt_module(TORCH_EXTENSIONS_DIR=str(not_a_directory))
    _assert_unavailable_and_reported_once(seen, "and the JIT build failed: ")


# ---------------------------------------------------------------------------------- torch.library / compile
@needs_extension
@pytest.mark.parametrize("elementwise", [False, True])
def test_opcheck_multi_label(elementwise, extension_ops):
    logits = torch.randn(B, N, requires_grad=True)
    transposed = torch.randn(N, B, requires_grad=True).t()  # non-contiguous: outputs are contiguous anyway
    targets = (torch.rand(B, N) < 0.5).float()
    for logits, pos_weight, label_mask in [(logits, None, None),
                                           (logits, torch.rand(N) + 0.5, torch.rand(B, N) < 0.5),
                                           (transposed, None, torch.rand(N) < 0.5)]:
        torch.library.opcheck(extension_ops.multi_label_forward.default,
                              (logits, targets, pos_weight, label_mask, elementwise))
        grad = torch.randn(B, N) if elementwise else torch.randn(())
        torch.library.opcheck(extension_ops.multi_label_backward.default,
                              (grad, logits.detach(), targets, pos_weight, label_mask))


@needs_extension
@pytest.mark.parametrize("elementwise", [False, True])
def test_opcheck_single_label(elementwise, extension_ops):
    logits = torch.randn(B, N, requires_grad=True)
    targets = torch.tensor([1, -100, 4])
    torch.library.opcheck(extension_ops.single_label_forward.default, (logits, targets, -100, 0.1, elementwise))
    _, _, stats = extension_ops.single_label_forward(logits.detach(), targets, -100, 0.1, elementwise)
    grad = torch.randn(B) if elementwise else torch.randn(())
    torch.library.opcheck(extension_ops.single_label_backward.default,
                          (grad, logits.detach(), targets, stats, -100, 0.1))


@needs_extension
@pytest.mark.parametrize("multi_label", [True, False])
def test_torch_compile_traces_the_extension_in_one_graph(multi_label):
    logits = torch.randn(4, 9)
    if multi_label:
        targets, options = (torch.rand(4, 9) < 0.5).float(), {"pos_weight": torch.rand(9) + 0.5,
                                                               "label_mask": torch.rand(9) < 0.7}
    else:
        targets, options = torch.tensor([3, -100, 0, 8]), {"label_smoothing": 0.1}

    def loss_and_grad(fn):
        leaf = logits.clone().requires_grad_()
        loss, probas = fn(leaf)
        loss.backward()
        return loss.detach(), probas.detach(), leaf.grad

    def step(x):
        return label_loss_and_probas(x, targets, multi_label, backend="extension", **options)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for ours, eager in zip(loss_and_grad(compiled), loss_and_grad(step)):
        assert_relative_close(ours, eager, 1e-6, scale=1.0)


# ------------------------------------------------------------------------------------------------ the model
@needs_extension
def test_the_model_uses_the_extension_by_default(kernel_calls):
    _, model = reference_and_ltc("bert", 4)
    ids, mask = text_batch(3, 9, pad_id=0)
    labels = (torch.rand(3, 4) < 0.5).float()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    model.config.ops_backend = "torch"
    loss_torch = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss_calls = [call for call in kernel_calls if call == TWIN or call.startswith("ltc_fast_ext::")]
    assert loss_calls == [MULTI_OP, TWIN]
    assert_relative_close(loss, loss_torch, 1e-6)


# ------------------------------------------------------------------------------- every device (CUDA: GPU-marked)
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.gpu), "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (5, 28), (3, 4099), (2, 100003)])
def test_extension_kernels_match_torch(device, dtype, multi_label, shape):
    """On every device the extension has kernels for: error at most twice torch's same-dtype error."""
    assert loss_extension.runs_on(torch.device(device)), loss_extension.extension_status()
    logits = (torch.randn(shape, device=device) * 4).to(dtype)
    upstream = torch.randn((), device=device)
    if multi_label:
        targets = (torch.rand(shape, device=device) < 0.3).float()
        options = {"pos_weight": torch.rand(shape[1], device=device) + 0.5,
                   "label_mask": torch.rand(shape, device=device) < 0.8}
        def oracle(x):  # noqa: E306
            keep, wide = options["label_mask"], x.to(torch.promote_types(x.dtype, torch.float32))
            terms = F.binary_cross_entropy_with_logits(wide, targets.to(wide.dtype), reduction="none",
                                                       pos_weight=options["pos_weight"].to(wide.dtype))
            # the documented convention: the mean over what counts, 0 (not torch's NaN) when nothing counts
            loss = (terms * keep).sum() / keep.sum().clamp(min=1)
            return loss, torch.sigmoid(x)
    else:
        targets = torch.randint(0, shape[1], (shape[0],), device=device)
        targets[0] = -100 if shape[0] > 1 else targets[0]
        options = {"label_smoothing": 0.1}
        def oracle(x):  # noqa: E306
            wide = x.to(torch.promote_types(x.dtype, torch.float32))
            return F.cross_entropy(wide, targets, label_smoothing=0.1), torch.softmax(x, -1)

    def run(fn, x):
        leaf = x.clone().requires_grad_()
        loss, probas = fn(leaf)
        (dlogits,) = torch.autograd.grad(loss, leaf, grad_outputs=upstream.to(loss.dtype))
        return loss.detach().double(), probas.detach().double(), dlogits.double()

    for _ in range(2):  # the caching allocator hands these NaN blocks to the kernel: unwritten outputs show
        torch.full(shape, float("nan"), device=device, dtype=dtype)
    ours = run(lambda x: label_loss_and_probas(x, targets, multi_label, backend="extension", **options), logits)
    exact = run(oracle, logits.double())
    same_dtype = run(oracle, logits)
    for what, mine, truth, torchs in zip(("loss", "probas", "dlogits"), ours, exact, same_dtype):
        assert mine.isfinite().all(), what
        our_error, torch_error = (mine - truth).abs().max(), (torchs - truth).abs().max()
        assert our_error <= 2 * torch_error + 1e-5 * truth.abs().max(), f"{what}: {our_error} vs torch {torch_error}"


@pytest.mark.gpu
def test_cuda_out_of_range_class_id_gives_nan_not_a_dead_context():
    """The kernel itself (what runs under torch.compile, where the Python id check is off) marks an out-of-range
    class id with a NaN loss and NaN gradients for its row; the CUDA context stays usable."""
    assert loss_extension.runs_on(torch.device("cuda")), loss_extension.extension_status()
    label_loss_and_probas(torch.zeros(1, 3, device="cuda"), None, False, backend="extension")  # registers the ops
    logits = torch.randn(3, 5, device="cuda")
    targets = torch.tensor([1, 7, -3], device="cuda")
    loss, _, stats = torch.ops.ltc_fast_ext.single_label_forward(logits, targets, -100, 0.0, True)
    dlogits = torch.ops.ltc_fast_ext.single_label_backward(torch.ones(3, device="cuda"), logits, targets, stats,
                                                           -100, 0.0)
    assert loss[0].isfinite() and loss[1:].isnan().all()
    assert dlogits[0].isfinite().all() and dlogits[1:].isnan().all()
    torch.cuda.synchronize()  # a device assert would raise here, and every later CUDA call would fail
    assert (torch.ones(2, device="cuda") + 1).sum().item() == 4
