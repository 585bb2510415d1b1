"""Encoder input embeddings with the label rows injected after [CLS]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import LABEL_START
from .dispatch import resolve_backend


def inject_label_embeddings(
    text_ids: torch.Tensor,
    word_embeddings: torch.Tensor,
    label_embeddings: torch.Tensor,
    padding_idx: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """`[B, T]` text ids -> `[B, T + N, E]`: word rows of the text with the N label rows after position 0.

    Equal to the reference's `word_embeddings(input_ids)` on its label-token ids, including no gradient to
    the padding row (`padding_idx`), but without a `[V + N, E]` table or label ids in the input.
    `backend`: see `ltc_fast.ops.dispatch`.
    """
    resolve_backend("inject_label_embeddings", backend, "triton", False, "no Triton kernel in this version")
    words = F.embedding(text_ids, word_embeddings, padding_idx=padding_idx)
    labels = label_embeddings.unsqueeze(0).expand(text_ids.shape[0], -1, -1)
    return torch.cat([words[:, :LABEL_START], labels, words[:, LABEL_START:]], dim=1)
