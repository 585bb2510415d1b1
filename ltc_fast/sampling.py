"""Which labels a decoupled model scores: sampled negatives for training, and targets restricted to them.

In decoupled mode a label's logit does not depend on the other labels, so a training step may score only
the batch's positive labels plus K sampled negatives: each scored label has exactly the function it has
in a full pass, and the loss is the loss over those labels.
"""

from __future__ import annotations

import torch

from .config import MULTI_LABEL
from .distributed import per_rank_generator


def sample_label_ids(targets: torch.Tensor, problem_type: str, num_labels: int, num_negatives: int,
                     scores: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted ids of the batch's positive labels plus `num_negatives` negatives drawn without replacement,
    uniformly or in proportion to `scores` `[N]`. Under DDP / FSDP each rank scores its own batch's positives
    and draws its own negatives (`per_rank_generator`: reproducible from torch's seed, different on every
    rank), exactly as successive micro-batches of gradient accumulation would."""
    if problem_type == MULTI_LABEL:
        positive = targets.gt(0).any(dim=0)
    else:
        positive = torch.zeros(num_labels, dtype=torch.bool, device=targets.device)
        positive[targets] = True
    negatives = (~positive).nonzero().squeeze(1)
    count = min(num_negatives, negatives.numel())
    if scores is not None:
        weights = scores[negatives].clamp_min(1e-12)  # a zero score must not make multinomial fail
    else:
        weights = torch.ones(negatives.numel(), device=targets.device)
    generator = per_rank_generator(weights.device)
    chosen = negatives[torch.multinomial(weights, count, generator=generator)] if count else negatives[:0]
    return torch.cat([positive.nonzero().squeeze(1), chosen]).sort().values


def subset_targets(values: torch.Tensor, label_ids: torch.Tensor, problem_type: str, num_labels: int) -> torch.Tensor:
    """Targets over the scored labels: the columns of multi-label targets, or class ids renumbered."""
    if problem_type == MULTI_LABEL:
        return values[:, label_ids]
    column = torch.full((num_labels,), -1, dtype=torch.long, device=values.device)
    column[label_ids] = torch.arange(label_ids.numel(), device=values.device)
    remapped = column[values]
    if (remapped < 0).any():
        raise ValueError("subset must include every row's class for single-label targets; missing "
                         f"{sorted(set(values[remapped < 0].tolist()))}")
    return remapped
