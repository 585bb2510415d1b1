import numpy as np
import pytest

from ltc_fast.app.evaluation import multilabel_metrics, single_label_metrics


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


def test_per_label_thresholds_and_table():
    from ltc_fast.app.evaluation import multilabel_report

    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probas = np.array([[0.9, 0.2], [0.4, 0.6], [0.45, 0.7], [0.1, 0.4]])
    report = multilabel_report(probas, targets, ["a", "b"], threshold=[0.42, 0.5])
    assert report["metrics"]["micro_f1"] == 1.0 and report["metrics"]["subset_accuracy"] == 1.0
    assert report["per_label"][0] == {"label": "a", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2,
                                      "threshold": 0.42}
    loose = multilabel_report(probas, targets, ["a", "b"], threshold=0.3)["per_label"]
    assert loose[0]["precision"] == pytest.approx(2 / 3) and loose[0]["recall"] == 1.0  # 0.4 of row 1 is a FP
    with pytest.raises(ValueError, match=r"one float per label \(2\), got shape \[3\]"):
        multilabel_metrics(probas, targets, threshold=[0.5, 0.5, 0.5])


def test_tuned_thresholds_maximise_each_labels_f1():
    from ltc_fast.app.evaluation import THRESHOLD_GRID, tune_label_thresholds

    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probas = np.array([[0.9, 0.2, 0.3], [0.4, 0.6, 0.1], [0.45, 0.7, 0.2], [0.1, 0.4, 0.9]])
    thresholds = tune_label_thresholds(probas, targets)
    assert 0.4 < thresholds[0] <= 0.45, "label 0 separates between 0.4 (negative) and 0.45 (positive)"
    assert 0.4 < thresholds[1] <= 0.6
    assert thresholds[2] == 0.5, "no positive example: keep 0.5"
    for label, threshold in enumerate(thresholds[:2]):
        best = max(f1_at(probas[:, label], targets[:, label], t) for t in THRESHOLD_GRID)
        assert f1_at(probas[:, label], targets[:, label], threshold) == best


def f1_at(scores, truth, threshold):
    predicted = scores >= threshold
    true_pos = (predicted & (truth == 1)).sum()
    return 2 * true_pos / max(predicted.sum() + truth.sum(), 1)


def test_single_label_report_has_a_row_per_label():
    from ltc_fast.app.evaluation import single_label_report

    probas = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4]])
    rows = single_label_report(probas, [0, 1, 2], ["x", "y", "z"])["per_label"]
    assert [row["support"] for row in rows] == [1, 1, 1]
    assert rows[0]["precision"] == 0.5 and rows[2]["recall"] == 0.0
