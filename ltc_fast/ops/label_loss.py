"""Loss and probabilities over `[B, N]` label logits: sigmoid + BCE or softmax + cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import resolve_backend


def label_loss_and_probas(
    logits: torch.Tensor,
    targets: torch.Tensor | None,
    multi_label: bool,
    num_items_in_batch: torch.Tensor | int | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Return `(loss, probas)`.

    multi-label: `targets` float `[B, N]`, loss = sum of element-wise BCE-with-logits / number of elements.
    single-label: `targets` class ids `[B]`, loss = sum of cross-entropy / B.
    `num_items_in_batch` replaces that divisor: the `transformers.Trainer` passes the number of label items
    over all gradient-accumulation micro-batches, so the accumulated loss is the mean over the whole batch.
    Accumulation is in fp32 whatever the logits' dtype. `backend`: see `ltc_fast.ops.dispatch`.
    """
    resolve_backend("label_loss_and_probas", backend, "extension", False, "the loss extension is not part of this version")
    probas = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
    if targets is None:
        return None, probas
    if multi_label:
        total = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum")
        count = targets.numel()
    else:
        total = F.cross_entropy(logits.float(), targets, reduction="sum")
        count = targets.shape[0]
    divisor = count if num_items_in_batch is None else num_items_in_batch
    return total / divisor, probas
