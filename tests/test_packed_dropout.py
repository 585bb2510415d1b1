"""Packed attention with dropout (training) on CUDA: SDPA over nested jagged tensors, one call for the whole batch
where torch's varlen_attn (no dropout) cannot serve and the per-sequence loop is slow. Evidence that it is the
same function: without dropout it equals the exact per-sequence loop; with dropout its outputs have the padded
path's mean and spread."""

import pytest
import torch

from ltc_fast import attention
from ltc_fast import AutoModelForTokenSequenceClassification, LtcConfig
from tests.helpers import encoder_config, label_names, random_targets, text_batch

LENGTHS, HEADS, DIM = [3, 1, 6], 2, 7  # B = 3 with a length-1 sequence; head size not a power of two


def _packed_inputs(dtype=torch.float32, requires_grad=False):
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(1, HEADS, sum(LENGTHS), DIM, dtype=dtype, requires_grad=requires_grad) for _ in range(3))
    return (q, k, v), attention.PackedSequences(cu, max(LENGTHS), cu.tolist())


def _per_sequence(q, k, v, packed, dropout):
    """The twin: SDPA on each sequence alone (what a padded batch with a key-padding mask computes)."""
    bounds = packed.host_offsets
    return torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], dropout_p=dropout, scale=DIM ** -0.5)
        for a, b in zip(bounds[:-1], bounds[1:])], dim=2).transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_without_dropout_it_equals_the_per_sequence_loop(dtype):
    (q, k, v), packed = _packed_inputs(dtype, requires_grad=True)
    got = attention.nested_sdpa(q, k, v, packed, 0.0, DIM ** -0.5)
    want = _per_sequence(q, k, v, packed, 0.0)
    torch.testing.assert_close(got, want, rtol=0, atol=4 * torch.finfo(dtype).eps)
    upstream = torch.randn_like(want)
    for got_grad, want_grad in zip(torch.autograd.grad(got, (q, k, v), upstream),
                                   torch.autograd.grad(want, (q, k, v), upstream)):
        torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=8 * torch.finfo(dtype).eps)


@pytest.mark.slow
def test_with_dropout_it_has_the_padded_paths_distribution():
    """Over 1500 draws each: the mean output is the dropout-free output (dropout is unbiased) for both, and the
    spread of each output element matches the per-sequence SDPA's within 10% on average."""
    (q, k, v), packed = _packed_inputs(torch.float64)
    draws, p = 1500, 0.3
    exact = _per_sequence(q, k, v, packed, 0.0)
    nested = torch.stack([attention.nested_sdpa(q, k, v, packed, p, DIM ** -0.5) for _ in range(draws)])
    padded = torch.stack([_per_sequence(q, k, v, packed, p) for _ in range(draws)])
    for samples in (nested, padded):
        standard_error = samples.std(0) / draws ** 0.5
        assert ((samples.mean(0) - exact).abs() <= 5 * standard_error + 1e-12).all()
    ratio = nested.var(0).mean() / padded.var(0).mean()
    assert 0.9 < ratio < 1.1, ratio
    assert not torch.equal(nested[0], nested[1])  # dropout really draws


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_packed_training_step_with_dropout_takes_the_nested_path_on_cuda(device, monkeypatch):
    """On CUDA the nested path; on the CPU the per-sequence loop, which is faster there."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = AutoModelForTokenSequenceClassification(LtcConfig(encoder=encoder_config("bert"),
                                                              label_names=label_names(4), sequence_packing="packed"))
    model.to(device).train()
    calls = []
    real = attention.nested_sdpa
    monkeypatch.setattr(attention, "nested_sdpa", lambda *args: calls.append(args[4]) or real(*args))
    ids, mask = (t.to(device) for t in text_batch(3, 9, pad_id=0))
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        loss = model(ids, mask, labels=random_targets("multi_label_classification", 3, 4).to(device)).loss
    loss.backward()
    dropout = model.config.encoder.attention_probs_dropout_prob
    expected = [dropout] * model.config.encoder.num_hidden_layers if device == "cuda" else []
    assert dropout > 0 and calls == expected
    assert loss.isfinite()
