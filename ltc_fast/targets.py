"""Check user-supplied `labels` against the problem type and bring them to the loss's form."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import MULTI_LABEL


@dataclass
class Targets:
    values: torch.Tensor  # float [B, N] (multi-label) or class ids long [B] (single-label)
    label_elements_per_row: int  # what the Trainer counts per row for `num_items_in_batch`


def prepare_targets(labels: torch.Tensor, problem_type: str, batch_size: int, num_labels: int) -> Targets:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if problem_type == MULTI_LABEL:
        return _multi_label_targets(labels, batch_size, num_labels)
    return _single_label_targets(labels, batch_size, num_labels)


def _multi_label_targets(labels, batch_size, num_labels) -> Targets:
    expected = (batch_size, num_labels)
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels for {MULTI_LABEL} must have shape [batch_size, num_labels] = {list(expected)} "
            f"(one 0/1 target per label), got shape {list(labels.shape)}"
        )
    if labels.is_complex():
        raise ValueError(f"labels for {MULTI_LABEL} must be float, int or bool 0/1 targets, got dtype {labels.dtype}")
    values = labels.float()
    if ((values < 0) | (values > 1) | values.isnan()).any():
        raise ValueError(
            f"labels for {MULTI_LABEL} must lie in [0, 1], got values from {values.min().item()} to "
            f"{values.max().item()}"
        )
    return Targets(values, label_elements_per_row=num_labels)


def _single_label_targets(labels, batch_size, num_labels) -> Targets:
    if labels.dim() == 2:
        return _from_one_hot(labels, batch_size, num_labels)
    if tuple(labels.shape) != (batch_size,):
        raise ValueError(
            f"labels for single_label_classification must be class ids of shape [batch_size] = [{batch_size}] "
            f"or one-hot rows of shape [{batch_size}, {num_labels}], got shape {list(labels.shape)}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(
            f"labels for single_label_classification as shape [batch_size] must be integer class ids "
            f"(torch.long), got dtype {labels.dtype}"
        )
    out_of_range = (labels < 0) | (labels >= num_labels)
    if out_of_range.any():
        row = int(out_of_range.nonzero()[0, 0])
        raise ValueError(
            f"labels hold class id {int(labels[row])} at row {row}; class ids must be in [0, {num_labels - 1}] "
            f"(num_labels={num_labels})"
        )
    return Targets(labels.long(), label_elements_per_row=1)


def _from_one_hot(labels, batch_size, num_labels) -> Targets:
    if tuple(labels.shape) != (batch_size, num_labels):
        raise ValueError(
            f"one-hot labels for single_label_classification must have shape [batch_size, num_labels] = "
            f"[{batch_size}, {num_labels}], got shape {list(labels.shape)}"
        )
    values = labels.float()
    is_binary = (values == 0) | (values == 1)
    not_one_hot = ~is_binary.all(dim=1) | (values.sum(dim=1) != 1)
    if not_one_hot.any():
        row = int(not_one_hot.nonzero()[0, 0])
        raise ValueError(
            f"labels row {row} is not one-hot: single_label_classification takes class ids [batch_size] or "
            f"rows with exactly one 1 and zeros elsewhere, got {labels[row].tolist()}"
        )
    return Targets(values.argmax(dim=1), label_elements_per_row=num_labels)
