"""Fine-tuning with `transformers.Trainer`: the demo's and the accuracy report's fixed schedule, and the
`ltc-fast train` run (periodic dev evaluation, best checkpoint by dev micro-F1)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoTokenizer, Trainer, TrainingArguments, set_seed

from .. import checkpoints, distributed
from ..batching import LabelTokenCollator, tokenize_texts
from ..config import MULTI_LABEL, LtcConfig, normalize_problem_type
from ..layout import label_slots
from ..modeling import AutoModelForTokenSequenceClassification
from .datafiles import LabeledData
from .evaluation import classification_metrics, evaluate, report_from_probas, tuned_thresholds
from .output import write_json
from .provenance import provenance


@dataclass
class Schedule:
    epochs: float = 2.0
    batch_size: int = 16
    lr: float = 3e-4
    seed: int = 0
    logging_steps: int = 50


def as_examples(encoded, labels) -> list[dict]:
    """Tokenizer output (lists) + targets -> the list of dicts the Trainer and the collator take."""
    return [{"input_ids": ids, "attention_mask": mask, "labels": target}
            for ids, mask, target in zip(encoded["input_ids"], encoded["attention_mask"], labels)]


def training_arguments(output_dir: str, *, epochs: float, batch_size: int, lr: float, seed: int, bf16: bool,
                       warmup_ratio: float = 0.1, weight_decay: float = 0.01, eval_batch_size: int = 64,
                       **extra) -> TrainingArguments:
    """AdamW with linear decay after a warm-up, on the GPU when there is one, with a progress bar."""
    return TrainingArguments(
        output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size, learning_rate=lr, warmup_steps=warmup_ratio,
        weight_decay=weight_decay, seed=seed, use_cpu=not torch.cuda.is_available(), bf16=bf16, report_to=[],
        remove_unused_columns=False,
        disable_tqdm=False,  # a progress bar even when transformers logging is quietened
        # Under torchrun / accelerate (DDP): every parameter gets a gradient in every step (no pooler), so
        # skip DDP's per-step search for unused ones (the Trainer's default is to search).
        ddp_find_unused_parameters=False,
        **extra,
    )


def fine_tune(model, train_examples, collator, schedule: Schedule, output_dir: str) -> tuple[Trainer, float]:
    """Train with AdamW, linear decay after 10% warm-up, weight decay 0.01; return the trainer and seconds."""
    args = training_arguments(output_dir, epochs=schedule.epochs, batch_size=schedule.batch_size, lr=schedule.lr,
                              seed=schedule.seed, bf16=torch.cuda.is_available(), save_strategy="no",
                              logging_steps=schedule.logging_steps)
    trainer = Trainer(model=model, args=args, train_dataset=train_examples, data_collator=collator)
    start = time.perf_counter()
    trainer.train()
    return trainer, time.perf_counter() - start


@dataclass
class TrainOptions:
    """The `ltc-fast train` schedule. `eval_steps=None` evaluates (and checkpoints) once per epoch."""
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 16
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0
    eval_steps: int | None = None
    logging_steps: int = 50
    bf16: bool = False
    threshold: float = 0.5  # multi-label decision threshold of the dev metrics


def train_with_dev(model, train_examples, dev_examples, collator: LabelTokenCollator, options: TrainOptions,
                   output_dir: str) -> Trainer:
    """Train, evaluating on dev every epoch (or every `eval_steps`); the model ends with the weights of the
    evaluation with the best dev micro-F1. Checkpoints go to `output_dir`."""
    if options.bf16 and not torch.cuda.is_available():
        raise ValueError("bf16 training needs a CUDA device; none is available")
    strategy = "steps" if options.eval_steps else "epoch"
    args = training_arguments(
        output_dir, epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, seed=options.seed,
        bf16=options.bf16, warmup_ratio=options.warmup_ratio, weight_decay=options.weight_decay,
        eval_batch_size=options.eval_batch_size, max_steps=options.max_steps,
        gradient_accumulation_steps=options.gradient_accumulation_steps, logging_steps=options.logging_steps,
        eval_strategy=strategy, save_strategy=strategy, eval_steps=options.eval_steps, save_steps=options.eval_steps,
        load_best_model_at_end=True, metric_for_best_model="micro_f1", greater_is_better=True,
        save_total_limit=1, save_only_model=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_examples, eval_dataset=dev_examples,
                      data_collator=collator,
                      compute_metrics=classification_metrics(model.config.problem_type, options.threshold))
    trainer.train()
    return trainer


def evaluation_history(trainer: Trainer) -> list[dict]:
    """The dev metrics of every evaluation during training, with their step and epoch."""
    history = []
    for entry in trainer.state.log_history:
        if "eval_micro_f1" in entry:
            metrics = {k[len("eval_"):]: v for k, v in entry.items() if k.startswith("eval_")}
            history.append({"step": entry.get("step"), "epoch": entry.get("epoch"), **metrics})
    return history


def pretrained_label_names(model_source: str) -> list[str] | None:
    """The label names saved with an ltc_fast or a reference checkpoint (in their order: the label rows
    follow it); None for an encoder (or an unreadable source, which loading reports properly)."""
    try:
        config = AutoConfig.from_pretrained(model_source)
    except (OSError, ValueError):
        return None
    if isinstance(config, LtcConfig):
        return config.label_names
    if checkpoints.is_reference_checkpoint(model_source):
        return checkpoints.reference_label_names(config) or None
    return None


def train_classifier(model_source: str, train: LabeledData, dev: LabeledData, out_dir: str, options: TrainOptions,
                     problem_type: str = MULTI_LABEL, max_length: int = 128, test: LabeledData | None = None,
                     tune_thresholds: bool = False, model_options: dict | None = None,
                     record: dict | None = None) -> dict:
    """Fine-tune `model_source` (an encoder, an ltc_fast or a reference checkpoint) on `train`, keep the
    checkpoint with the best dev micro-F1, optionally tune per-label thresholds on dev, and save into
    `out_dir`: the model (safetensors, config with label names and thresholds), its tokenizer, `labels.txt`
    and `metrics.json` (dev metrics of every evaluation, the best step, final dev / test reports, `record`
    and provenance). Returns what `metrics.json` holds (None on the other ranks of a torchrun launch)."""
    problem_type = normalize_problem_type(problem_type)
    names = train.label_names
    set_seed(options.seed)  # the new head and label rows are drawn before the Trainer seeds anything
    tokenizer = AutoTokenizer.from_pretrained(model_source)
    model = AutoModelForTokenSequenceClassification.from_pretrained(
        model_source, label_names=names, problem_type=problem_type, tokenizer=tokenizer, **(model_options or {}))
    collator = LabelTokenCollator(tokenizer, len(names), problem_type)

    def examples(data: LabeledData) -> list[dict]:
        ids = tokenize_texts(tokenizer, data.texts, len(names), max_length, label_positions=model.config.label_positions,
                             label_attention=model.config.label_attention)
        return as_examples(ids, data.targets(problem_type))

    checkpoints_dir = os.path.join(out_dir, "checkpoints")
    start = time.perf_counter()
    trainer = train_with_dev(model, examples(train), examples(dev), collator, options, checkpoints_dir)
    train_seconds = time.perf_counter() - start
    distributed.barrier()  # under torchrun: every rank has loaded the best checkpoint before they are deleted
    if not distributed.is_main_process():
        return None  # rank 0 evaluates and writes the model directory
    shutil.rmtree(checkpoints_dir, ignore_errors=True)
    model = trainer.model

    threshold = None if problem_type != MULTI_LABEL else options.threshold
    dev_report, dev_probas = evaluate(model, tokenizer, dev, threshold, options.eval_batch_size, max_length)
    if tune_thresholds:
        model.config.label_thresholds = tuned_thresholds(model.config, dev_probas, dev)
        dev_report = report_from_probas(model.config, dev_probas, dev)
    test_report = None
    if test is not None:
        test_threshold = None if tune_thresholds else threshold
        test_report = evaluate(model, tokenizer, test, test_threshold, options.eval_batch_size, max_length)[0]

    model.save_pretrained(out_dir)
    # The text budget as the tokenizer's limit: pipeline(..., truncation=True) then cuts texts as training did.
    slots = label_slots(len(names), model.config.label_positions, model.config.label_attention)
    tokenizer.model_max_length = min(tokenizer.model_max_length, max_length - slots)
    tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "labels.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name in names))
    metrics = {
        "evaluations": evaluation_history(trainer),
        "best_step": trainer.state.best_global_step,
        "best_dev_micro_f1": trainer.state.best_metric,
        "train_seconds": train_seconds,
        "dev": dev_report,
        "test": test_report,
        "label_thresholds": model.config.label_thresholds,
        **(record or {}),
        "provenance": provenance(),
    }
    write_json(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics
