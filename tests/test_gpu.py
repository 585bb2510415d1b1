"""On CUDA: fp32 parity with the reference, and bf16 error no more than twice the reference's own bf16
error, both against an fp64 oracle. Skipped without CUDA."""

import copy

import pytest
import torch

from tests.helpers import ARCHITECTURES, reference_and_ltc, reference_format, text_batch

pytestmark = pytest.mark.gpu


def _inputs(model, num_labels, device="cuda"):
    text_ids, mask = text_batch(5, 33, pad_id=model.config.encoder.pad_token_id)
    ref_ids, ref_mask = reference_format(text_ids, mask, num_labels)
    return [t.to(device) for t in (text_ids, mask, ref_ids, ref_mask)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cuda_fp32_parity(arch):
    reference, model = reference_and_ltc(arch, 28)
    reference.cuda(), model.cuda()
    text_ids, mask, ref_ids, ref_mask = _inputs(model, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(text_ids, mask).logits, reference(ref_ids, ref_mask)["logits"],
                                   rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bf16_error_is_at_most_twice_the_reference_bf16_error(arch):
    reference, model = reference_and_ltc(arch, 28)
    oracle = copy.deepcopy(reference).double().cuda()
    reference.cuda(), model.cuda()
    text_ids, mask, ref_ids, ref_mask = _inputs(model, 28)
    with torch.no_grad():
        exact = oracle(ref_ids, ref_mask)["logits"]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ours = model(text_ids, mask).logits.double()
            theirs = reference(ref_ids, ref_mask)["logits"].double()
    our_error = (ours - exact).abs().max()
    reference_error = (theirs - exact).abs().max()
    assert our_error <= 2 * reference_error + 1e-6, (our_error.item(), reference_error.item())


def _bf16_error_ratio(fast, plain, exact, *inputs):
    """max |fast - exact| / max |plain - exact| with both fast and plain in bf16 autocast."""
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        fast_error = (fast(*inputs).logits.double() - exact).abs().max()
        plain_error = (plain(*inputs).logits.double() - exact).abs().max()
    return fast_error.item(), plain_error.item()


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_cuda_packed_varlen_matches_padded(arch):
    """Packed batches on CUDA (varlen flash attention in bf16) against the padded SDPA path."""
    _, padded = reference_and_ltc(arch, 28)
    padded.config.sequence_packing = "padded"
    packed = copy.deepcopy(padded)
    packed.config.sequence_packing = "packed"
    oracle = copy.deepcopy(padded).double().cuda()
    padded.cuda(), packed.cuda()
    text_ids, mask, _, _ = _inputs(padded, 28)
    with torch.no_grad():
        torch.testing.assert_close(packed(text_ids, mask).logits, padded(text_ids, mask).logits, rtol=0, atol=1e-4)
        exact = oracle(text_ids, mask).logits
    ours, theirs = _bf16_error_ratio(packed, padded, exact, text_ids, mask)
    assert ours <= 2 * theirs + 1e-6, (ours, theirs)


def test_cuda_auto_packs_padded_batches_where_a_fused_kernel_runs(monkeypatch):
    from ltc_fast import attention

    _, model = reference_and_ltc("bert", 4)
    model.cuda().eval()
    calls = []
    real = attention._varlen_attention
    monkeypatch.setattr(attention, "_varlen_attention", lambda *a: calls.append(1) or real(*a))
    text_ids, mask, _, _ = _inputs(model, 4)
    with torch.no_grad():
        model(text_ids, mask)  # fp32: the per-sequence fallback would be slower than padded SDPA
        assert not calls
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(text_ids, mask)
    assert calls


def test_cuda_decoupled_chunked_equals_one_pass():
    import ltc_fast
    from tests.helpers import encoder_config, label_names

    config = ltc_fast.LtcConfig(encoder=encoder_config("roberta"), label_names=label_names(300),
                                label_positions="shared", label_attention="decoupled")
    model = ltc_fast.AutoModelForTokenSequenceClassification(config).eval().cuda()
    chunked = copy.deepcopy(model)
    chunked.config.label_chunk_size = 64
    text_ids, mask, _, _ = _inputs(model, 300)
    with torch.no_grad():
        torch.testing.assert_close(chunked(text_ids, mask).logits, model(text_ids, mask).logits, rtol=0, atol=1e-5)
