"""The label-embedding injection: the Triton kernel (forced with backend="triton"; on the CPU in Triton's
interpreter) against its plain-PyTorch twin, padded and packed, forward and every gradient, the outputs
allocated NaN-poisoned."""

import pytest
import torch
import torch.utils.deterministic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import OP_DEVICE, assert_error_at_most_twice_torchs, assert_relative_close, needs_triton
from ltc_fast import layout
from ltc_fast.ops import label_embedding as emb
from ltc_fast.ops import triton_support
from ltc_fast.ops.dispatch import ENV_VAR

VOCAB = 37
PAD = 1
# (batch, labels, width): odd B and N, B = 1 and N = 1, widths not powers of two; the wide ones kept tiny
# because the interpreter is slow.
SHAPES = [(1, 1, 64), (3, 5, 64), (5, 3, 96), (1, 2, 384), (2, 1, 768)]


def _tables(num_labels, width, dtype=torch.float32):
    words = torch.randn(VOCAB, width, device=OP_DEVICE, dtype=dtype, requires_grad=True)
    labels = torch.randn(num_labels, width, device=OP_DEVICE, dtype=dtype, requires_grad=True)
    return words, labels


def _text(batch, packed):
    """Text ids with padding ids and repeated ids in them; packed: random lengths 1..7 and int32 offsets."""
    if packed:
        lengths = torch.randint(1, 8, (batch,))
        cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).int()]).to(OP_DEVICE)
        ids = torch.randint(0, VOCAB, (int(lengths.sum()),), device=OP_DEVICE)
    else:
        cu_seqlens = None
        ids = torch.randint(0, VOCAB, (batch, 6), device=OP_DEVICE)
    ids.view(-1)[-1] = PAD  # the padding row is always looked up, so its zero gradient is tested
    ids.view(-1)[0] = 5
    ids.view(-1)[ids.numel() // 2] = 5  # a repeated id: its gradient rows are summed
    return ids, cu_seqlens


@needs_triton
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("batch,num_labels,width", SHAPES)
def test_kernel_matches_the_twin_forward_and_gradients(batch, num_labels, width, packed, unwritten_memory_is_nan):
    """Under `unwritten_memory_is_nan` the kernels' outputs are allocated NaN-filled: the forward must write every
    element with exactly the twin's value (a copy), the label-gradient kernel every element of its `[N, E]`."""
    words, labels = _tables(num_labels, width)
    ids, cu_seqlens = _text(batch, packed)
    expected = emb.inject_label_embeddings_torch(ids, words, labels, PAD, cu_seqlens)
    actual = emb.inject_label_embeddings(ids, words, labels, PAD, backend="triton", cu_seqlens=cu_seqlens)
    assert torch.equal(actual, expected)
    grad = torch.randn_like(expected)
    actual_grads = torch.autograd.grad(actual, (words, labels), grad)
    expected_grads = torch.autograd.grad(expected, (words, labels), grad)
    for what, a, e in zip(("word table", "label table"), actual_grads, expected_grads):
        assert_relative_close(a, e, 1e-5, what)
    assert not actual_grads[0][PAD].any(), "the padding row must get no gradient"
    assert actual_grads[0][5].abs().sum() > 0


@needs_triton
@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 6), num_labels=st.integers(1, 9), width=st.integers(1, 300), packed=st.booleans())
def test_random_shapes_match_the_twin(batch, num_labels, width, packed, unwritten_memory_is_nan):
    words, labels = _tables(num_labels, width)
    ids, cu_seqlens = _text(batch, packed)
    expected = emb.inject_label_embeddings_torch(ids, words, labels, PAD, cu_seqlens)
    actual = emb.inject_label_embeddings(ids, words, labels, PAD, backend="triton", cu_seqlens=cu_seqlens)
    assert torch.equal(actual, expected)
    grad = torch.randn_like(expected)
    params = (words, labels)
    for a, e in zip(torch.autograd.grad(actual, params, grad), torch.autograd.grad(expected, params, grad)):
        assert_relative_close(a, e, 1e-5)


def test_packed_twin_equals_each_sequence_embedded_alone():
    """The packed twin is an oracle too: sequence b sits at rows cu[b] + b*N .. in the padded twin's order."""
    words, labels = _tables(3, 8)
    ids, cu_seqlens = _text(4, packed=True)
    packed = emb.inject_label_embeddings_torch(ids, words, labels, PAD, cu_seqlens)
    offsets = cu_seqlens.tolist()
    assert packed.shape == (offsets[-1] + 4 * 3, 8)
    for b in range(4):
        alone = emb.inject_label_embeddings_torch(ids[None, offsets[b]:offsets[b + 1]], words, labels, PAD)[0]
        start = offsets[b] + b * 3
        assert torch.equal(packed[start:start + alone.shape[0]], alone)
    assert torch.equal(packed[layout.packed_label_rows(cu_seqlens, 3)], labels.expand(4, 3, 8))


@needs_triton
def test_backward_is_deterministic():
    words, labels = _tables(4, 64)
    ids, cu_seqlens = _text(5, packed=True)
    out = emb.inject_label_embeddings(ids, words, labels, PAD, backend="triton", cu_seqlens=cu_seqlens)
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, (words, labels), grad, retain_graph=True)
    second = torch.autograd.grad(out, (words, labels), grad)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@needs_triton
def test_custom_ops_pass_opcheck():
    words, labels = _tables(2, 24)
    for packed in (False, True):
        ids, cu_seqlens = _text(3, packed)
        torch.library.opcheck(torch.ops.ltc_fast.inject_label_embeddings.default, (ids, cu_seqlens, words, labels, PAD))
        grad = torch.randn_like(emb.inject_label_embeddings_torch(ids, words, labels, PAD, cu_seqlens))
        torch.library.opcheck(torch.ops.ltc_fast.inject_label_embeddings_label_grad.default, (grad, cu_seqlens, 2))


# ---------------------------------------------------------------------------------------------- dispatch
def test_auto_runs_the_twin_on_the_cpu(monkeypatch, kernel_calls):
    monkeypatch.delenv(ENV_VAR, raising=False)
    words, labels = _tables(2, 8)
    ids = torch.randint(0, VOCAB, (2, 4))
    out = emb.inject_label_embeddings(ids, words.cpu(), labels.cpu(), PAD)
    assert out.shape == (2, 6, 8)
    assert kernel_calls == ["inject_label_embeddings_torch"]


def test_forcing_triton_without_it_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(triton_support, "triton", None)
    ids = torch.randint(0, VOCAB, (2, 4))
    with pytest.raises(RuntimeError, match=r"backend='triton'.*triton is not installed"):
        emb.inject_label_embeddings(ids, torch.randn(VOCAB, 8), torch.randn(2, 8), backend="triton")


@needs_triton
def test_forcing_triton_on_cpu_tensors_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(triton_support, "interpreting", lambda: False)
    ids = torch.randint(0, VOCAB, (2, 4))
    with pytest.raises(RuntimeError, match=r"backend='triton'.*on the CPU.*TRITON_INTERPRET=1"):
        emb.inject_label_embeddings(ids, torch.randn(VOCAB, 8), torch.randn(2, 8), backend="triton")


@needs_triton
@pytest.mark.parametrize("bad_id", [-1, VOCAB, 10**9])
def test_unchecked_out_of_table_ids_give_nan_rows_not_other_memory(bad_id):
    """check_values=False (a caller that checked the ids, or torch.compile) skips the host read; an id outside
    the table must then neither read another row nor memory past the table: its row is NaN, the rest exact."""
    words, labels = torch.randn(VOCAB, 8, device=OP_DEVICE), torch.randn(2, 8, device=OP_DEVICE)
    ids = torch.tensor([[0, 5, bad_id, 7]], device=OP_DEVICE)
    out = emb.inject_label_embeddings(ids, words, labels, backend="triton", check_values=False)
    good = emb.inject_label_embeddings(ids.clamp(0, VOCAB - 1), words, labels, backend="torch")
    bad_row = 2 + labels.shape[0]  # [CLS], the two label rows, then the text
    assert out[0, bad_row].isnan().all()
    keep = [row for row in range(out.shape[1]) if row != bad_row]
    torch.testing.assert_close(out[:, keep], good[:, keep], rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("change,message", [
    (dict(ids=torch.tensor([[0, 1, VOCAB]])), r"text_ids must lie in \[0, 37\).*0 to 37"),
    (dict(ids=torch.tensor([[0.0, 1.0]])), "text_ids must be an integer tensor"),
    (dict(ids=torch.tensor([0, 1, 2])), r"text_ids must be \[batch_size, seq_len\].*got shape \[3\]"),
    (dict(labels=torch.randn(2, 7)), "label_embeddings must match word_embeddings' width and dtype"),
    (dict(labels=torch.randn(2, 8, dtype=torch.float64)), "label_embeddings must match"),
    (dict(ids=torch.tensor([0, 1, 2]), cu_seqlens=torch.tensor([0, 2, 2], dtype=torch.int32)),
     r"cu_seqlens must rise from 0 to len\(text_ids\) = 3 .*got \[0, 2, 2\]"),
    (dict(ids=torch.tensor([0, 1, 2]), cu_seqlens=torch.tensor([0, 1.0, 3])), "cu_seqlens must be int32 or int64"),
    (dict(ids=torch.tensor([[0, 1]]), cu_seqlens=torch.tensor([0, 2])), "with cu_seqlens, text_ids must be 1-D"),
])
def test_bad_input_is_reported_before_any_kernel(backend, change, message):
    args = dict(ids=torch.tensor([[0, 1, 2]]), labels=torch.randn(2, 8), cu_seqlens=None) | change
    with pytest.raises(ValueError, match=message):
        emb.inject_label_embeddings(args["ids"], torch.randn(VOCAB, 8), args["labels"], backend=backend,
                                    cu_seqlens=args["cu_seqlens"])


# ----------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernel_error_is_at_most_twice_torchs_own(dtype):
    words, labels = _tables(28, 768)
    ids, _ = _text(5, packed=False)
    grad = torch.randn(5, 6 + 28, 768, device="cuda")
    inject = lambda w, l, backend: emb.inject_label_embeddings(ids, w, l, PAD, backend=backend)  # noqa: E731
    assert_error_at_most_twice_torchs(inject, (words, labels), grad, dtype)


@pytest.mark.gpu
@needs_triton
def test_cuda_auto_picks_triton(monkeypatch, kernel_calls):
    monkeypatch.delenv(ENV_VAR, raising=False)
    words, labels = _tables(3, 64)
    emb.inject_label_embeddings(torch.randint(0, VOCAB, (2, 5), device="cuda"), words, labels, PAD)
    assert kernel_calls == ["ltc_fast::inject_label_embeddings"]
    monkeypatch.setenv(ENV_VAR, "torch")
    emb.inject_label_embeddings(torch.randint(0, VOCAB, (2, 5), device="cuda"), words, labels, PAD)
    assert kernel_calls == ["ltc_fast::inject_label_embeddings", "inject_label_embeddings_torch"]
