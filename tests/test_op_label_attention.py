"""Decoupled label attention: the Triton kernel (forced with backend="triton"; on the CPU in Triton's interpreter)
against its plain-PyTorch twin under the accuracy rule, forward and all five gradients, with padding, with and
without dropout (the twin given the kernel's mask), on odd shapes, the outputs allocated NaN-poisoned."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ltc_fast.ops import label_attention as attention
from ltc_fast.ops import triton_support
from ltc_fast.ops.dispatch import ENV_VAR
from tests.helpers import OP_DEVICE, AccuracyRuleSamples, draws_for, needs_triton

# (batch, heads, labels, text_len, head_size): B = 1, N = 1, one text key, head sizes that are not powers of two,
# label rows and text keys spanning several tiles, a text shorter than a tile, and no text at all; in fp32, and a
# wide head in fp16 (its own tiles; the interpreter's bf16 matmul is broken, bf16 is checked on a GPU).
SHAPES = [((1, 1, 1, 1, 16), torch.float32), ((3, 2, 5, 9, 24), torch.float32), ((2, 3, 70, 130, 40), torch.float32),
          ((1, 2, 3, 0, 8), torch.float32), ((2, 1, 1, 67, 60), torch.float32), ((2, 2, 20, 67, 96), torch.float16)]
NAMES = ("query", "text keys", "text values", "self keys", "self values")


def _inputs(batch, heads, num_labels, text_len, head_size, generator, dtype=torch.float64):
    """The five tensors (fp64, to be cast) and a key padding with a text of no real token where there are two."""
    def draw(rows):
        return torch.randn(batch, heads, rows, head_size, generator=generator, dtype=dtype).to(OP_DEVICE)

    tensors = [draw(num_labels), draw(text_len), draw(text_len), draw(num_labels), draw(num_labels)]
    lengths = torch.randint(0, text_len + 1, (batch,), generator=generator)
    lengths[0] = text_len  # one text fills the batch's width
    if batch > 1:
        lengths[-1] = 0  # and one is all padding: its labels attend only themselves
    key_padding = (torch.arange(text_len)[None, :] < lengths[:, None]).to(OP_DEVICE)
    return tensors, key_padding


def _op(key_padding, scale, dropout_p=0.0, training=False):
    return lambda *tensors, backend: attention.labels_attend_text(*tensors, key_padding, scale, dropout_p, training,
                                                               backend=backend)


def _outputs_and_gradients(run, tensors, grad):
    out = run(tensors)
    return (out, *torch.autograd.grad(out, tensors, grad.to(out.dtype)))


def _add_draw(samples, shape, generator, dropout_p=0.0, dtype=torch.float32, query_factor=1.0):
    """One draw of inputs: the kernel's output and five gradients against the twin in `dtype` (the plain path)
    and in fp64 (the oracle). With dropout, the twin takes the mask the kernel drew (recomputed from its seed):
    it gives the same numbers only if the forward and both backward kernels used that mask, the self key's
    entry included."""
    batch, heads, num_labels, text_len, head_size = shape
    tensors, key_padding = _inputs(*shape, generator)
    tensors[0] = tensors[0] * query_factor
    grad = torch.randn(batch, num_labels, heads, head_size, generator=generator).to(OP_DEVICE)
    scale, seed = head_size ** -0.5, int(torch.randint(2**31 - 1, (), generator=generator))
    mask = None
    if dropout_p:
        torch.manual_seed(seed)
        mask = attention.attention_keep_mask(attention.draw_dropout_seed(), batch, heads, num_labels, text_len,
                                             dropout_p, OP_DEVICE)

    def twin(inputs):
        return attention.labels_attend_text_torch(*inputs, key_padding, scale, dropout_p, True, keep_mask=mask)

    def kernel(inputs):
        torch.manual_seed(seed)
        return attention.labels_attend_text(*inputs, key_padding, scale, dropout_p, True, backend="triton")

    low = [t.detach().to(dtype).requires_grad_() for t in tensors]
    exact = _outputs_and_gradients(twin, [t.detach().requires_grad_() for t in tensors], grad)
    for name, a, b, e in zip(("output",) + NAMES, _outputs_and_gradients(kernel, low, grad),
                             _outputs_and_gradients(twin, low, grad), exact):
        samples.add(name, a, b, e, part=f"shape {shape}")


def _check_rule(shape, seed, dropout_p=0.0, dtype=torch.float32, query_factor=1.0):
    """The accuracy rule over enough draws that every comparison pools RULE_VALUES label rows: each row's
    self-key gradient is one number (its dS) times its query, so a single small draw would hold a max of a
    handful of independent errors."""
    generator = torch.Generator().manual_seed(seed)
    samples = AccuracyRuleSamples()
    batch, heads, num_labels = shape[:3]
    for _ in range(draws_for(batch * heads * num_labels)):
        _add_draw(samples, shape, generator, dropout_p, dtype, query_factor)
    samples.check(dtype)


@needs_triton
@pytest.mark.parametrize("shape,dtype", SHAPES, ids=[f"{s}-{str(d)[6:]}" for s, d in SHAPES])
def test_kernel_follows_the_accuracy_rule_forward_and_gradients(shape, dtype, fresh_seed, unwritten_memory_is_nan):
    _check_rule(shape, fresh_seed, dtype=dtype)


@needs_triton
@pytest.mark.parametrize("shape", [(3, 2, 5, 9, 24), (2, 1, 70, 67, 40)], ids=str)
def test_dropout_kernel_equals_the_twin_with_its_mask(shape, fresh_seed, unwritten_memory_is_nan):
    _check_rule(shape, fresh_seed, dropout_p=0.3)


@needs_triton
def test_the_mask_drops_p_of_the_weights_and_follows_torch_manual_seed():
    batch, heads, num_labels, text_len, p = 2, 3, 40, 100, 0.3
    mask = attention.attention_keep_mask(attention.draw_dropout_seed(), batch, heads, num_labels, text_len, p,
                                         OP_DEVICE)
    count = mask.numel()
    sigma = (p * (1 - p) / count) ** 0.5
    assert abs((1 - mask.float().mean().item()) - p) < 5 * sigma
    assert abs((1 - mask[..., -1].float().mean().item()) - p) < 5 * (p * (1 - p) / mask[..., -1].numel()) ** 0.5
    tensors, key_padding = _inputs(batch, heads, num_labels, text_len, 16, torch.Generator().manual_seed(3),
                                   torch.float32)
    run = _op(key_padding, 0.25, p, training=True)
    torch.manual_seed(7)
    first = run(*tensors, backend="triton")
    torch.manual_seed(7)
    assert torch.equal(run(*tensors, backend="triton"), first)
    assert not torch.equal(run(*tensors, backend="triton"), first)  # a new seed, a new mask


@needs_triton
def test_dropout_is_off_in_eval_and_at_zero():
    tensors, key_padding = _inputs(2, 2, 5, 11, 24, torch.Generator().manual_seed(4), torch.float32)
    plain = attention.labels_attend_text_torch(*tensors, key_padding, 0.2)
    for p, training in ((0.5, False), (0.0, True)):
        torch.testing.assert_close(_op(key_padding, 0.2, p, training)(*tensors, backend="triton"), plain)


@needs_triton
def test_padding_keys_get_no_gradient_and_a_text_of_padding_leaves_each_label_itself(unwritten_memory_is_nan):
    tensors, key_padding = _inputs(3, 2, 4, 10, 16, torch.Generator().manual_seed(5), torch.float32)
    tensors = [t.requires_grad_() for t in tensors]
    out = attention.labels_attend_text(*tensors, key_padding, 0.25, backend="triton")
    grads = torch.autograd.grad(out, tensors, torch.randn_like(out))
    padding = ~key_padding[:, None, :, None].expand_as(grads[1])
    assert torch.equal(grads[1][padding], torch.zeros_like(grads[1][padding]))
    assert torch.equal(grads[2][padding], torch.zeros_like(grads[2][padding]))
    # The last text is all padding: its labels' outputs are their own values, exactly (one weight of 1).
    assert torch.equal(out[-1], tensors[4][-1].transpose(0, 1))


@needs_triton
@settings(max_examples=10, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 3), heads=st.integers(1, 3), num_labels=st.integers(1, 70),
       text_len=st.integers(0, 80), head_size=st.integers(1, 64), seed=st.integers(0, 2**16))
def test_random_shapes_follow_the_accuracy_rule(batch, heads, num_labels, text_len, head_size, seed,
                                               unwritten_memory_is_nan):
    _check_rule((batch, heads, num_labels, text_len, head_size), seed)


@needs_triton
def test_custom_ops_pass_opcheck():
    tensors, key_padding = _inputs(2, 2, 3, 5, 16, torch.Generator().manual_seed(6), torch.float32)
    tensors = [t.requires_grad_() for t in tensors]
    seed = attention.draw_dropout_seed()
    for p, s in ((0.25, seed), (0.0, None)):
        torch.library.opcheck(torch.ops.ltc_fast.label_attention.default, (*tensors, key_padding, 0.25, p, s))
    out, stats = torch.ops.ltc_fast.label_attention.default(*tensors, key_padding, 0.25, 0.25, seed)
    detached = [t.detach() for t in (stats, *tensors)]  # the backward is not differentiable again
    torch.library.opcheck(torch.ops.ltc_fast.label_attention_backward.default,
                          (torch.randn_like(out), *detached, key_padding, 0.25, 0.25, seed))


@needs_triton
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_compiles_without_graph_breaks_forward_and_backward(dropout_p, fresh_seed):
    """torch.compile(fullgraph=True) traces the custom op (the decoupled model's label passes compile whole); the
    compiled function computes what eager does, with the same dropout mask for the same torch seed."""
    tensors, key_padding = _inputs(2, 2, 5, 9, 16, torch.Generator().manual_seed(fresh_seed), torch.float32)
    tensors = [t.requires_grad_() for t in tensors]

    def attend(*inputs):
        return attention.labels_attend_text(*inputs, key_padding, 0.25, dropout_p, True, backend="triton")

    torch._dynamo.reset()
    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    results = []
    for function in (attend, compiled):
        torch.manual_seed(fresh_seed)
        out = function(*tensors)
        results.append((out, *torch.autograd.grad(out.square().sum(), tensors)))
    torch._dynamo.reset()
    for eager, traced in zip(*results):
        torch.testing.assert_close(traced, eager, rtol=0, atol=0)


@needs_triton
def test_views_with_a_contiguous_last_dimension_are_read_in_place():
    """The encoder hands `[B, S, heads, d]` projections transposed to `[B, heads, S, d]`: the kernel reads them
    through their strides, with the same result as from contiguous copies."""
    tensors, key_padding = _inputs(2, 3, 5, 9, 16, torch.Generator().manual_seed(8), torch.float32)
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in tensors]
    assert not views[0].is_contiguous()
    torch.testing.assert_close(attention.labels_attend_text(*views, key_padding, 0.25, backend="triton"),
                               attention.labels_attend_text(*tensors, key_padding, 0.25, backend="triton"),
                               rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- dispatch
def test_auto_runs_the_twin_on_the_cpu(monkeypatch, kernel_calls):
    monkeypatch.delenv(ENV_VAR, raising=False)
    tensors, key_padding = _inputs(2, 1, 3, 4, 8, torch.Generator().manual_seed(0), torch.float32)
    assert attention.labels_attend_text(*tensors, key_padding, 0.3).shape == (2, 3, 1, 8)
    assert kernel_calls == ["labels_attend_text_torch"]


@needs_triton
def test_a_local_window_runs_the_twin_and_cannot_be_forced_onto_the_kernel():
    tensors, key_padding = _inputs(2, 1, 3, 4, 8, torch.Generator().manual_seed(0), torch.float32)
    window = torch.ones(2, 3, 4, dtype=torch.bool)
    window[:, :, -1] = False
    windowed = attention.labels_attend_text(*tensors, key_padding, 0.3, text_visible=window)
    torch.testing.assert_close(windowed, attention.labels_attend_text_torch(*tensors, key_padding & window[:, 0], 0.3))
    with pytest.raises(RuntimeError, match=r"backend='triton'.*local attention window"):
        attention.labels_attend_text(*tensors, key_padding, 0.3, backend="triton", text_visible=window)


@needs_triton
def test_heads_wider_than_the_tiles_run_the_twin(monkeypatch, kernel_calls):
    monkeypatch.setattr(attention, "triton_applies", lambda requested, *tensors: (True, ""))  # as on CUDA
    tensors, key_padding = _inputs(1, 1, 2, 3, 72, torch.Generator().manual_seed(0), torch.float32)
    attention.labels_attend_text(*tensors, key_padding, 0.3)
    assert kernel_calls == ["labels_attend_text_torch"]
    with pytest.raises(RuntimeError, match=r"takes torch.float32 head sizes up to 64, got 72"):
        attention.labels_attend_text(*tensors, key_padding, 0.3, backend="triton")


def test_forcing_triton_without_it_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(triton_support, "triton", None)
    tensors, key_padding = _inputs(1, 1, 2, 3, 8, torch.Generator().manual_seed(0), torch.float32)
    with pytest.raises(RuntimeError, match=r"backend='triton'.*triton is not installed"):
        attention.labels_attend_text(*tensors, key_padding, 0.3, backend="triton")


def _changed(which: int, new: torch.Tensor):
    tensors, key_padding = _inputs(2, 3, 4, 5, 8, torch.Generator().manual_seed(0), torch.float32)
    tensors[which] = new
    return tensors, key_padding


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("which,new,message", [
    (0, torch.randn(2, 4, 8), r"query must be a 4-D floating-point tensor .*got torch.float32 \[2, 4, 8\]"),
    (1, torch.randint(0, 3, (2, 3, 5, 8)), r"text_keys must be a 4-D floating-point tensor"),
    (2, torch.randn(2, 3, 6, 8), r"text_values must have shape \[2, 3, 5, 8\] .*got \[2, 3, 6, 8\]"),
    (3, torch.randn(2, 3, 4, 7), r"self_keys must have shape \[2, 3, 4, 8\]"),
    (4, torch.randn(2, 3, 4, 8, dtype=torch.float64), r"self_values must be torch.float32 on cpu like query, got "
                                                      r"torch.float64"),
])
def test_bad_tensors_are_named_before_any_kernel(backend, which, new, message):
    tensors, key_padding = _changed(which, new)
    with pytest.raises(ValueError, match=message):
        attention.labels_attend_text(*tensors, key_padding, 0.3, backend=backend)


@pytest.mark.parametrize("key_padding,message", [
    (torch.ones(2, 5), r"key_padding must be bool \[2, 5\] on cpu .*got torch.float32 \[2, 5\]"),
    (torch.ones(2, 4, dtype=torch.bool), r"key_padding must be bool \[2, 5\].*got torch.bool \[2, 4\]"),
])
def test_a_bad_key_padding_is_named(key_padding, message):
    tensors, _ = _changed(0, _inputs(2, 3, 4, 5, 8, torch.Generator().manual_seed(0), torch.float32)[0][0])
    with pytest.raises(ValueError, match=message):
        attention.labels_attend_text(*tensors, key_padding, 0.3)


def test_a_bad_dropout_or_window_is_named():
    tensors, key_padding = _inputs(2, 3, 4, 5, 8, torch.Generator().manual_seed(0), torch.float32)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\], got 1.5"):
        attention.labels_attend_text(*tensors, key_padding, 0.3, 1.5)
    with pytest.raises(ValueError, match=r"text_visible must be bool \[2, 4, 5\], got torch.bool \[2, 5\]"):
        attention.labels_attend_text(*tensors, key_padding, 0.3, text_visible=key_padding)


# ----------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(4, 12, 28, 57, 64), (2, 12, 700, 130, 64), (1, 4, 33, 300, 128)], ids=str)
def test_cuda_kernel_error_is_at_most_twice_torchs_own(dtype, shape):
    _check_rule(shape, 11, dtype=dtype)


@pytest.mark.gpu
@needs_triton
def test_cuda_auto_picks_triton(monkeypatch, kernel_calls):
    monkeypatch.delenv(ENV_VAR, raising=False)
    tensors, key_padding = _inputs(2, 2, 3, 5, 16, torch.Generator().manual_seed(0), torch.float32)
    attention.labels_attend_text(*tensors, key_padding, 0.25)
    assert kernel_calls == ["ltc_fast::label_attention"]
    monkeypatch.setenv(ENV_VAR, "torch")
    attention.labels_attend_text(*tensors, key_padding, 0.25)
    assert kernel_calls == ["ltc_fast::label_attention", "labels_attend_text_torch"]


@needs_triton
def test_extreme_scores_stay_finite_and_follow_the_rule(unwritten_memory_is_nan):
    """Scores in the hundreds (a saturated attention, one key taking all the weight): no overflow in the online
    softmax's rescaling, and the same rule as on ordinary scores."""
    tensors, key_padding = _inputs(2, 2, 6, 70, 16, torch.Generator().manual_seed(9), torch.float32)
    out = attention.labels_attend_text(tensors[0] * 300, *tensors[1:], key_padding, 0.25, backend="triton")
    assert torch.isfinite(out).all()
    _check_rule((2, 2, 6, 70, 16), 9, query_factor=300.0)
