"""Packed (unpadded) execution: one sequence with offsets, no pad token in any matmul, same function as the
padded path: logits, hidden states and every gradient, held to the accuracy rule (tests/helpers.py) with the
padded path in fp64 the oracle and in fp32 the plain path."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import ltc_fast
from ltc_fast import attention, layout
from ltc_fast.encoders import modes_supported

from tests.helpers import (FLOAT_DTYPES, GRADIENT_DRAWS, AccuracyRuleSamples, assert_within_accuracy_rule,
                           draws_for, encoder_config, extended, fp64_copy, from_extended, label_names,
                           random_targets, text_batch)

Model = ltc_fast.AutoModelForTokenSequenceClassification


def padded_and_packed(arch, num_labels, problem_type="multi_label_classification", **options):
    config = ltc_fast.LtcConfig(encoder=encoder_config(arch), label_names=label_names(num_labels),
                                problem_type=problem_type, sequence_packing="padded", **options)
    padded = Model(config)
    packed = copy.deepcopy(padded)
    packed.config.sequence_packing = "packed"
    return padded, packed


@pytest.mark.parametrize("arch", modes_supported())
@pytest.mark.parametrize("batch_size,num_labels", [(1, 1), (3, 5), (4, 28)])
@pytest.mark.parametrize("label_positions", ["reference", "shared"])
def test_packed_equals_padded(arch, batch_size, num_labels, label_positions):
    """Logits pooled over draws (at least RULE_VALUES values), every parameter's gradient as one vector over
    GRADIENT_DRAWS draws."""
    problem_type = "single_label_classification" if num_labels == 5 else "multi_label_classification"
    padded, packed = padded_and_packed(arch, num_labels, problem_type, label_positions=label_positions)
    pad_id = padded.config.encoder.pad_token_id
    for model in (padded, packed):
        model.train()  # dropout probabilities are zeroed below, so train mode only adds autograd
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.config.label_head_dropout = 0.0
    oracle = fp64_copy(padded)
    samples = AccuracyRuleSamples()
    for draw in range(draws_for(batch_size * num_labels, at_least=GRADIENT_DRAWS)):
        ids, mask = text_batch(batch_size, 11, pad_id)
        targets = random_targets(problem_type, batch_size, num_labels)
        with_gradients = draw < GRADIENT_DRAWS
        outputs = {}
        for name, model in (("padded", padded), ("packed", packed), ("oracle", oracle)):
            model.zero_grad(set_to_none=True)
            with torch.set_grad_enabled(with_gradients):
                out = model(ids, mask, labels=targets)
            if with_gradients:
                out.loss.backward()
            outputs[name] = (out.logits.detach(), {k: p.grad for k, p in model.named_parameters()})
        samples.add("logits", outputs["packed"][0], outputs["padded"][0], outputs["oracle"][0])
        if not with_gradients:
            continue
        (_, grads_packed), (_, grads_padded), (_, grads_exact) = (outputs[k] for k in ("packed", "padded", "oracle"))
        for name, grad in grads_padded.items():
            if grad is None:
                assert grads_packed[name] is None, name
                continue
            samples.add("gradient", grads_packed[name], grad, grads_exact[name], part=name)
    samples.check()


def test_packed_hidden_states_are_the_padded_ones_at_real_tokens():
    padded, packed = padded_and_packed("roberta", 4)
    padded.eval(), packed.eval()
    ids, mask = text_batch(3, 9, padded.config.encoder.pad_token_id)
    with torch.no_grad():
        want = padded(ids, mask, output_hidden_states=True).hidden_states
        exact = fp64_copy(padded)(ids, mask, output_hidden_states=True).hidden_states
        got = packed(ids, mask, output_hidden_states=True).hidden_states
    real = layout.insert_label_slots(mask, 4, 1).bool()
    assert len(got) == len(want)
    for layer, (g, w, e) in enumerate(zip(got, want, exact)):
        assert_within_accuracy_rule(g[real], w[real], e[real], f"hidden state {layer}")
        assert (g[~real] == 0).all()


def test_no_pad_token_reaches_attention(monkeypatch):
    """The attention calls of a packed batch see exactly the real tokens: total = sum of lengths."""
    _, packed = padded_and_packed("bert", 3)
    seen = []
    real_varlen = attention._varlen_attention

    def spy(query, key, value, packed_sequences, *rest):
        seen.append((query.shape[2], packed_sequences.cu_seqlens.tolist()))
        return real_varlen(query, key, value, packed_sequences, *rest)

    monkeypatch.setattr(attention, "_varlen_attention", spy)
    ids, mask = text_batch(3, 10, 0)
    packed.eval()(ids, mask)
    lengths = (mask.sum(1) + 3).tolist()
    assert seen and all(total == sum(lengths) for total, _ in seen)
    assert seen[0][1] == [0, *torch.tensor(lengths).cumsum(0).tolist()]


def test_auto_packs_only_where_it_pays(monkeypatch):
    """On the CPU, `auto` keeps the padded SDPA path (the per-sequence loop is the fallback, not a speed-up)."""
    model = Model(ltc_fast.LtcConfig(encoder=encoder_config("bert"), num_labels=2)).eval()
    calls = []
    monkeypatch.setattr(attention, "_varlen_attention", lambda *a: calls.append(1))
    ids, mask = text_batch(3, 8, 0)
    model(ids, mask)
    assert not calls
    assert model.config.sequence_packing == "auto"


@pytest.mark.parametrize("device,dtype,dropout,head_size,flash,torch_varlen,expected", [
    ("cuda", torch.bfloat16, 0.0, 64, False, True, True),  # torch's varlen_attn
    ("cuda", torch.bfloat16, 0.0, 12, False, True, True),  # a head of 12 is padded to 16 for varlen_attn
    ("cuda", torch.bfloat16, 0.0, 64, False, False, False),  # torch < 2.10: no varlen_attn with scale=
    ("cuda", torch.float16, 0.1, 64, True, True, True),  # flash-attn has dropout
    ("cuda", torch.bfloat16, 0.1, 64, False, True, False),  # varlen_attn has none: the per-sequence loop
    ("cuda", torch.bfloat16, 0.0, 320, True, True, False),  # heads over 256: neither kernel
    ("cuda", torch.float32, 0.0, 64, True, True, False),  # fused kernels are half precision only
    ("cpu", torch.bfloat16, 0.0, 64, True, True, False),
])
def test_a_fused_varlen_kernel_runs_only_where_one_takes_the_call(monkeypatch, device, dtype, dropout, head_size,
                                                                  flash, torch_varlen, expected):
    monkeypatch.setattr(attention, "flash_attn_varlen", lambda: object() if flash else None)
    monkeypatch.setattr(attention, "torch_varlen_attn", lambda: object() if torch_varlen else None)
    assert attention.fused_varlen_runs(torch.device(device), dtype, dropout, head_size) is expected


@pytest.mark.parametrize("dtype,dropout,head_size,flash,expected", [
    (torch.bfloat16, 0.1, 64, False, True),  # training without flash-attn: nested SDPA takes the dropout
    (torch.float16, 0.1, 64, True, True),  # flash-attn's varlen kernel
    (torch.bfloat16, 0.0, 64, False, True),  # torch's varlen_attn
    (torch.bfloat16, 0.1, 12, False, False),  # nested SDPA would take its math path: stay padded
    (torch.float32, 0.1, 64, False, False),
])
def test_auto_packs_where_the_packed_attention_runs_fused(monkeypatch, dtype, dropout, head_size, flash, expected):
    monkeypatch.setattr(attention, "flash_attn_varlen", lambda: object() if flash else None)
    assert attention.packed_attention_is_fused(torch.device("cuda"), dtype, dropout, head_size) is expected
    assert not attention.packed_attention_is_fused(torch.device("cpu"), dtype, dropout, head_size)


@pytest.mark.parametrize("dropout,grad,expected", [(0.0, False, True), (0.0, True, False), (0.1, True, False)])
def test_auto_packs_cpu_inference_only(dropout, grad, expected):
    """Measured: CPU prediction packed beat padded (docs/benchmarks.md); CPU training is not measured."""
    assert attention.packing_pays(torch.device("cpu"), torch.float32, dropout, 64, grad) is expected


def test_this_torch_has_varlen_attn_with_scale():
    """torch >= 2.10 (the CI pin, and the GPU machine's 2.11) has it; older torch gets None and the loop."""
    assert attention.torch_varlen_attn() is not None


def test_auto_asks_about_the_attention_dtype_and_dropout_of_this_call(monkeypatch):
    """`auto` packs where packing pays for what attention will compute: the model's dtype (autocast's when on),
    the encoder's attention dropout in training only, its head size, and whether gradients are recorded."""
    model = Model(ltc_fast.LtcConfig(encoder=encoder_config("bert", attention_probs_dropout_prob=0.25),
                                     num_labels=2))
    asked = []
    monkeypatch.setattr(attention, "packing_pays", lambda *args: asked.append(args) or False)
    ids, mask = text_batch(3, 8, 0)
    model.train()(ids, mask)
    with torch.no_grad():
        model.eval()(ids, mask)
    assert asked == [(torch.device("cpu"), torch.float32, 0.25, 12, True),
                     (torch.device("cpu"), torch.float32, 0.0, 12, False)]


def test_torch_varlen_attn_gets_heads_padded_to_a_multiple_of_8(monkeypatch):
    """varlen_attn refuses head sizes that are not a multiple of 8 (the tiny test encoders have 12): the heads
    are zero-padded for it, with the real size's scale, and the output cut back. Checked on the CPU with a
    stand-in that enforces varlen_attn's contract and computes it exactly."""
    received = []

    def varlen_attn_contract(q, k, v, cu_q, cu_k, max_q, max_k, *, scale):
        received.append(q.shape[-1])
        assert q.shape[-1] % 8 == 0 and q.shape[-1] <= 256, q.shape
        bounds = cu_q.tolist()
        return torch.cat([torch.nn.functional.scaled_dot_product_attention(
            *(t[a:b].transpose(0, 1) for t in (q, k, v)), scale=scale).transpose(0, 1)
            for a, b in zip(bounds[:-1], bounds[1:])])

    lengths, heads, dim = [5, 1, 8], 3, 12
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(1, heads, sum(lengths), dim, requires_grad=True) for _ in range(3))
    packed = attention.PackedSequences(cu, max(lengths), cu.tolist())

    def loop(q, k, v):  # the per-sequence loop (CPU): in fp32 the plain path, in fp64 the oracle
        out = attention._varlen_attention(q, k, v, packed, 0.0, 0.3)
        return out, torch.autograd.grad(out.square().sum(), (q, k, v))

    want, want_grads = loop(q, k, v)
    exact, exact_grads = loop(*(t.detach().double().requires_grad_() for t in (q, k, v)))
    monkeypatch.setattr(attention, "fused_varlen_runs", lambda *args: True)
    monkeypatch.setattr(attention, "flash_attn_varlen", lambda: None)
    monkeypatch.setattr(attention, "torch_varlen_attn", lambda: varlen_attn_contract)
    got = attention._varlen_attention(q, k, v, packed, 0.0, 0.3)
    got_grads = torch.autograd.grad(got.square().sum(), (q, k, v))
    assert received == [16]
    assert_within_accuracy_rule(got, want, exact, "output")
    for name, got_grad, want_grad, exact_grad in zip("qkv", got_grads, want_grads, exact_grads):
        assert_within_accuracy_rule(got_grad, want_grad, exact_grad, f"gradient of {name}")


def _attention_extended(q, k, v, scale):
    """softmax(q k^T scale) v for one sequence's [heads, length, dim] tensors, in np.longdouble."""
    q, k, v = (extended(t) for t in (q, k, v))
    scores = q @ k.transpose(0, 2, 1) * np.longdouble(scale)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return from_extended((weights / weights.sum(-1, keepdims=True)) @ v)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_varlen_attention_equals_masked_sdpa(dtype):
    """The packed kernel path against SDPA over the padded batch with a key-padding mask (the plain path). The
    oracle: that SDPA in fp64 for fp32; for fp64, the attention in extended precision."""
    lengths = [5, 1, 8]
    heads, dim = 3, 7
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(1, heads, sum(lengths), dim, dtype=dtype) for _ in range(3))
    packed = attention.PackedSequences(cu, max(lengths), cu.tolist())
    got = attention._varlen_attention(q, k, v, packed, 0.0, dim ** -0.5)
    assert got.shape == (1, sum(lengths), heads, dim)

    def masked_sdpa(q, k, v, start, length):
        def padded(t):
            return torch.nn.functional.pad(t[:, :, start:start + length], (0, 0, 0, max(lengths) - length))

        key_mask = torch.arange(max(lengths)) < length
        out = torch.nn.functional.scaled_dot_product_attention(padded(q), padded(k), padded(v),
                                                               attn_mask=key_mask[None, None, None, :])
        return out[0, :, :length].transpose(0, 1)

    samples = AccuracyRuleSamples()
    for b, (start, length) in enumerate(zip(cu.tolist(), lengths)):
        if dtype == torch.float64:
            exact = _attention_extended(*(t[0, :, start:start + length] for t in (q, k, v)), dim ** -0.5)
            exact = exact.transpose(0, 1)
        else:
            exact = masked_sdpa(q.double(), k.double(), v.double(), start, length)
        samples.add("attention", got[0, start:start + length], masked_sdpa(q, k, v, start, length), exact,
                    part=f"sequence {b}")
    samples.check()


def test_forcing_packed_on_an_encoder_without_it_is_a_clear_error():
    model = Model(ltc_fast.LtcConfig(encoder=encoder_config("deberta-v2"), num_labels=2,
                                     sequence_packing="packed")).eval()
    ids, mask = text_batch(2, 6, 0)
    with pytest.raises(ValueError, match=r"sequence_packing='packed' needs an encoder with positions from position ids.*"
                                         r"'deberta-v2' has relative positions"):
        model(ids, mask)


def test_packed_needs_the_ltc_attention_implementation():
    _, packed = padded_and_packed("bert", 2)
    packed.set_attn_implementation("eager")
    ids, mask = text_batch(2, 6, 0)
    with pytest.raises(ValueError, match=r"runs on the encoder attention implementation 'ltc_fast'.*this model uses "
                                         r"'eager': call model.set_attn_implementation\('ltc_fast'\)"):
        packed.eval()(ids, mask)


def test_packed_with_output_attentions_is_refused():
    _, packed = padded_and_packed("bert", 2)
    ids, mask = text_batch(2, 6, 0)
    with pytest.raises(ValueError, match="output_attentions=True is not available with sequence_packing='packed'"):
        packed.eval()(ids, mask, output_attentions=True)
