"""The prediction API: `model.predict(texts, ...)` and the per-label thresholds saved with a model."""

import numpy as np
import pytest
import torch

from ltc_fast import AutoModelForTokenSequenceClassification as Model
from ltc_fast import LtcConfig, tokenize_texts
from ltc_fast import load_classifier
from ltc_fast.prediction import predict_probas
from tests.helpers import (assert_within_accuracy_rule, encoder_config, fp64_copy, make_tiny_tokenizer,
                           save_tiny_encoder)

NAMES = ["joy", "fear", "love", "calm", "anger"]
TEXTS = ["happy day", "the very bad food is not good", "calm", "sad sad sad day", "love joy fear",
         "a day", "angry"]


def _saved(tmp_path, problem_type="multi_label_classification", **config):
    model = Model.from_config(encoder_config("bert"), label_names=NAMES, problem_type=problem_type, **config)
    with torch.no_grad():  # spread the scores so rankings and thresholds are not decided by noise
        model.classifier.weight.normal_(0, 2.0)
    model.save_pretrained(tmp_path)
    make_tiny_tokenizer().save_pretrained(tmp_path)
    return Model.from_pretrained(tmp_path)


def _probas(model, texts):
    batch = tokenize_texts(make_tiny_tokenizer(), texts, len(NAMES), padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).probas.numpy()


def test_predict_returns_names_and_scores_of_the_forward_pass(tmp_path):
    """The scores are the forward pass's probabilities (the accuracy rule: the model in fp64 the oracle, the
    forward pass over the texts in one batch the plain path), best first."""
    model = _saved(tmp_path)
    expected = _probas(model, TEXTS)
    exact = _probas(fp64_copy(model), TEXTS)
    results = model.predict(TEXTS, top_k=len(NAMES))  # the tokenizer comes from the model's directory
    assert len(results) == len(TEXTS)
    for labels in results:  # every label once, best first (by its own scores: a near tie may order either way)
        assert sorted(entry["label"] for entry in labels) == sorted(NAMES)
        assert [entry["score"] for entry in labels] == sorted((entry["score"] for entry in labels), reverse=True)
    scores = np.array([[next(e["score"] for e in labels if e["label"] == name) for name in NAMES]
                       for labels in results], dtype=np.float32)
    assert_within_accuracy_rule(torch.from_numpy(scores), torch.from_numpy(expected), torch.from_numpy(exact),
                                "scores")


def test_batching_and_padding_do_not_change_scores(tmp_path):
    model = _saved(tmp_path)
    tokenizer = make_tiny_tokenizer()
    one_by_one = predict_probas(model, tokenizer, TEXTS, batch_size=1)
    together = predict_probas(model, tokenizer, TEXTS, batch_size=3)
    # The accuracy rule: the model in fp64 the oracle, one text at a time (no padding) the plain path.
    exact = _probas(fp64_copy(model), TEXTS)
    assert_within_accuracy_rule(torch.from_numpy(together), torch.from_numpy(one_by_one), torch.from_numpy(exact),
                                "batched probas")


def test_threshold_top_k_and_their_combination(tmp_path):
    model = _saved(tmp_path)
    # The probabilities predict itself computes: the threshold is one of them (the median), so a last-place
    # difference between two batchings of the same texts (see above) would decide membership.
    probas = predict_probas(model, make_tiny_tokenizer(), TEXTS)
    threshold = float(np.median(probas))
    by_threshold = model.predict(TEXTS, threshold=threshold)
    for row, labels in zip(probas, by_threshold):
        assert {entry["label"] for entry in labels} == {NAMES[i] for i in np.flatnonzero(row >= threshold)}
        scores = [entry["score"] for entry in labels]
        assert scores == sorted(scores, reverse=True)
    both = model.predict(TEXTS, threshold=threshold, top_k=1)
    assert [labels[:1] for labels in by_threshold] == both
    default = model.predict(TEXTS)  # multi-label default: 0.5
    assert [{e["label"] for e in labels} for labels in default] == \
        [{NAMES[i] for i in np.flatnonzero(row >= 0.5)} for row in probas]


def test_saved_per_label_thresholds_are_the_default(tmp_path):
    model = _saved(tmp_path)
    probas = _probas(model, TEXTS)
    thresholds = [0.05, 0.95, 0.5, 0.3, 0.7]
    model.config.label_thresholds = thresholds
    model.save_pretrained(tmp_path)
    reloaded = Model.from_pretrained(tmp_path)
    assert reloaded.config.label_thresholds == thresholds
    expected = [{NAMES[i] for i in np.flatnonzero(row >= np.array(thresholds))} for row in probas]
    assert [{e["label"] for e in labels} for labels in reloaded.predict(TEXTS)] == expected
    overridden = reloaded.predict(TEXTS, threshold=0.5)
    assert [{e["label"] for e in labels} for labels in overridden] == \
        [{NAMES[i] for i in np.flatnonzero(row >= 0.5)} for row in probas]


def test_single_label_predicts_the_best_label(tmp_path):
    model = _saved(tmp_path, "single_label_classification")
    probas = _probas(model, TEXTS)
    np.testing.assert_allclose(probas.sum(axis=1), 1.0, atol=1e-6)
    results = model.predict(TEXTS)
    assert [labels[0]["label"] for labels in results] == [NAMES[i] for i in probas.argmax(axis=1)]
    assert all(len(labels) == 1 for labels in results)


def test_tokenizer_is_needed_when_the_model_has_no_directory():
    model = Model.from_config(encoder_config("bert"), label_names=NAMES)
    with pytest.raises(ValueError, match=r"pass tokenizer=\.\.\."):
        model.predict(["happy"])
    assert len(model.predict("happy", tokenizer=make_tiny_tokenizer(), top_k=2)[0]) == 2


def test_bad_arguments(tmp_path):
    model = _saved(tmp_path)
    with pytest.raises(ValueError, match="top_k must be an int >= 1, got 0"):
        model.predict(TEXTS, top_k=0)
    with pytest.raises(ValueError, match=r"threshold must be a probability in \[0, 1\], got 1.5"):
        model.predict(TEXTS, threshold=1.5)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        model.predict(TEXTS, batch_size=0)


def test_label_thresholds_are_validated():
    config = encoder_config("bert")
    with pytest.raises(ValueError, match=r"one threshold per label \(2\), got 3"):
        LtcConfig(encoder=config, label_names=["a", "b"], label_thresholds=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\); label 1 has 1.0"):
        LtcConfig(encoder=config, label_names=["a", "b"], label_thresholds=[0.5, 1.0])
    with pytest.raises(ValueError, match="apply to 'multi_label_classification' only"):
        LtcConfig(encoder=config, label_names=["a", "b"], problem_type="single", label_thresholds=[0.5, 0.5])


def test_load_classifier_refuses_a_plain_encoder(tmp_path):
    save_tiny_encoder(tmp_path / "encoder")
    with pytest.raises(ValueError, match="is not an ltc_fast or reference checkpoint: it holds a 'bert' model"):
        load_classifier(tmp_path / "encoder")
    with pytest.raises(ValueError, match="is not an ltc_fast or reference checkpoint: no readable config.json"):
        load_classifier(tmp_path)
