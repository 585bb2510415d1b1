"""Classification metrics on probabilities (scikit-learn); ROC-AUC uses the scores, not 0/1 predictions."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def multilabel_metrics(probas, targets, threshold: float = 0.5) -> dict[str, float]:
    """micro/macro F1 and subset accuracy at `threshold`; macro ROC-AUC over the labels that have both
    a positive and a negative example (others have no AUC), computed on the probabilities."""
    probas = np.asarray(probas, dtype=np.float64)
    targets = np.asarray(targets).astype(int)
    if probas.shape != targets.shape or probas.ndim != 2:
        raise ValueError(f"probas and targets must both be [examples, labels]; got {probas.shape} and {targets.shape}")
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
