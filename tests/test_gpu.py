"""On CUDA, the accuracy rule (tests/helpers.py) against an fp64 oracle: fp32 parity with the reference, and in
bf16 autocast an error no more than twice the reference's own bf16 error. Skipped without CUDA."""

import copy

import pytest
import torch

from tests.helpers import (ARCHITECTURES, assert_logits_follow_the_rule, assert_within_accuracy_rule, fp64_copy,
                           reference_and_ltc, reference_format, text_batch)

pytestmark = pytest.mark.gpu
DEVICE = "cuda"


def _inputs(model, num_labels):
    text_ids, mask = text_batch(5, 33, pad_id=model.config.encoder.pad_token_id)
    ref_ids, ref_mask = reference_format(text_ids, mask, num_labels)
    return [t.to(DEVICE) for t in (text_ids, mask, ref_ids, ref_mask)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cuda_fp32_parity(arch):
    reference, model = reference_and_ltc(arch, 28)
    assert_logits_follow_the_rule(model.to(DEVICE), reference.to(DEVICE), batch_size=5, max_len=33)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bf16_error_is_at_most_twice_the_reference_bf16_error(arch):
    reference, model = reference_and_ltc(arch, 28)
    reference.to(DEVICE), model.to(DEVICE)
    oracle = fp64_copy(reference)
    text_ids, mask, ref_ids, ref_mask = _inputs(model, 28)
    with torch.no_grad():
        exact = oracle(ref_ids, ref_mask)["logits"]
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            ours = model(text_ids, mask).logits
            theirs = reference(ref_ids, ref_mask)["logits"]
    assert_within_accuracy_rule(ours, theirs, exact, "bf16 logits")


def _packed_and_padded(arch, num_labels):
    _, padded = reference_and_ltc(arch, num_labels)
    padded.config.sequence_packing = "padded"
    packed = copy.deepcopy(padded)
    packed.config.sequence_packing = "packed"
    return packed.to(DEVICE), padded.to(DEVICE)


@pytest.mark.parametrize("arch", ["bert", "roberta", "modernbert"])
def test_cuda_packed_varlen_matches_padded(arch):
    """Packed batches on CUDA (in bf16, varlen flash attention) against the padded SDPA path, fp32 and bf16."""
    packed, padded = _packed_and_padded(arch, 28)
    oracle = fp64_copy(padded)
    text_ids, mask, _, _ = _inputs(padded, 28)
    with torch.no_grad():
        exact = oracle(text_ids, mask).logits
        assert_within_accuracy_rule(packed(text_ids, mask).logits, padded(text_ids, mask).logits, exact, "fp32")
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            assert_within_accuracy_rule(packed(text_ids, mask).logits, padded(text_ids, mask).logits, exact, "bf16")


def test_cuda_auto_packs_padded_batches_where_a_fused_kernel_runs(monkeypatch):
    from ltc_fast import attention

    _, model = reference_and_ltc("bert", 4)
    model.to(DEVICE).eval()
    calls = []
    real = attention._varlen_attention
    monkeypatch.setattr(attention, "_varlen_attention", lambda *a: calls.append(1) or real(*a))
    text_ids, mask, _, _ = _inputs(model, 4)
    with torch.no_grad():
        model(text_ids, mask)  # fp32: the per-sequence fallback would be slower than padded SDPA
        assert not calls
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            model(text_ids, mask)
    assert calls


def test_cuda_decoupled_chunked_equals_one_pass():
    import ltc_fast
    from tests.helpers import encoder_config, label_names

    config = ltc_fast.LtcConfig(encoder=encoder_config("roberta"), label_names=label_names(300),
                                label_positions="shared", label_attention="decoupled")
    model = ltc_fast.AutoModelForTokenSequenceClassification(config).eval().to(DEVICE)
    chunked = copy.deepcopy(model)
    chunked.config.label_chunk_size = 64
    oracle = fp64_copy(model)
    text_ids, mask, _, _ = _inputs(model, 300)
    with torch.no_grad():
        assert_within_accuracy_rule(chunked(text_ids, mask).logits, model(text_ids, mask).logits,
                                    oracle(text_ids, mask).logits, "chunked logits")
