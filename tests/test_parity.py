"""ltc_fast equals the reference method on the same weights: logits, probas, loss and every gradient, held to
the accuracy rule (tests/helpers.py): against the reference run in fp64, ltc_fast's fp32 error is at most twice
the reference's own fp32 error plus one unit in the last place."""

import pytest
import torch

from ltc_fast.checkpoints import word_embeddings_key
from tests.helpers import (ARCHITECTURES, GRADIENT_DRAWS, AccuracyRuleSamples, draws_for, fp64_copy,
                           random_targets, reference_and_ltc, reference_format, reference_outputs_fp64, text_batch)

PROBLEM_TYPES = ["multi_label_classification", "single_label_classification"]
CASES = [(arch, b, n, p) for arch in ARCHITECTURES for b in (1, 3) for n in (1, 5, 28) for p in PROBLEM_TYPES
         if not (n == 1 and p == "single_label_classification")]  # softmax over one label is undefined here


def _gradients(module, prefix=""):
    return {name: p.grad.clone() for name, p in module.named_parameters(prefix=prefix) if p.grad is not None}


@pytest.mark.parametrize("input_format", ["plain", "reference"])
@pytest.mark.parametrize("arch,batch_size,num_labels,problem_type", CASES)
def test_same_logits_loss_and_gradients(arch, batch_size, num_labels, problem_type, input_format):
    """Outputs pooled over draws of fresh batches of this shape (at least RULE_VALUES values each); the gradient
    of every parameter together, as the one vector the optimizer steps along, over GRADIENT_DRAWS draws (the
    head bias's gradient alone is one value, and 0 in exact arithmetic under softmax)."""
    reference, model = reference_and_ltc(arch, num_labels, problem_type)
    oracle = fp64_copy(reference)
    pad_id = model.config.encoder.pad_token_id
    samples = AccuracyRuleSamples()
    for draw in range(draws_for(batch_size * num_labels, at_least=GRADIENT_DRAWS)):
        text_ids, mask = text_batch(batch_size, max_len=9, pad_id=pad_id)
        ref_ids, ref_mask = reference_format(text_ids, mask, num_labels)
        targets = random_targets(problem_type, batch_size, num_labels)
        with_gradients = draw < GRADIENT_DRAWS
        with torch.set_grad_enabled(with_gradients):
            expected = reference(ref_ids, ref_mask, labels=targets)
            exact = reference_outputs_fp64(oracle, ref_ids, ref_mask, labels=targets)
            if input_format == "plain":
                actual = model(text_ids, attention_mask=mask, labels=targets)
            else:
                actual = model(ref_ids, attention_mask=ref_mask, labels=targets)
        assert actual.logits.shape == (batch_size, num_labels)
        assert actual["logits"] is actual.logits
        for what in ("logits", "probas", "loss"):
            samples.add(what, actual[what], expected[what], exact[what])
        if not with_gradients:
            continue
        for module, loss in ((reference, expected["loss"]), (oracle, exact["loss"]), (model, actual.loss)):
            module.zero_grad(set_to_none=True)
            loss.backward()
        ref_grads, exact_grads, ours = _gradients(reference), _gradients(oracle), _gradients(model)
        word_key = word_embeddings_key(ours)
        # The reference's word table holds the label rows after the V word rows.
        ours[word_key] = torch.cat([ours[word_key], ours.pop("label_embeddings.weight")])
        assert set(ours) == set(ref_grads), "both models train the same parameters (the reference's pooler gets none)"
        for name, grad in ref_grads.items():
            samples.add("gradient", ours[name], grad, exact_grads[name], part=name)
    samples.check()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_unpadded_batch_and_default_mask(arch):
    reference, model = reference_and_ltc(arch, 4)
    oracle = fp64_copy(reference)
    samples = AccuracyRuleSamples()
    with torch.no_grad():
        for _ in range(draws_for(2 * 4)):
            text_ids, mask = text_batch(2, max_len=7, pad_id=model.config.encoder.pad_token_id, padded=False)
            ref_ids, _ = reference_format(text_ids, mask, 4)
            samples.add("logits", model(text_ids).logits, reference(ref_ids)["logits"], oracle(ref_ids)["logits"])
    samples.check()


def test_eval_is_deterministic_and_training_applies_head_dropout():
    _, model = reference_and_ltc("bert", 6)
    text_ids, mask = text_batch(3, 8, pad_id=0)
    first = model(text_ids, mask).logits
    torch.testing.assert_close(model(text_ids, mask).logits, first, rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(text_ids, mask).logits, model(text_ids, mask).logits)
