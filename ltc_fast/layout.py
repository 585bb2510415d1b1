"""Where [CLS], the label tokens, the text and the padding sit in the encoder's input.

The padded layout is the reference's: `[CLS] [l_0] ... [l_{N-1}] t_1 ... t_k [SEP] pad ...`, i.e. the
plain tokenized text `[CLS] t_1 ... [SEP] pad ...` with the N label slots inserted after position 0.
Everything here works on the plain text ids (`[B, T]`) and produces the `[B, T + N]` tensors that go
to the encoder next to the embeddings; nothing is materialised per label.
"""

from __future__ import annotations

import torch

LABEL_START = 1  # label i sits at sequence position LABEL_START + i, right after [CLS]


def insert_label_slots(per_token: torch.Tensor, num_labels: int, fill) -> torch.Tensor:
    """`[B, T]` -> `[B, T + N]`: `fill` in the N label slots after position 0."""
    batch = per_token.shape[0]
    slots = per_token.new_full((batch, num_labels), fill)
    return torch.cat([per_token[:, :LABEL_START], slots, per_token[:, LABEL_START:]], dim=1)


def reference_position_ids(
    text_ids: torch.Tensor, num_labels: int, scheme: str, padding_idx: int | None
) -> torch.Tensor:
    """The position ids the reference's encoder assigns by default to its `[B, T + N]` input."""
    batch, text_len = text_ids.shape
    seq_len = text_len + num_labels
    if scheme == "arange":
        return torch.arange(seq_len, device=text_ids.device).expand(batch, seq_len)
    if scheme == "after_padding_idx":
        # RoBERTa counts non-pad *ids* (not the attention mask); label ids are never the pad id.
        not_pad = insert_label_slots(text_ids.ne(padding_idx).long(), num_labels, 1)
        return torch.cumsum(not_pad, dim=1) * not_pad + padding_idx
    raise ValueError(f"unknown position scheme {scheme!r}")


def label_block_to_text_ids(input_ids: torch.Tensor, num_labels: int, label_token_offset: int) -> torch.Tensor:
    """Strip the label block from reference-format ids (`[CLS] V..V+N-1 text`), returning plain text ids.

    Raises a ValueError unless every row holds exactly the label ids in order at positions 1..N and no
    label id anywhere else.
    """
    batch, seq_len = input_ids.shape
    expected = torch.arange(label_token_offset, label_token_offset + num_labels, device=input_ids.device)
    if seq_len < num_labels + LABEL_START:
        raise ValueError(
            f"input_ids hold label-token ids (>= {label_token_offset}) but only {seq_len} positions, fewer than "
            f"[CLS] plus the {num_labels} label tokens"
        )
    block = input_ids[:, LABEL_START:LABEL_START + num_labels]
    bad_rows = (block != expected).any(dim=1)
    text_ids = torch.cat([input_ids[:, :LABEL_START], input_ids[:, LABEL_START + num_labels:]], dim=1)
    if bad_rows.any() or (text_ids >= label_token_offset).any():
        row = int(bad_rows.nonzero()[0, 0]) if bad_rows.any() else int((text_ids >= label_token_offset).any(1).nonzero()[0, 0])
        raise ValueError(
            f"input_ids row {row} holds label-token ids (>= vocabulary size {label_token_offset}) but is not in "
            f"the reference format: positions {LABEL_START}..{num_labels} must be the label ids "
            f"{label_token_offset}..{label_token_offset + num_labels - 1} in order and no label id may appear "
            f"elsewhere; got {input_ids[row].tolist()}"
        )
    return text_ids


# ---------------------------------------------------------------- packed (unpadded) layout
# Packed text ids are one 1-D tensor `[total_text]` with `cu_seqlens` `[B + 1]` (int32 or int64): text b holds
# ids `cu_seqlens[b] .. cu_seqlens[b + 1] - 1`. With its N label rows inserted after [CLS], sequence b occupies
# rows `cu_seqlens[b] + b * N .. cu_seqlens[b + 1] + (b + 1) * N - 1` of the packed encoder input.


def packed_label_rows(cu_seqlens: torch.Tensor, num_labels: int) -> torch.Tensor:
    """int64 `[B, N]`: the packed row of label i of sequence b."""
    batch = cu_seqlens.numel() - 1
    seq_index = torch.arange(batch, device=cu_seqlens.device)
    label_index = torch.arange(num_labels, device=cu_seqlens.device)
    starts = cu_seqlens[:-1].long() + seq_index * num_labels + LABEL_START
    return starts[:, None] + label_index[None, :]


def packed_text_rows(cu_seqlens: torch.Tensor, num_labels: int, total_text: int) -> torch.Tensor:
    """int64 `[total_text]`: the packed row of each text token (labels shift every token after [CLS] by N)."""
    token = torch.arange(total_text, device=cu_seqlens.device)
    seq = torch.searchsorted(cu_seqlens[1:].long(), token, right=True)
    after_labels = (token - cu_seqlens.long()[seq]) >= LABEL_START
    return token + seq * num_labels + after_labels * num_labels


def uniform_cu_seqlens(batch_size: int, text_len: int, device) -> torch.Tensor:
    """The offsets of a padded `[B, T]` batch read as packed texts of length T each."""
    return torch.arange(batch_size + 1, device=device, dtype=torch.int64) * text_len
