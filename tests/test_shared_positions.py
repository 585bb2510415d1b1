"""label_positions="shared": every label at one position id, the text after it as if there were one label."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.helpers import check_over_draws, encoder_config, fp64_copy, label_names, text_batch

import ltc_fast
from ltc_fast import layout
from ltc_fast import tokenize_texts
from ltc_fast.encoders import modes_supported

Model = ltc_fast.AutoModelForTokenSequenceClassification


def shared_model(arch, num_labels, **options):
    config = ltc_fast.LtcConfig(encoder=encoder_config(arch, **options.pop("encoder", {})),
                                label_names=label_names(num_labels), label_positions="shared", **options)
    return Model(config).eval()


def test_shared_position_ids_bert_and_roberta():
    ids = torch.tensor([[2, 7, 8, 3], [2, 9, 3, 0]])
    assert layout.shared_position_ids(ids, 3, "arange", 0).tolist() == [[0, 1, 1, 1, 2, 3, 4]] * 2
    roberta_ids = torch.tensor([[0, 7, 8, 2], [0, 9, 2, 1]])  # pad id 1: positions start at 2
    assert layout.shared_position_ids(roberta_ids, 2, "after_padding_idx", 1).tolist() == [
        [2, 3, 3, 4, 5, 6], [2, 3, 3, 4, 5, 1]]


@pytest.mark.parametrize("arch", modes_supported())
def test_permuting_the_labels_permutes_the_logits(arch):
    model = shared_model(arch, 7)
    permuted = copy.deepcopy(model)
    order = torch.randperm(7)
    with torch.no_grad():
        permuted.label_embeddings.weight.copy_(model.label_embeddings.weight[order])
    oracle = fp64_copy(model)

    def draw(samples):  # the accuracy rule: the unpermuted model's columns in fp64 the oracle, in fp32 plain
        ids, mask = text_batch(3, 9, model.config.encoder.pad_token_id)
        with torch.no_grad():
            samples.add("permuted logits", permuted(ids, mask).logits, model(ids, mask).logits[:, order],
                        oracle(ids, mask).logits[:, order])

    check_over_draws(3 * 7, draw)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_local_windows_in_position_ids_under_every_attention_implementation(implementation):
    """ModernBERT's local layers measure their window in position ids under SDPA and eager attention too (the masks
    ltc_fast builds for shared positions), and an implementation that cannot take them is a clear error."""
    model = shared_model("modernbert", 5)
    other = copy.deepcopy(model)
    other.transformer.set_attn_implementation(implementation)
    oracle = fp64_copy(model)

    def draw(samples):
        ids, mask = text_batch(3, 9, model.config.encoder.pad_token_id)
        with torch.no_grad():
            samples.add("logits", other(ids, mask).logits, model(ids, mask).logits, oracle(ids, mask).logits)

    check_over_draws(3 * 5, draw)
    other.transformer.config._attn_implementation = "flash_attention_2"  # as loaded with flash-attn installed
    ids, mask = text_batch(2, 6, model.config.encoder.pad_token_id)
    with pytest.raises(ValueError, match="label_positions='shared' on 'modernbert'.*needs attn_implementation"):
        other(ids, mask)


@pytest.mark.parametrize("arch", ["bert", "roberta", "modernbert"])
def test_one_label_shared_is_the_reference_layout(arch):
    """With N = 1 the two position schemes coincide."""
    model = shared_model(arch, 1)
    reference = copy.deepcopy(model)
    reference.config.label_positions = "reference"
    ids, mask = text_batch(2, 8, model.config.encoder.pad_token_id)
    torch.testing.assert_close(model(ids, mask).logits, reference(ids, mask).logits, rtol=0, atol=0)


def test_a_thousand_labels_on_a_tiny_encoder():
    """Far past the encoder's 40 positions: shared positions never run out."""
    model = shared_model("bert", 1000, encoder={"max_position_embeddings": 40})
    ids, mask = text_batch(2, 30, 0)
    logits = model(ids, mask).logits
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    reference = copy.deepcopy(model)
    reference.config.label_positions = "reference"
    with pytest.raises(ValueError, match=r"1000 labels at their own positions.*use label_positions='shared'"):
        reference(ids, mask)


def test_the_text_budget_no_longer_shrinks_with_the_labels(tiny_tokenizer):
    text = " ".join(["happy"] * 50)
    reference = tokenize_texts(tiny_tokenizer, [text], 20, max_length=32)["input_ids"][0]
    shared = tokenize_texts(tiny_tokenizer, [text], 20, max_length=32, label_positions="shared")["input_ids"][0]
    decoupled = tokenize_texts(tiny_tokenizer, [text], 20, max_length=32, label_attention="decoupled")["input_ids"][0]
    assert (len(reference), len(shared), len(decoupled)) == (12, 31, 32)


def test_shared_text_longer_than_the_positions_is_a_clear_error():
    model = shared_model("bert", 5, encoder={"max_position_embeddings": 16})
    ids, mask = text_batch(1, 16, 0)
    with pytest.raises(ValueError, match=r"1 label position\(s\) \+ input length \(16 tokens.*= 17 exceeds"):
        model(ids, mask)
    model(ids[:, :15], mask[:, :15])


def test_shared_positions_on_relative_position_encoders_name_the_supported_ones():
    with pytest.raises(ValueError, match=r"label_positions='shared'.*need an encoder with positions from position ids "
                                         r"\(absolute or rotary\).*bert, distilbert, electra, modernbert.*"
                                         r"'deberta-v2' uses relative positions"):
        ltc_fast.LtcConfig(encoder=encoder_config("deberta-v2"), num_labels=3, label_positions="shared")


def test_more_labels_than_positions_suggests_shared():
    config = ltc_fast.LtcConfig(encoder=encoder_config("bert", max_position_embeddings=40), num_labels=60)
    ids, mask = text_batch(1, 5, 0)
    with pytest.raises(ValueError, match=r"60 labels at their own positions .* leave no room for text in the "
                                         r"encoder's 40 positions; use label_positions='shared'"):
        Model(config).eval()(ids, mask)
