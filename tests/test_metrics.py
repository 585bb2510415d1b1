import numpy as np
import pytest

from ltc_fast.metrics import multilabel_metrics, single_label_metrics


def test_multilabel_metrics_use_probabilities_for_auc():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probas = np.array([[0.9, 0.2], [0.4, 0.6], [0.45, 0.7], [0.1, 0.4]])
    metrics = multilabel_metrics(probas, targets)
    assert metrics["roc_auc"] == 1.0  # perfect ranking although label 0 of row 2 falls under the threshold
    assert metrics["subset_accuracy"] == 0.75
    assert metrics["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))  # TP 3, FN 1, FP 0


def test_labels_without_both_classes_are_left_out_of_auc():
    targets = np.array([[1, 0], [0, 0]])
    metrics = multilabel_metrics(np.array([[0.8, 0.1], [0.3, 0.2]]), targets)
    assert metrics["roc_auc"] == 1.0


def test_single_label_metrics():
    probas = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4]])
    metrics = single_label_metrics(probas, [0, 1, 2])
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert 0 < metrics["roc_auc"] <= 1


def test_shape_mismatch():
    with pytest.raises(ValueError, match="probas and targets must both be"):
        multilabel_metrics(np.zeros((2, 3)), np.zeros((2, 2)))
