"""The fused label head: the Triton kernel (forced with backend="triton"; on the CPU in Triton's interpreter)
against its plain-PyTorch twin, padded and packed, with and without dropout, forward and every gradient, the
outputs allocated NaN-poisoned."""

import math

import pytest
import torch
import torch.utils.deterministic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import OP_DEVICE, assert_error_at_most_twice_torchs, assert_relative_close, needs_triton
from ltc_fast import layout
from ltc_fast.ops import label_head as head
from ltc_fast.ops import triton_support
from ltc_fast.ops.dispatch import ENV_VAR

# (batch, labels, hidden): odd B and N, B = 1 and N = 1, H not a power of two; the wide ones kept tiny
# because the interpreter is slow.
SHAPES = [(1, 1, 64), (3, 5, 64), (5, 3, 96), (1, 2, 384), (2, 1, 768)]


def _inputs(batch, num_labels, hidden, packed, dtype=torch.float32):
    """Hidden states (padded `[B, S, H]`, or packed `[total, H]` with label rows) and the head's parameters."""
    if packed:
        lengths = torch.randint(1, 6, (batch,))
        cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(OP_DEVICE)
        label_rows = layout.packed_label_rows(cu_seqlens, num_labels)
        states = torch.randn(int(lengths.sum()) + batch * num_labels, hidden, device=OP_DEVICE, dtype=dtype)
    else:
        label_rows = None
        states = torch.randn(batch, num_labels + 4, hidden, device=OP_DEVICE, dtype=dtype)
    weight = torch.randn(1, hidden, device=OP_DEVICE, dtype=dtype) / math.sqrt(hidden)
    bias = torch.randn(1, device=OP_DEVICE, dtype=dtype)
    return [t.requires_grad_() for t in (states, weight, bias)], label_rows


def _term_scales(inputs, grad, *twin_args):
    """The scale each comparison is relative to: the twin run on |inputs| with |grad| sums the magnitudes of
    the terms that make each logit and each gradient (the head is linear in each input), which is what fp32
    rounding is relative to. A logit or the bias gradient can sum to about 0 while its terms are not."""
    magnitudes = [t.detach().abs().requires_grad_() for t in inputs]
    logits = head.label_head_logits_torch(*magnitudes, *twin_args)
    grads = torch.autograd.grad(logits, magnitudes, grad.abs())
    return [t.max() for t in (logits, *grads)]


def _kernel_mask(seed, batch, num_labels, hidden, p):
    return head.dropout_keep_mask(seed, batch, num_labels, hidden, p, OP_DEVICE)


@needs_triton
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("batch,num_labels,hidden", SHAPES)
def test_kernel_matches_the_twin_forward_and_gradients(batch, num_labels, hidden, packed, dropout_p, fresh_seed,
                                                      unwritten_memory_is_nan):
    """Under `unwritten_memory_is_nan`: the logits and the dw partial sums are allocated NaN-filled, so the kernels
    must write every element they own; dh is zero-initialised and written at the label rows only, where the
    comparison with the twin's gradient checks every element."""
    (states, weight, bias), label_rows = _inputs(batch, num_labels, hidden, packed)
    training = dropout_p > 0
    torch.manual_seed(fresh_seed + 1)
    actual = head.label_head_logits(states, weight, bias, num_labels, dropout_p, training, backend="triton",
                                    label_rows=label_rows)
    # The kernel's mask, recomputed from the seed the public function drew: the twin then gives the same
    # numbers only if forward *and* backward used that mask.
    torch.manual_seed(fresh_seed + 1)
    seed = head.draw_dropout_seed() if training else None
    mask = _kernel_mask(seed, batch, num_labels, hidden, dropout_p) if training else None
    expected = head.label_head_logits_torch(states, weight, bias, num_labels, dropout_p, training, label_rows, mask)
    assert actual.shape == (batch, num_labels) and actual.dtype == states.dtype
    grad = torch.randn_like(expected)
    scales = _term_scales((states, weight, bias), grad, num_labels, dropout_p, training, label_rows, mask)
    assert_relative_close(actual, expected, 1e-5, "logits", scale=scales[0])

    actual_grads = torch.autograd.grad(actual, (states, weight, bias), grad)
    expected_grads = torch.autograd.grad(expected, (states, weight, bias), grad)
    for what, a, e, scale in zip(("hidden states", "weight", "bias"), actual_grads, expected_grads, scales[1:]):
        assert_relative_close(a, e, 1e-5, what, scale=scale)


@needs_triton
@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 6), num_labels=st.integers(1, 40), hidden=st.integers(1, 300), packed=st.booleans(),
       dropout_p=st.sampled_from([0.0, 0.1, 0.9]))
def test_random_shapes_match_the_twin(batch, num_labels, hidden, packed, dropout_p, unwritten_memory_is_nan):
    (states, weight, bias), label_rows = _inputs(batch, num_labels, hidden, packed)
    seed = torch.randint(1 << 20, ()).item()
    torch.manual_seed(seed)
    actual = head.label_head_logits(states, weight, bias, num_labels, dropout_p, True, backend="triton",
                                    label_rows=label_rows)
    torch.manual_seed(seed)
    mask = _kernel_mask(head.draw_dropout_seed(), batch, num_labels, hidden, dropout_p) if dropout_p else None
    expected = head.label_head_logits_torch(states, weight, bias, num_labels, dropout_p, True, label_rows, mask)
    grad = torch.randn_like(expected)
    params = (states, weight, bias)
    scales = _term_scales(params, grad, num_labels, dropout_p, True, label_rows, mask)
    assert_relative_close(actual, expected, 1e-5, "logits", scale=scales[0])
    expected_grads = torch.autograd.grad(expected, params, grad)
    for a, e, scale in zip(torch.autograd.grad(actual, params, grad), expected_grads, scales[1:]):
        assert_relative_close(a, e, 1e-5, scale=scale)


@needs_triton
def test_the_mask_drops_p_and_dropout_preserves_the_mean():
    batch, num_labels, hidden, p = 4, 8, 768, 0.3
    count = batch * num_labels * hidden
    mask = _kernel_mask(head.draw_dropout_seed(), batch, num_labels, hidden, p)
    sigma = math.sqrt(p * (1 - p) / count)
    assert abs((1 - mask.float().mean().item()) - p) < 5 * sigma
    # States of ones and weights 1/H: every logit is the mean of dropout(1) over H elements; over all
    # B*N*H elements the mean is 1 within the binomial tolerance.
    states = torch.ones(batch, num_labels + 1, hidden, device=OP_DEVICE)
    weight = torch.full((1, hidden), 1.0 / hidden, device=OP_DEVICE)
    logits = head.label_head_logits(states, weight, torch.zeros(1, device=OP_DEVICE), num_labels, p, True,
                                    backend="triton")
    assert abs(logits.mean().item() - 1.0) < 5 * sigma / (1 - p)
    assert logits.std() > 0  # a mask was applied


@needs_triton
def test_dropout_follows_torch_manual_seed_and_is_off_in_eval():
    (states, weight, bias), _ = _inputs(3, 4, 64, packed=False)
    run = lambda training, p=0.5: head.label_head_logits(states, weight, bias, 4, p, training, backend="triton")
    torch.manual_seed(7)
    first = run(True)
    torch.manual_seed(7)
    assert torch.equal(run(True), first)
    assert not torch.equal(run(True), first)  # a new seed, a new mask
    plain = head.label_head_logits_torch(states, weight, bias, 4)
    assert_relative_close(run(False), plain, 1e-5, "eval")
    assert_relative_close(run(True, p=0.0), plain, 1e-5, "p = 0")


@needs_triton
def test_custom_ops_pass_opcheck():
    for packed in (False, True):
        (states, weight, bias), label_rows = _inputs(3, 2, 24, packed)
        seed = head.draw_dropout_seed()
        torch.library.opcheck(torch.ops.ltc_fast.label_head.default, (states, weight, bias, label_rows, 2, 0.25, seed))
        torch.library.opcheck(torch.ops.ltc_fast.label_head.default, (states, weight, bias, label_rows, 2, 0.0, None))
        grad = torch.randn(3, 2, device=OP_DEVICE)
        detached = [t.detach() for t in (states, weight, bias)]  # the backward is not differentiable again
        torch.library.opcheck(torch.ops.ltc_fast.label_head_backward.default,
                              (grad, *detached, label_rows, 2, 0.25, seed))


# ---------------------------------------------------------------------------------------------- dispatch
def test_auto_runs_the_twin_on_the_cpu(monkeypatch, kernel_calls):
    monkeypatch.delenv(ENV_VAR, raising=False)
    logits = head.label_head_logits(torch.randn(2, 5, 8), torch.randn(1, 8), torch.randn(1), 3)
    assert logits.shape == (2, 3)
    assert kernel_calls == ["label_head_logits_torch"]


def test_forcing_triton_without_it_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(triton_support, "triton", None)
    with pytest.raises(RuntimeError, match=r"backend='triton'.*triton is not installed"):
        head.label_head_logits(torch.randn(2, 5, 8), torch.randn(1, 8), torch.randn(1), 3, backend="triton")


@needs_triton
def test_forcing_triton_on_cpu_tensors_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(triton_support, "interpreting", lambda: False)
    with pytest.raises(RuntimeError, match=r"backend='triton'.*on the CPU.*TRITON_INTERPRET=1"):
        head.label_head_logits(torch.randn(2, 5, 8), torch.randn(1, 8), torch.randn(1), 3, backend="triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("change,message", [
    (dict(states=torch.randn(2, 3, 8)), r"seq_len >= 4 \(\[CLS\] and 3 labels\).*got shape \[2, 3, 8\]"),
    (dict(states=torch.randn(10, 8)), r"hidden_states must be \[batch_size, seq_len, hidden\]"),
    (dict(weight=torch.randn(8)), r"weight \[1, 8\] and bias \[1\]; got weight \[8\]"),
    (dict(num_labels=0), "num_labels must be a positive int, got 0"),
    (dict(dropout_p=1.5), r"dropout_p must be in \[0, 1\], got 1.5"),
    (dict(label_rows=torch.tensor([[0, 1, 2]])), "with label_rows, hidden_states must be 2-D"),
    (dict(states=torch.randn(10, 8), label_rows=torch.tensor([[0, 1]])), r"label_rows must be int64 \[batch_size, 3\]"),
    (dict(states=torch.randn(10, 8), label_rows=torch.tensor([[0, 1, 10]])),
     r"label_rows must index rows of hidden_states \[0, 10\); got values from 0 to 10"),
])
def test_bad_input_is_reported_before_any_kernel(backend, change, message):
    args = dict(states=torch.randn(2, 5, 8), weight=torch.randn(1, 8), num_labels=3, dropout_p=0.1,
                label_rows=None) | change
    with pytest.raises(ValueError, match=message):
        head.label_head_logits(args["states"], args["weight"], torch.randn(1), args["num_labels"], args["dropout_p"],
                               True, backend=backend, label_rows=args["label_rows"])


@needs_triton
@pytest.mark.parametrize("training", [False, True])
def test_under_autocast_both_backends_return_autocasts_dtype(training):
    """The encoder's LayerNorm output is fp32 under autocast; F.linear (the twin) computes and returns bf16 there,
    and so must the kernel, or the logits' dtype would depend on the backend."""
    (states, weight, bias), _ = _inputs(3, 5, 96, packed=False)
    outputs = {}
    for backend in ("torch", "triton"):
        with torch.autocast(OP_DEVICE, dtype=torch.bfloat16):
            outputs[backend] = head.label_head_logits(states, weight, bias, 5, 0.1, training, backend=backend)
        outputs[backend].float().sum().backward()
    assert outputs["triton"].dtype == outputs["torch"].dtype == torch.bfloat16
    assert states.grad.dtype == torch.float32  # gradients keep the parameters' own dtype
    if not training:
        torch.testing.assert_close(outputs["triton"], outputs["torch"], rtol=2 ** -7, atol=2 ** -7)


# ----------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernel_error_is_at_most_twice_torchs_own(dtype):
    (states, weight, bias), _ = _inputs(5, 28, 768, packed=False)
    grad = torch.randn(5, 28, device="cuda")
    assert_error_at_most_twice_torchs(lambda h, w, b, backend: head.label_head_logits(h, w, b, 28, backend=backend),
                                      (states, weight, bias), grad, dtype)


@pytest.mark.gpu
@needs_triton
def test_cuda_auto_picks_triton(monkeypatch, kernel_calls):
    monkeypatch.delenv(ENV_VAR, raising=False)
    (states, weight, bias), _ = _inputs(2, 3, 64, packed=False)
    head.label_head_logits(states, weight, bias, 3)
    assert kernel_calls == ["ltc_fast::label_head"]
    monkeypatch.setenv(ENV_VAR, "torch")
    head.label_head_logits(states, weight, bias, 3)
    assert kernel_calls == ["ltc_fast::label_head", "label_head_logits_torch"]
