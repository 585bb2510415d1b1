"""On CUDA: fp32 parity with the reference, and bf16 error no more than twice the reference's own bf16
error, both against an fp64 oracle. Skipped without CUDA."""

import copy

import pytest
import torch

from conftest import ARCHITECTURES, reference_and_ltc, reference_format, text_batch

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
