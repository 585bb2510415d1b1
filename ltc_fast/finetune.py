"""Fine-tuning and evaluation with `transformers.Trainer`, shared by the demo and the accuracy report."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from .data import LabelTokenCollator, load_goemotions
from .metrics import multilabel_metrics


@dataclass
class Schedule:
    epochs: float = 2.0
    batch_size: int = 16
    lr: float = 3e-4
    seed: int = 0
    logging_steps: int = 50


def goemotions_subset(split: str, size: int | None, seed: int):
    """A seeded random subset of a GoEmotions split (all of it when `size` is None)."""
    texts, labels = load_goemotions(split)
    if size is None or size >= len(texts):
        return texts, labels
    order = random.Random(seed).sample(range(len(texts)), size)
    return [texts[i] for i in order], [labels[i] for i in order]


def as_examples(encoded, labels) -> list[dict]:
    """Tokenizer output (lists) + targets -> the list of dicts the Trainer and the collator take."""
    return [{"input_ids": ids, "attention_mask": mask, "labels": target}
            for ids, mask, target in zip(encoded["input_ids"], encoded["attention_mask"], labels)]


def fine_tune(model, train_examples, collator, schedule: Schedule, output_dir: str) -> tuple[Trainer, float]:
    """Train with AdamW, linear decay after 10% warm-up, weight decay 0.01; return the trainer and seconds."""
    args = TrainingArguments(
        output_dir=output_dir, num_train_epochs=schedule.epochs, per_device_train_batch_size=schedule.batch_size,
        per_device_eval_batch_size=64, learning_rate=schedule.lr, warmup_steps=0.1, weight_decay=0.01,
        seed=schedule.seed, use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
        report_to=[], save_strategy="no", logging_steps=schedule.logging_steps, remove_unused_columns=False,
        disable_tqdm=False,  # a progress bar even when transformers logging is quietened
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_examples, data_collator=collator)
    start = time.perf_counter()
    trainer.train()
    return trainer, time.perf_counter() - start


def evaluate_multilabel(trainer: Trainer, examples, collator: LabelTokenCollator, threshold: float) -> dict:
    """Metrics of `multilabel_metrics` on the sigmoid of the model's logits (its first output)."""
    predictions = trainer.predict(examples).predictions
    logits = predictions[0] if isinstance(predictions, tuple) else predictions
    probas = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    targets = np.stack([collator.target(ex["labels"]).numpy() for ex in examples])
    return multilabel_metrics(probas, targets, threshold=threshold)
