"""From texts to model batches: tokenization with the reference's truncation budget, and batch collation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import MULTI_LABEL, normalize_problem_type
from .layout import label_slots


def tokenize_texts(tokenizer, texts, num_labels: int, max_length: int = 512, padding=False, return_tensors=None,
                   label_positions: str = "reference", label_attention: str = "full"):
    """Tokenize plain texts (special tokens, no label tokens) keeping the reference's budget: the N labels
    count against `max_length`, so each text keeps at most `max_length - num_labels - 2` word pieces. The
    model's input is then exactly the reference's with the label block removed. With shared label
    positions the labels take one position; in decoupled mode none (pass the model's config values)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be an int >= 1, got {num_labels!r}")
    special = tokenizer.num_special_tokens_to_add(pair=False)
    slots = label_slots(num_labels, label_positions, label_attention)
    if max_length - slots - special < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for text: {num_labels} labels ({slots} positions) and "
            f"{special} special tokens already take {slots + special} positions"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] must be a string, got {type(text).__name__}")
    return tokenizer(list(texts), truncation=True, max_length=max_length - slots, padding=padding,
                     return_tensors=return_tensors)


@dataclass
class LabelTokenCollator:
    """Pads tokenized examples and stacks their labels.

    Each example is a dict with `input_ids` (and optionally `attention_mask`, `token_type_ids`) and
    `labels`: for multi-label a list of label indices (made multi-hot) or a length-N 0/1 vector; for
    single-label a class id.
    """

    tokenizer: object
    num_labels: int
    problem_type: str = MULTI_LABEL

    def __post_init__(self):
        self.problem_type = normalize_problem_type(self.problem_type)

    def __call__(self, examples: list[dict]) -> dict:
        features = [{k: v for k, v in ex.items() if k != "labels"} for ex in examples]
        batch = self.tokenizer.pad(features, return_tensors="pt")
        if all("labels" in ex for ex in examples):
            batch["labels"] = torch.stack([self.target(ex["labels"]) for ex in examples])
        return dict(batch)

    def target(self, labels) -> torch.Tensor:
        """One example's labels as the loss takes them: a multi-hot float row, or a class id."""
        if self.problem_type != MULTI_LABEL:
            return torch.as_tensor(labels, dtype=torch.long)
        labels = torch.as_tensor(labels)
        if labels.dim() == 1 and labels.numel() == self.num_labels and labels.is_floating_point():
            return labels.float()
        multi_hot = torch.zeros(self.num_labels)
        if labels.numel():
            if labels.min() < 0 or labels.max() >= self.num_labels:
                raise ValueError(f"label index out of range [0, {self.num_labels - 1}]: {labels.tolist()}")
            multi_hot[labels.long()] = 1.0
        return multi_hot
