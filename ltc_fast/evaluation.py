"""Evaluating a trained model on labelled data: metrics, the per-label table, tuned per-label thresholds,
and the plain-text table the command prints."""

from __future__ import annotations

import numpy as np

from .config import MULTI_LABEL, validate_label_thresholds
from .datafiles import LabeledData
from .metrics import multilabel_report, single_label_report, tune_label_thresholds
from .prediction import predict_probas, saved_thresholds


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
