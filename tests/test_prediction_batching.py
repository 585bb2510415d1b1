"""Prediction batches texts by length (`sort_by_length`, as sentence-transformers' `encode` does): fewer padded
positions, the same scores, in the texts' order."""

import numpy as np
import pytest

from ltc_fast import AutoModelForTokenSequenceClassification as Model
from ltc_fast import prediction
from ltc_fast.prediction import predict_probas
from tests.helpers import encoder_config, make_tiny_tokenizer

NAMES = ["joy", "fear", "love"]
# Alternating short and long texts: batches of two in this order pad every short text to a long one.
TEXTS = ["a", "the very bad food is not good at all", "b", "sad sad sad day and more sad days", "c",
         "love joy fear and a long sentence here", "d"]


@pytest.fixture
def model():
    return Model.from_config(encoder_config("bert"), label_names=NAMES).eval()


def _forward_widths(model, monkeypatch) -> list[int]:
    widths = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape[0] * kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    return widths


def test_sorted_batches_give_the_unsorted_scores_in_order(model):
    tokenizer = make_tiny_tokenizer()
    sorted_probas = predict_probas(model, tokenizer, TEXTS, batch_size=2)
    unsorted = predict_probas(model, tokenizer, TEXTS, batch_size=2, sort_by_length=False)
    one_by_one = predict_probas(model, tokenizer, TEXTS, batch_size=1, sort_by_length=False)
    np.testing.assert_allclose(sorted_probas, one_by_one, rtol=0, atol=1e-6)
    np.testing.assert_allclose(unsorted, one_by_one, rtol=0, atol=1e-6)
    assert sorted_probas.shape == (len(TEXTS), len(NAMES))


def test_sorting_removes_padding(model, monkeypatch):
    tokenizer = make_tiny_tokenizer()
    widths = _forward_widths(model, monkeypatch)
    predict_probas(model, tokenizer, TEXTS, batch_size=2, sort_by_length=False)
    unsorted_positions = sum(widths)
    widths.clear()
    predict_probas(model, tokenizer, TEXTS, batch_size=2)
    assert sum(widths) < 0.8 * unsorted_positions


def test_windows_keep_the_order_across_them(model, monkeypatch):
    """Sorting happens within windows of SORT_WINDOW_BATCHES batches; results still come back in order."""
    monkeypatch.setattr(prediction, "SORT_WINDOW_BATCHES", 1)
    tokenizer = make_tiny_tokenizer()
    runs = list(prediction.iter_probas(model, tokenizer, TEXTS, batch_size=2))
    assert [len(run) for run in runs] == [2, 2, 2, 1]
    np.testing.assert_allclose(np.concatenate(runs), predict_probas(model, tokenizer, TEXTS, batch_size=1),
                               rtol=0, atol=1e-6)
