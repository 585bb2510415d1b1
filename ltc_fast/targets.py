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
    """Shapes and dtypes checked, values brought to the loss's form. The values themselves are checked apart
    (`invalid_targets`, `check_target_values`): reading them is a host sync, which the model does once for all
    its inputs."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if problem_type == MULTI_LABEL:
        return _multi_label_targets(labels, batch_size, num_labels)
    return _single_label_targets(labels, batch_size, num_labels)


def loss_items_in_batch(num_items_in_batch, targets: Targets, scored_labels: int, problem_type: str):
    """The loss's divisor from the Trainer's `num_items_in_batch`. The Trainer counts label tensor *elements*
    over the accumulated batch; the loss averages over loss terms: one per scored label and row for
    multi-label, one per row for single-label (whose one-hot rows count N elements each)."""
    loss_terms_per_row = scored_labels if problem_type == MULTI_LABEL else 1
    return num_items_in_batch * loss_terms_per_row / targets.label_elements_per_row


def invalid_targets(labels: torch.Tensor, problem_type: str, num_labels: int) -> torch.Tensor:
    """A 0-d bool tensor on the labels' device, True when some value breaks the rules that
    `check_target_values` explains; computed without reading it back (no host sync)."""
    return _bad_values(labels, problem_type, num_labels).any()


def check_target_values(labels: torch.Tensor, problem_type: str, num_labels: int) -> None:
    """Raise a ValueError naming the first bad value of shape-checked `labels` (reads them: a host sync)."""
    bad = _bad_values(labels, problem_type, num_labels)
    if not bad.any():
        return
    if problem_type == MULTI_LABEL:
        values = labels.float()
        raise ValueError(f"labels for {MULTI_LABEL} must lie in [0, 1], got values from {values.min().item()} to "
                         f"{values.max().item()}")
    row = int(bad.nonzero()[0, 0])
    if labels.dim() == 2:
        raise ValueError(f"labels row {row} is not one-hot: single_label_classification takes class ids [batch_size] "
                         f"or rows with exactly one 1 and zeros elsewhere, got {labels[row].tolist()}")
    raise ValueError(f"labels hold class id {int(labels[row])} at row {row}; class ids must be in "
                     f"[0, {num_labels - 1}] (num_labels={num_labels})")


def _bad_values(labels: torch.Tensor, problem_type: str, num_labels: int) -> torch.Tensor:
    """bool per element (multi-label: outside [0, 1] or NaN) or per row (single-label: an id out of range, or a
    row that is not exactly one 1 and zeros)."""
    if problem_type == MULTI_LABEL:
        values = labels.float()
        return (values < 0) | (values > 1) | values.isnan()
    if labels.dim() == 2:
        values = labels.float()
        return ~((values == 0) | (values == 1)).all(dim=1) | (values.sum(dim=1) != 1)
    return (labels < 0) | (labels >= num_labels)


def _multi_label_targets(labels, batch_size, num_labels) -> Targets:
    expected = (batch_size, num_labels)
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels for {MULTI_LABEL} must have shape [batch_size, num_labels] = {list(expected)} "
            f"(one 0/1 target per label), got shape {list(labels.shape)}"
        )
    if labels.is_complex():
        raise ValueError(f"labels for {MULTI_LABEL} must be float, int or bool 0/1 targets, got dtype {labels.dtype}")
    return Targets(labels.float(), label_elements_per_row=num_labels)


def _single_label_targets(labels, batch_size, num_labels) -> Targets:
    if labels.dim() == 2:
        if tuple(labels.shape) != (batch_size, num_labels):
            raise ValueError(
                f"one-hot labels for single_label_classification must have shape [batch_size, num_labels] = "
                f"[{batch_size}, {num_labels}], got shape {list(labels.shape)}"
            )
        return Targets(labels.float().argmax(dim=1), label_elements_per_row=num_labels)
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
    return Targets(labels.long(), label_elements_per_row=1)
