"""Where [CLS], the label tokens, the text and the padding sit in the encoder's input.

The padded layout is the reference's: `[CLS] [l_0] ... [l_{N-1}] t_1 ... t_k [SEP] pad ...`, i.e. the
plain tokenized text `[CLS] t_1 ... [SEP] pad ...` with the N label slots inserted after position 0.
Everything here works on the plain text ids (`[B, T]`) and produces the `[B, T + N]` tensors that go
to the encoder next to the embeddings; nothing is materialised per label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LABEL_START = 1  # label i sits at sequence position LABEL_START + i, right after [CLS]


def label_slots(num_labels: int, label_positions: str, label_attention: str) -> int:
    """How many positions of the text's sequence the labels take: N in the reference layout, one with shared
    positions, none in decoupled mode (the labels run as their own sequence)."""
    if label_attention == "decoupled":
        return 0
    return num_labels if label_positions == "reference" else 1


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


def shared_position_ids(
    text_ids: torch.Tensor, num_labels: int, scheme: str, padding_idx: int | None
) -> torch.Tensor:
    """`label_positions="shared"`: every label gets the position one label would have in the reference, and
    the text continues as if there were one label. Positions no longer depend on N."""
    one_label = reference_position_ids(text_ids, 1, scheme, padding_idx)
    label_position = one_label[:, LABEL_START:LABEL_START + 1]
    return torch.cat([one_label[:, :LABEL_START], label_position.expand(-1, num_labels),
                      one_label[:, LABEL_START + 1:]], dim=1)


def text_position_ids(text_ids: torch.Tensor, scheme: str, padding_idx: int | None) -> torch.Tensor:
    """The positions a plain encoder gives the text alone (no label slots): decoupled mode's text."""
    return reference_position_ids(text_ids, 0, scheme, padding_idx)


def label_position_ids(label_ids: torch.Tensor, mode: str, scheme: str, padding_idx: int | None) -> torch.Tensor:
    """Decoupled mode: the position id of each label in `label_ids` (`[n]`), as in the padded layout: label i
    at slot LABEL_START + i (`reference`) or every label at slot LABEL_START (`shared`)."""
    slot = LABEL_START + label_ids if mode == "reference" else torch.full_like(label_ids, LABEL_START)
    if scheme == "arange":
        return slot
    if scheme == "after_padding_idx":
        return slot + padding_idx + 1
    raise ValueError(f"unknown position scheme {scheme!r}")


@dataclass
class Packing:
    """How a padded `[B, S]` batch maps to one unpadded sequence of `total` real tokens."""

    rows: torch.Tensor  # [total]: flat index into [B * S] of each real token, in order
    cu_seqlens: torch.Tensor  # int32 [B + 1]: where each sequence starts in the packed row
    host_offsets: list[int]  # cu_seqlens on the host
    max_seqlen: int
    text_rows: torch.Tensor  # [total - B * N]: flat index into the [B, T] text ids of each real text token
    text_cu_seqlens: torch.Tensor  # int64 [B + 1]: the same offsets without the label rows (packed text ids)
    label_rows: torch.Tensor  # [B, N]: packed row of label i of sequence b


def pack(attention_mask: torch.Tensor, num_labels: int) -> Packing:
    """Packing of a `[B, T + N]` mask whose label slots sit at LABEL_START..LABEL_START + N - 1 (always real).

    One host read, of the B + 1 offsets: the packed sizes are data, and the kernels want the longest sequence
    as a host int. The real rows are then gathered with `nonzero_static`, which needs no second read."""
    real = attention_mask.bool()
    lengths = real.sum(dim=1)
    cu_seqlens = torch.zeros(lengths.shape[0] + 1, dtype=torch.int32, device=attention_mask.device)
    cu_seqlens[1:] = torch.cumsum(lengths, 0)
    host_offsets = cu_seqlens.tolist()  # the packed path's one host sync
    total = host_offsets[-1]
    batch = lengths.shape[0]
    sequence_index = torch.arange(batch + 1, device=attention_mask.device)
    text_cu_seqlens = cu_seqlens.long() - sequence_index * num_labels
    text_real = torch.cat([real[:, :LABEL_START], real[:, LABEL_START + num_labels:]], dim=1)
    return Packing(
        rows=torch.nonzero_static(real.reshape(-1), size=total).squeeze(1),
        cu_seqlens=cu_seqlens,
        host_offsets=host_offsets,
        max_seqlen=max((b - a for a, b in zip(host_offsets, host_offsets[1:])), default=0),
        text_rows=torch.nonzero_static(text_real.reshape(-1), size=total - batch * num_labels).squeeze(1),
        text_cu_seqlens=text_cu_seqlens,
        label_rows=packed_label_rows(text_cu_seqlens, num_labels),
    )


def unpack(packed: torch.Tensor, packing: Packing, batch: int, seq_len: int) -> torch.Tensor:
    """`[total, ...]` packed rows back to `[batch, seq_len, ...]`, zeros at the padding."""
    padded = packed.new_zeros(batch * seq_len, *packed.shape[1:])
    padded[packing.rows] = packed
    return padded.view(batch, seq_len, *packed.shape[1:])


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
