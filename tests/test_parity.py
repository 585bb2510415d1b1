"""ltc_fast equals the reference method on the same weights: logits, loss and every gradient."""

import pytest
import torch

from tests.helpers import (ARCHITECTURES, VOCAB, assert_relative_close, random_targets, reference_and_ltc,
                      reference_format, text_batch)

PROBLEM_TYPES = ["multi_label_classification", "single_label_classification"]
CASES = [(arch, b, n, p) for arch in ARCHITECTURES for b in (1, 3) for n in (1, 5, 28) for p in PROBLEM_TYPES
         if not (n == 1 and p == "single_label_classification")]  # softmax over one label is undefined here


def _gradients(module, prefix=""):
    return {name: p.grad.clone() for name, p in module.named_parameters(prefix=prefix) if p.grad is not None}


@pytest.mark.parametrize("input_format", ["plain", "reference"])
@pytest.mark.parametrize("arch,batch_size,num_labels,problem_type", CASES)
def test_same_logits_loss_and_gradients(arch, batch_size, num_labels, problem_type, input_format):
    reference, model = reference_and_ltc(arch, num_labels, problem_type)
    pad_id = model.config.encoder.pad_token_id
    text_ids, mask = text_batch(batch_size, max_len=9, pad_id=pad_id)
    ref_ids, ref_mask = reference_format(text_ids, mask, num_labels)
    targets = random_targets(problem_type, batch_size, num_labels)

    expected = reference(ref_ids, ref_mask, labels=targets)
    expected["loss"].backward()
    if input_format == "plain":
        actual = model(text_ids, attention_mask=mask, labels=targets)
    else:
        actual = model(ref_ids, attention_mask=ref_mask, labels=targets)
    actual.loss.backward()

    assert actual.logits.shape == (batch_size, num_labels)
    assert actual["logits"] is actual.logits
    torch.testing.assert_close(actual.logits, expected["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(actual.probas, expected["probas"], rtol=0, atol=1e-5)
    torch.testing.assert_close(actual.loss, expected["loss"], rtol=1e-5, atol=1e-6)

    ref_grads = _gradients(reference)
    ours = _gradients(model)
    model_scale = max(g.abs().max() for g in ref_grads.values())

    def check(actual, expected, name, terms=0.0):
        # Per tensor, relative to its own size, unless it is noise around an exact zero or a sum that cancels
        # (single-label: the label logits' gradients sum to 0, so what reaches the text is a small remainder),
        # or relative to the size of the terms summed into it when those are known.
        scale = max(expected.abs().max(), model_scale * 1e-2, terms)
        assert_relative_close(actual, expected, 1e-5, name, scale=scale)

    word_key = next(k for k in ours if k.endswith("embeddings.word_embeddings.weight"))
    ref_words = ref_grads.pop(word_key)
    check(ours.pop(word_key), ref_words[:VOCAB], "word embeddings")
    check(ours.pop("label_embeddings.weight"), ref_words[VOCAB:], "label embeddings")
    assert set(ours) == set(ref_grads), "both models train the same parameters (the reference's pooler gets none)"
    if problem_type == "single_label_classification":
        # Softmax is invariant to the shared head bias: its exact gradient is 0; both sides hold only fp32 noise.
        for bias_grad in (ours.pop("classifier.bias"), ref_grads.pop("classifier.bias")):
            assert bias_grad.abs().item() < 1e-6
    else:  # the head bias's gradient is the mean of the B x N terms (p - y): relative to their size
        terms = (expected["probas"] - targets).abs().mean().detach()
        check(ours.pop("classifier.bias"), ref_grads.pop("classifier.bias"), "classifier.bias", terms)
    for name, grad in ours.items():
        check(grad, ref_grads[name], name)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_unpadded_batch_and_default_mask(arch):
    reference, model = reference_and_ltc(arch, 4)
    text_ids, mask = text_batch(2, max_len=7, pad_id=model.config.encoder.pad_token_id, padded=False)
    ref_ids, _ = reference_format(text_ids, mask, 4)
    torch.testing.assert_close(model(text_ids).logits, reference(ref_ids)["logits"], rtol=0, atol=1e-5)


def test_eval_is_deterministic_and_training_applies_head_dropout():
    _, model = reference_and_ltc("bert", 6)
    text_ids, mask = text_batch(3, 8, pad_id=0)
    first = model(text_ids, mask).logits
    torch.testing.assert_close(model(text_ids, mask).logits, first, rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(text_ids, mask).logits, model(text_ids, mask).logits)
