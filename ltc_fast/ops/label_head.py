"""The shared label head: one `Linear(H, 1)` applied to the states at the label positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import LABEL_START
from .dispatch import resolve_backend


def label_head_logits(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_labels: int,
    dropout_p: float = 0.0,
    training: bool = False,
    backend: str | None = None,
    *,
    label_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """`logits[b, i] = weight . dropout(hidden_states[b, LABEL_START + i]) + bias`, shape `[B, N]`.

    The reference projects all `S` positions and slices afterwards; only the N label states matter.
    `backend`: see `ltc_fast.ops.dispatch`.
    """
    resolve_backend("label_head_logits", backend, "triton", False, "no Triton kernel in this version")
    if label_rows is None:
        label_states = hidden_states[:, LABEL_START:LABEL_START + num_labels]
    else:  # packed / flattened `[rows, H]` states; label i of sequence b at row label_rows[b, i]
        label_states = hidden_states[label_rows]
    label_states = F.dropout(label_states, p=dropout_p, training=training)
    return F.linear(label_states, weight, bias).squeeze(-1)
