"""Evaluating classifiers: the metrics on probabilities (scikit-learn; ROC-AUC uses the scores, not 0/1
predictions), a trained model's report on labelled data with its per-label table and tuned per-label
thresholds, the plain-text table the command prints, and the Trainer's `compute_metrics`."""

from __future__ import annotations

import numpy as np
from scipy.special import expit, softmax
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score
from transformers import EvalPrediction, Trainer

from ..batching import LabelTokenCollator
from ..config import MULTI_LABEL, validate_label_thresholds
from ..prediction import predict_probas, saved_thresholds
from .datafiles import LabeledData

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


# ---------------------------------------------------------------------------- a trained model on labelled data
def target_array(data: LabeledData, problem_type: str) -> np.ndarray:
    """Multi-hot `[examples, labels]` (multi-label) or class ids `[examples]` (single-label)."""
    if problem_type != MULTI_LABEL:
        return np.asarray(data.targets(problem_type), dtype=np.int64)
    targets = np.zeros((len(data), len(data.label_names)), dtype=np.int64)
    for row, labels in enumerate(data.labels):
        targets[row, labels] = 1
    return targets


def report_from_probas(config, probas: np.ndarray, data: LabeledData, threshold=None) -> dict:
    """Metrics and per-label rows. Multi-label thresholds: `threshold` (a float or one per label), else the
    model's saved per-label thresholds, else 0.5."""
    if data.label_names != config.label_names:
        raise ValueError(f"{data.path}: the data's label set differs from the model's ({config.num_labels} labels)")
    targets = target_array(data, config.problem_type)
    if config.problem_type != MULTI_LABEL:
        report = single_label_report(probas, targets, config.label_names)
    else:
        if threshold is None:
            threshold = saved_thresholds(config)
        report = multilabel_report(probas, targets, config.label_names, threshold)
    return {"data": data.path, "examples": len(data), "problem_type": config.problem_type, **report}


def evaluate(model, tokenizer, data: LabeledData, threshold=None, batch_size: int = 64,
             max_length: int | None = None, progress: bool = False) -> tuple[dict, np.ndarray]:
    """`report_from_probas` on the model's probabilities for `data`; returns the report and the probabilities."""
    probas = predict_probas(model, tokenizer, data.texts, batch_size, max_length, progress)
    return report_from_probas(model.config, probas, data, threshold), probas


def tuned_thresholds(config, probas: np.ndarray, data: LabeledData) -> list[float]:
    """Per-label thresholds maximising each label's F1 on `data` (multi-label models only)."""
    if config.problem_type != MULTI_LABEL:
        raise ValueError("per-label thresholds apply to multi-label models; this one is single-label (it takes "
                         "the best label)")
    return validate_label_thresholds(tune_label_thresholds(probas, target_array(data, MULTI_LABEL)),
                                     config.num_labels)


def format_report(report: dict) -> str:
    """The report as a plain-text summary and per-label table."""
    metrics = report["metrics"]
    lines = [f"{report['data']}: {report['examples']} examples, {report['problem_type']}"]
    lines += [f"  {name:<16} {value:.4f}" for name, value in metrics.items()]
    has_thresholds = "threshold" in report["per_label"][0]
    width = max(5, *(len(row["label"]) for row in report["per_label"]))
    header = f"  {'label':<{width}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"
    lines += ["", header + (f" {'threshold':>9}" if has_thresholds else "")]
    for row in report["per_label"]:
        line = (f"  {row['label']:<{width}} {row['precision']:9.4f} {row['recall']:7.4f} {row['f1']:7.4f} "
                f"{row['support']:8d}")
        lines.append(line + (f" {row['threshold']:9.2f}" if has_thresholds else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- during training (transformers.Trainer)
def evaluate_multilabel(trainer: Trainer, examples, collator: LabelTokenCollator, threshold: float) -> dict:
    """Metrics of `multilabel_metrics` on the sigmoid of the model's logits (its first output)."""
    predictions = trainer.predict(examples).predictions
    logits = predictions[0] if isinstance(predictions, tuple) else predictions
    probas = probabilities(logits, MULTI_LABEL)
    targets = np.stack([collator.target(ex["labels"]).numpy() for ex in examples])
    return multilabel_metrics(probas, targets, threshold=threshold)


def probabilities(logits, problem_type: str) -> np.ndarray:
    """sigmoid (multi-label) or softmax over labels (single-label), without overflow at extreme logits."""
    logits = np.asarray(logits, dtype=np.float64)
    return expit(logits) if problem_type == MULTI_LABEL else softmax(logits, axis=-1)


def classification_metrics(problem_type: str, threshold: float):
    """`compute_metrics` for the Trainer: the metrics above on the model's logits."""
    def compute(prediction: EvalPrediction) -> dict:
        logits = prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits  # (logits, probas)
        probas = probabilities(logits, problem_type)
        if problem_type == MULTI_LABEL:
            return multilabel_metrics(probas, prediction.label_ids, threshold)
        return single_label_metrics(probas, prediction.label_ids)
    return compute
