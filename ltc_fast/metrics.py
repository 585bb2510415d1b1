"""Classification metrics on probabilities (scikit-learn); ROC-AUC uses the scores, not 0/1 predictions."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score

# Candidate thresholds of `tune_label_thresholds`.
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


def _multilabel_arrays(probas, targets, threshold):
    probas = np.asarray(probas, dtype=np.float64)
    targets = np.asarray(targets).astype(int)
    if probas.shape != targets.shape or probas.ndim != 2:
        raise ValueError(f"probas and targets must both be [examples, labels]; got {probas.shape} and {targets.shape}")
    threshold = np.asarray(threshold, dtype=np.float64)
    if threshold.ndim not in (0, 1) or (threshold.ndim == 1 and threshold.shape[0] != probas.shape[1]):
        raise ValueError(f"threshold must be a float or one float per label ({probas.shape[1]}), "
                         f"got shape {list(threshold.shape)}")
    return probas, targets, threshold


def multilabel_metrics(probas, targets, threshold=0.5) -> dict[str, float]:
    """micro/macro F1 and subset accuracy at `threshold` (a float, or one per label); macro ROC-AUC over
    the labels that have both a positive and a negative example (others have no AUC), computed on the
    probabilities."""
    probas, targets, threshold = _multilabel_arrays(probas, targets, threshold)
    predictions = (probas >= threshold).astype(int)
    scorable = (targets.min(axis=0) == 0) & (targets.max(axis=0) == 1)
    return {
        "micro_f1": float(f1_score(targets, predictions, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(targets, predictions, average="macro", zero_division=0)),
        "roc_auc": float(roc_auc_score(targets[:, scorable], probas[:, scorable], average="macro"))
        if scorable.any() else float("nan"),
        "subset_accuracy": float(accuracy_score(targets, predictions)),
    }


def single_label_metrics(probas, class_ids) -> dict[str, float]:
    """accuracy, micro/macro F1 of the argmax, one-vs-rest macro ROC-AUC on the probabilities."""
    probas = np.asarray(probas, dtype=np.float64)
    class_ids = np.asarray(class_ids).astype(int)
    predictions = probas.argmax(axis=1)
    present = np.unique(class_ids)
    metrics = {
        "accuracy": float(accuracy_score(class_ids, predictions)),
        "micro_f1": float(f1_score(class_ids, predictions, average="micro")),
        "macro_f1": float(f1_score(class_ids, predictions, average="macro", zero_division=0)),
        "roc_auc": float("nan"),
    }
    if len(present) > 1:
        one_hot = np.eye(probas.shape[1], dtype=int)[class_ids][:, present]
        metrics["roc_auc"] = float(roc_auc_score(one_hot, probas[:, present], average="macro"))
    return metrics


def per_label_metrics(targets, predictions, label_names: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of each label, from 0/1 matrices `[examples, labels]` (multi-label)
    or class-id vectors (single-label)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=None if np.ndim(targets) == 2 else list(range(len(label_names))),
        average=None, zero_division=0)
    return [{"label": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for name, p, r, f, n in zip(label_names, precision, recall, f1, support)]


def multilabel_report(probas, targets, label_names: list[str], threshold=0.5) -> dict:
    """`multilabel_metrics` plus the per-label table (each row with its threshold)."""
    probas, targets, threshold = _multilabel_arrays(probas, targets, threshold)
    rows = per_label_metrics(targets, (probas >= threshold).astype(int), label_names)
    for row, value in zip(rows, np.broadcast_to(threshold, (len(label_names),))):
        row["threshold"] = float(value)
    return {"metrics": multilabel_metrics(probas, targets, threshold), "per_label": rows}


def single_label_report(probas, class_ids, label_names: list[str]) -> dict:
    """`single_label_metrics` plus the per-label table of the argmax predictions."""
    rows = per_label_metrics(np.asarray(class_ids), np.asarray(probas).argmax(axis=1), label_names)
    return {"metrics": single_label_metrics(probas, class_ids), "per_label": rows}


def tune_label_thresholds(probas, targets, grid=THRESHOLD_GRID) -> list[float]:
    """Per label, the grid threshold with the best F1 on (`probas`, `targets`); ties go to the threshold
    nearest 0.5, and a label without positive examples keeps 0.5 (its F1 cannot rank thresholds)."""
    probas, targets, _ = _multilabel_arrays(probas, targets, 0.5)
    grid = np.asarray(sorted(grid, key=lambda t: (abs(t - 0.5), t)), dtype=np.float64)
    predicted = probas[:, :, None] >= grid  # [examples, labels, grid]
    positives = targets[:, :, None].astype(bool)
    true_pos = (predicted & positives).sum(axis=0)
    f1 = 2 * true_pos / np.maximum(predicted.sum(axis=0) + positives.sum(axis=0), 1)
    best = grid[f1.argmax(axis=1)]  # argmax takes the first maximum: the one nearest 0.5
    best[targets.sum(axis=0) == 0] = 0.5
    return [float(t) for t in best]
