"""Label-token initialisation from a plain pretrained encoder: random | avg | label_name | cls."""

import pytest
import torch
from transformers import AutoModel

from ltc_fast import AutoModelForTokenSequenceClassification as Model
from tests.helpers import assert_within_accuracy_rule, encoder_config

NAMES = ["sadness", "joy", "calm day"]  # "sadness" -> sad ##ness; "calm day" -> two words


@pytest.fixture
def encoder_dir(tmp_path, tiny_tokenizer):
    encoder = AutoModel.from_config(encoder_config("bert"))
    encoder.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    return tmp_path, encoder


def _word_rows(model):
    return model.transformer.get_input_embeddings().weight


def test_plain_encoder_weights_are_loaded(encoder_dir):
    path, encoder = encoder_dir
    model = Model.from_pretrained(path, label_names=NAMES)
    for name, value in encoder.state_dict().items():
        if not name.startswith("pooler."):
            assert torch.equal(model.transformer.state_dict()[name], value), name
    assert not any(name.startswith("transformer.pooler") for name, _ in model.named_parameters())


def test_random_init_draws_fresh_rows(encoder_dir):
    model = Model.from_pretrained(encoder_dir[0], label_names=NAMES, label_init="random")
    rows = model.label_embeddings.weight
    assert not torch.equal(rows[0], rows[1])
    assert 0.005 < rows.std().item() < 0.06  # N(0, initializer_range=0.02)


def test_avg_init_is_the_vocabulary_mean(encoder_dir):
    model = Model.from_pretrained(encoder_dir[0], label_names=NAMES, label_init="avg")
    words = _word_rows(model).detach()
    for index, row in enumerate(model.label_embeddings.weight):  # the accuracy rule: the mean in fp64 the oracle
        assert_within_accuracy_rule(row, words.mean(dim=0), words.double().mean(dim=0), f"row {index}")


def test_cls_init_copies_the_cls_row(encoder_dir, tiny_tokenizer):
    model = Model.from_pretrained(encoder_dir[0], label_names=NAMES, label_init="cls")
    expected = _word_rows(model)[tiny_tokenizer.cls_token_id]
    for row in model.label_embeddings.weight:
        assert torch.equal(row, expected)


def test_label_name_init_averages_the_word_pieces(encoder_dir, tiny_tokenizer):
    model = Model.from_pretrained(encoder_dir[0], label_names=NAMES, label_init="label_name")
    words = _word_rows(model).detach()
    vocab = tiny_tokenizer.get_vocab()
    pieces = [["sad", "##ness"], ["joy"], ["calm", "day"]]
    for row, name_pieces in zip(model.label_embeddings.weight, pieces):
        chosen = words[[vocab[p] for p in name_pieces]]
        assert_within_accuracy_rule(row, chosen.mean(dim=0), chosen.double().mean(dim=0), " ".join(name_pieces))
    assert model.config.label_init == "label_name"


def test_label_name_init_needs_real_names(encoder_dir):
    with pytest.raises(ValueError, match="label_init='label_name' needs label_names"):
        Model.from_pretrained(encoder_dir[0], num_labels=3, label_init="label_name")


def test_unknown_label_init_is_rejected(encoder_dir):
    with pytest.raises(ValueError, match="label_init must be one of"):
        Model.from_pretrained(encoder_dir[0], label_names=NAMES, label_init="zeros")
