"""The accuracy study: does labels-as-tokens pay? all-MiniLM-L6-v2 fine-tuned on GoEmotions by every contender
with one schedule, over seeds, to convergence (shown by the dev learning curves).

Tasks: `multi` (GoEmotions, 28 labels, multi-label, sigmoid + BCE) and `single` (the GoEmotions examples that
have exactly one label, as 28-class single-label classification, softmax + CE).

Contenders (same encoder weights, same data subset, same data order per seed, same optimiser and schedule):
  cls-head          AutoModelForSequenceClassification (the [CLS] pooler + Linear(hidden, N))
  mean-pool         mean of the text's last hidden states + Linear(hidden, N)
  reference         the reference method (label tokens in the tokenizer and in input_ids)
  ltc-random, ltc-avg, ltc-label_name, ltc-cls
                    ltc_fast with each `label_init`
  ltc-layer4        ltc_fast reading hidden layer 4 of 6 (the two upper layers are dropped), random init

Every finished run appends one JSON line (plan, task, contender, seed, curve, final metrics, per-label rows,
wall time, provenance) to the results file; a restarted study skips what is there. `--summary` renders the
tables (mean ± std over seeds, paired differences against the [CLS] head), the learning curves and the bar
chart from whatever the file holds.

    python -m bench.accuracy --pilot --workers 2  # first: the convergence pilot that sets the study's schedule
    python -m bench.accuracy --study              # the study (hours on 2 CPU cores; minutes on a GPU)
    python -m bench.accuracy --study --workers 2  # the same in two processes of one thread each
    python -m bench.accuracy --summary --docs     # tables + plots; rewrite the section of docs/accuracy.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import random
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)
from transformers import logging as hf_logging
from transformers.modeling_outputs import SequenceClassifierOutput

from ltc_fast import (
    AutoModelForTokenSequenceClassification,
    LabelTokenCollator,
    tokenize_texts,
)
from ltc_fast.app.demo import bundled_minilm_path
from ltc_fast.app.evaluation import (
    multilabel_report,
    single_label_report,
    tune_label_thresholds,
)
from ltc_fast.app.goemotions import goemotions_label_names, load_goemotions
from ltc_fast.app.provenance import provenance
from ltc_fast.config import MULTI_LABEL, SINGLE_LABEL
from ltc_fast.reference import ReferenceLabelTokenModel, reference_tokenize

from .report import DOCS, RESULTS_DIR, link_from, replace_section

TASKS = {"multi": MULTI_LABEL, "single": SINGLE_LABEL}
LABEL_INIT_CONTENDERS = ("ltc-random", "ltc-avg", "ltc-label_name", "ltc-cls")
CONTENDERS = ("cls-head", "mean-pool", "reference", *LABEL_INIT_CONTENDERS, "ltc-layer4")
BASELINE = "cls-head"
STRONGEST_HEAD = "mean-pool"  # the second yardstick: label tokens against the better of the two plain heads
# The single-label task asks the head-versus-label-tokens question again with a softmax (the two heads
# against label tokens with the label-name initialisation); the four initialisations, the reference and
# the intermediate layer are compared on the multi-label task only (the CPU budget does not fit them twice).
TASK_CONTENDERS = {"multi": CONTENDERS, "single": ("cls-head", "mean-pool", "ltc-label_name")}
HEADLINE_METRICS = {"multi": ("micro_f1", "macro_f1", "roc_auc"), "single": ("accuracy", "macro_f1", "roc_auc")}
RESULTS_FILE = RESULTS_DIR / "accuracy-study.jsonl"


@dataclass(frozen=True)
class Plan:
    """Everything that makes two runs comparable. Runs recorded under another plan are kept but not mixed."""
    train_size: int = 4000
    dev_size: int = 500
    test_size: int = 1000
    steps: int = 500
    batch_size: int = 8  # the pilot's finding: updates, not examples, are what the label tokens lack
    lr: float = 1e-4  # the encoder and the label embeddings: between the heads' (5e-5) and label tokens' (2e-4) best
    head_lr: float = 1e-2  # the classifier layers (see parameter_groups)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 96  # labels included, as in the reference: texts keep max_length - N - 2 word pieces
    curve_points: int = 5
    hidden_layer: int = 4
    seeds: tuple[int, ...] = (0, 1, 2)
    data_seed: int = 0  # the subsets are fixed, so the spread over seeds is training noise only

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    def curve_steps(self) -> list[int]:
        return sorted({round(self.steps * (i + 1) / self.curve_points) for i in range(self.curve_points)})


# ---------------------------------------------------------------------------------------------------- data
def task_split(task: str, split: str, size: int, seed: int):
    """Texts and targets (multi-hot rows, or class ids) of a seeded subset of one GoEmotions split."""
    texts, labels = load_goemotions(split)
    if task == "single":
        kept = [i for i, row in enumerate(labels) if len(row) == 1]
        texts, labels = [texts[i] for i in kept], [labels[i][0] for i in kept]
    if size < len(texts):
        chosen = random.Random(seed).sample(range(len(texts)), size)
        texts, labels = [texts[i] for i in chosen], [labels[i] for i in chosen]
    return texts, labels


def target_matrix(labels, num_labels: int, task: str) -> np.ndarray:
    if task == "single":
        return np.asarray(labels, dtype=np.int64)
    targets = np.zeros((len(labels), num_labels), dtype=np.int64)
    for row, label_ids in enumerate(labels):
        targets[row, label_ids] = 1
    return targets


# ---------------------------------------------------------------------------------------------------- models
class MeanPoolingClassifier(nn.Module):
    """The mean-pooling baseline: the average of the text's last hidden states, dropout, Linear(hidden, N)."""

    def __init__(self, encoder, num_labels: int, problem_type: str):
        super().__init__()
        self.encoder, self.problem_type = encoder, problem_type
        self.dropout = nn.Dropout(encoder.config.hidden_dropout_prob)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=encoder.config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, attention_mask, labels=None, **_):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = (F.binary_cross_entropy_with_logits(logits, labels.float()) if self.problem_type == MULTI_LABEL
                    else F.cross_entropy(logits, labels))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def build_contender(contender: str, names: list[str], task: str, seed: int, plan: Plan, model_path: str):
    """The contender's model at its initial weights (drawn under `seed`), and its tokenizer and encode function
    (texts -> lists of input ids; the text keeps the same word pieces in every contender)."""
    problem_type = TASKS[task]
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def encode(texts):
        return tokenize_texts(tokenizer, texts, len(names), max_length=plan.max_length)

    if contender == "cls-head":
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(names),
                                                                   problem_type=problem_type)
    elif contender == "mean-pool":
        model = MeanPoolingClassifier(AutoModel.from_pretrained(model_path), len(names), problem_type)
    elif contender == "reference":
        model = ReferenceLabelTokenModel.from_encoder(AutoModel.from_pretrained(model_path), names, problem_type,
                                                      tokenizer=tokenizer)

        def encode(texts):
            return reference_tokenize(tokenizer, texts, names, plan.max_length, padding=False, return_tensors=None)
    elif contender in LABEL_INIT_CONTENDERS or contender == "ltc-layer4":
        options = ({"label_init": contender.split("-", 1)[1]} if contender in LABEL_INIT_CONTENDERS
                   else {"label_init": "random", "hidden_layer": plan.hidden_layer})
        model = AutoModelForTokenSequenceClassification.from_pretrained(
            model_path, label_names=names, problem_type=problem_type, tokenizer=tokenizer, **options)
    else:
        raise ValueError(f"contender must be one of {CONTENDERS}, got {contender!r}")
    return model, tokenizer, encode


# ---------------------------------------------------------------------------------------------------- training
def probabilities(model, examples, collator, task: str, batch_size: int = 64) -> np.ndarray:
    """Eval-mode probabilities of `examples` (batched by length, returned in their order)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    rows = [None] * len(examples)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = collator([{k: v for k, v in examples[i].items() if k != "labels"} for i in chunk])
            logits = model(**batch)["logits"].double()
            probas = torch.sigmoid(logits) if task == "multi" else torch.softmax(logits, dim=-1)
            for i, row in zip(chunk, probas.numpy()):
                rows[i] = row
    model.train()
    return np.stack(rows)


def dev_metrics(probas, targets, names, task):
    return (multilabel_report(probas, targets, names, 0.5) if task == "multi"
            else single_label_report(probas, targets, names))["metrics"]


def parameter_groups(model, plan: Plan) -> list[dict]:
    """AdamW groups: every contender's classifier layer (`classifier.*`: the [CLS] / mean-pool heads'
    Linear(hidden, N), the label-token models' shared Linear(hidden, 1)) at `head_lr`, everything else (the
    encoder, and the label embeddings, ltc_fast's table as the reference's vocabulary rows) at `lr`; no weight
    decay on biases and norms. A head at the encoder's rate barely moves in a few hundred steps: a linear
    probe on frozen all-MiniLM features reaches dev ROC-AUC 0.54 after 150 Adam steps at 1e-3 and 0.70 at
    1e-2 (0.80 fully fitted), so the [CLS] head would stay at the label prior."""
    groups = {}
    for name, parameter in model.named_parameters():
        lr = plan.head_lr if name.startswith("classifier.") else plan.lr
        decay = plan.weight_decay if parameter.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def train_run(plan: Plan, task: str, contender: str, seed: int, model_path: str, data: dict) -> dict:
    """One contender trained with the study's schedule; its dev curve, its final dev and test reports."""
    names = data["names"]
    model, tokenizer, encode = build_contender(contender, names, task, seed, plan, model_path)
    collator = LabelTokenCollator(tokenizer, len(names), TASKS[task])
    examples = {}
    for split, (texts, labels) in data["splits"].items():
        encoded = encode(texts)
        examples[split] = [{"input_ids": ids, "attention_mask": mask, "labels": target}
                           for ids, mask, target in zip(encoded["input_ids"], encoded["attention_mask"], labels)]
    targets = {split: target_matrix(labels, len(names), task) for split, (_, labels) in data["splits"].items()}

    # Same data order for every contender of a seed: epochs of a seeded permutation.
    generator = torch.Generator().manual_seed(seed)
    epochs = math.ceil(plan.steps * plan.batch_size / len(examples["train"]))
    order = torch.cat([torch.randperm(len(examples["train"]), generator=generator) for _ in range(epochs)]).tolist()

    optimizer = torch.optim.AdamW(parameter_groups(model, plan), lr=plan.lr, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(plan.warmup_ratio * plan.steps), plan.steps)
    torch.manual_seed(seed)  # dropout masks
    model.train()
    curve, losses, train_seconds, eval_seconds = [], [], 0.0, 0.0
    for step in range(1, plan.steps + 1):
        start = time.perf_counter()
        chunk = order[(step - 1) * plan.batch_size: step * plan.batch_size]
        loss = model(**collator([examples["train"][i] for i in chunk]))["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        train_seconds += time.perf_counter() - start
        if step in plan.curve_steps():
            start = time.perf_counter()
            dev_probas = probabilities(model, examples["dev"], collator, task)
            eval_seconds += time.perf_counter() - start
            curve.append({"step": step, "train_loss": statistics.fmean(losses),
                          **dev_metrics(dev_probas, targets["dev"], names, task)})
            losses = []
            print(f"  {task} {contender} seed {seed} step {step}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in curve[-1].items() if k != "step"), flush=True)

    start = time.perf_counter()
    test_probas = probabilities(model, examples["test"], collator, task)
    if task == "multi":  # dev_probas: the last curve point, at the end of training
        thresholds = tune_label_thresholds(dev_probas, targets["dev"])
        test = multilabel_report(test_probas, targets["test"], names, thresholds)
        test_at_half = multilabel_report(test_probas, targets["test"], names, 0.5)["metrics"]
    else:
        thresholds, test = None, single_label_report(test_probas, targets["test"], names)
        test_at_half = None
    eval_seconds += time.perf_counter() - start
    return {"curve": curve, "test": test["metrics"], "test_per_label": test["per_label"],
            "test_at_threshold_0.5": test_at_half, "dev_thresholds": thresholds,
            "train_seconds": train_seconds, "eval_seconds": eval_seconds,
            "parameters": sum(p.numel() for p in model.parameters())}


# ---------------------------------------------------------------------------------------------------- the study
def planned_runs(plan: Plan, tasks) -> list[tuple[str, str, int]]:
    """Seed-major order, so that an interrupted study has whole seeds of every contender first."""
    return [(task, contender, seed) for seed in plan.seeds for task in tasks for contender in TASK_CONTENDERS[task]]


def read_records(path: Path = RESULTS_FILE) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_task_data(plan: Plan, task: str) -> dict:
    sizes = {"train": plan.train_size, "dev": plan.dev_size, "test": plan.test_size}
    return {"names": goemotions_label_names(),
            "splits": {split: task_split(task, split, size, plan.data_seed) for split, size in sizes.items()}}


def _worker(plan: Plan, runs, model_path: str, path: Path, threads: int, meta: dict) -> None:
    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()
    data = {}
    for task, contender, seed in runs:
        data.setdefault(task, load_task_data(plan, task))
        start = time.perf_counter()
        result = train_run(plan, task, contender, seed, model_path, data[task])
        record = {"plan": asdict(plan), "plan_id": plan.fingerprint(), "task": task, "contender": contender,
                  "seed": seed, **result, "wall_seconds": time.perf_counter() - start, "threads": threads,
                  "provenance": meta}
        with open(path, "a", encoding="utf-8") as f:  # one write per line: safe with several workers
            f.write(json.dumps(record) + "\n")


def run_study(plan: Plan, tasks, model_path: str, workers: int, path: Path = RESULTS_FILE,
              contenders=None) -> None:
    """Train every planned run (or those of `contenders`) not yet recorded under this plan in `path`."""
    done = {(r["task"], r["contender"], r["seed"]) for r in read_records(path) if r["plan_id"] == plan.fingerprint()}
    todo = [run for run in planned_runs(plan, tasks) if run not in done and (contenders is None or run[1] in contenders)]
    print(f"accuracy study {plan.fingerprint()}: {len(done)} runs recorded, {len(todo)} to go -> {path}", flush=True)
    meta = provenance()  # once, at the start: the commit whose code the workers load, whatever HEAD does later
    if workers == 1:
        _worker(plan, todo, model_path, path, torch.get_num_threads(), meta)
        return
    context = multiprocessing.get_context("spawn")
    # Daemonic workers, and SIGTERM as an exit: stopping the study (kill PID) stops its workers too, rather
    # than leaving them training (and appending records) in the background.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    processes = [context.Process(target=_worker, args=(plan, todo[i::workers], model_path, path, 1, meta),
                                 daemon=True)
                 for i in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise SystemExit(f"{len(failed)} study worker(s) failed (exit codes {failed}); rerun to resume")


# ---------------------------------------------------------------------------------------------------- summary
def _mean_std(values) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class Summary:
    plan: dict
    records: list[dict] = field(default_factory=list)

    def runs(self, task, contender):
        return sorted((r for r in self.records if r["task"] == task and r["contender"] == contender),
                      key=lambda r: r["seed"])

    def contenders(self, task):
        return [c for c in TASK_CONTENDERS[task] if self.runs(task, c)]


def summarize(records: list[dict], plan_id: str | None = None) -> Summary:
    """The records of one plan (default: the plan with the most records)."""
    if not records:
        raise SystemExit(f"no study records in {RESULTS_FILE}; run `python -m bench.accuracy --study` first")
    counts = {}
    for record in records:
        counts[record["plan_id"]] = counts.get(record["plan_id"], 0) + 1
    plan_id = plan_id or max(counts, key=counts.get)
    chosen = [r for r in records if r["plan_id"] == plan_id]
    return Summary(plan=chosen[0]["plan"], records=chosen)


def paired_difference(summary: Summary, task: str, contender: str, metric: str, baseline: str = BASELINE):
    """Per-seed differences contender - baseline on the seeds both have; mean, std, wins and the paired
    t-test's p-value (scipy), or None where fewer than two seeds pair up."""
    from scipy.stats import ttest_rel

    base = {r["seed"]: r["test"][metric] for r in summary.runs(task, baseline)}
    mine = {r["seed"]: r["test"][metric] for r in summary.runs(task, contender)}
    seeds = sorted(base.keys() & mine.keys())
    if len(seeds) < 2:
        return None
    diffs = [mine[s] - base[s] for s in seeds]
    mean, std = _mean_std(diffs)
    p = float(ttest_rel([mine[s] for s in seeds], [base[s] for s in seeds]).pvalue) if std > 0 else float("nan")
    return {"seeds": seeds, "mean": mean, "std": std, "wins": sum(d > 0 for d in diffs), "p": p}


def markdown(summary: Summary, link: str, figures: dict[str, str], command: str = "--study") -> str:
    plan = summary.plan
    lines = [
        (f"all-MiniLM-L6-v2 on GoEmotions; {plan['train_size']:,} train / {plan['dev_size']:,} dev / "
        f"{plan['test_size']:,} test examples per task (fixed subsets), {plan['steps']} steps of batch "
        f"{plan['batch_size']}, AdamW lr {plan['lr']:g} for the encoder and label embeddings, {plan['head_lr']:g} for the classifier layers (10% warm-up, linear decay, weight decay "
        f"{plan['weight_decay']:g}), max_length {plan['max_length']} (labels included); seeds {plan['seeds']}. "
        f"Test metrics, mean ± std over seeds; multi-label F1 at per-label thresholds tuned on dev. "
        f"{summary.records[0]['provenance']['device']}; `python -m bench.accuracy {command}`, records in "
        f"[{Path(link).name}]({link})."),
    ]
    for task in TASKS:
        contenders = summary.contenders(task)
        if not contenders:
            continue
        metrics = HEADLINE_METRICS[task]
        description = ("28 labels, sigmoid + BCE" if task == "multi"
                       else "28 classes, the examples with exactly one label, softmax + CE")
        lines += ["", f"**{task}-label task** ({description})", "",
                  "| contender | seeds | " + " | ".join(f"test {m}" for m in metrics)
                  + f" | Δ macro-F1 vs {BASELINE} (paired) | Δ macro-F1 vs {STRONGEST_HEAD} (paired) "
                  "| dev macro-F1 over the last third | train s/run |",
                  "| --- | --- | " + " | ".join("---" for _ in metrics) + " | --- | --- | --- | --- |"]
        for contender in contenders:
            runs = summary.runs(task, contender)
            cells = [f"{m:.3f} ± {s:.3f}" for m, s in (_mean_std([r["test"][k] for r in runs]) for k in metrics)]
            diffs = [_paired_cell(summary, task, contender, baseline) for baseline in (BASELINE, STRONGEST_HEAD)]
            lines.append(f"| {contender} | {len(runs)} | " + " | ".join(cells + diffs) + " | "
                         f"{_late_gain(runs):+.3f} | {statistics.fmean(r['train_seconds'] for r in runs):.0f} |")
    lines += ["", ("The *last third* column is the mean change of the dev macro-F1 between the curve point at two "
              "thirds of training and the last one: near zero means the curve has flattened."), ""]
    lines += [f"![{name}]({path})" for name, path in figures.items()]
    lines += ["", per_label_table(summary)]
    return "\n".join(lines)


def _paired_cell(summary: Summary, task: str, contender: str, baseline: str) -> str:
    diff = paired_difference(summary, task, contender, "macro_f1", baseline) if contender != baseline else None
    return (f"{diff['mean']:+.3f} ± {diff['std']:.3f} ({diff['wins']}/{len(diff['seeds'])} seeds up, "
            f"p={diff['p']:.2g})" if diff else "")


def _late_gain(runs) -> float:
    gains = []
    for run in runs:
        curve = run["curve"]
        two_thirds = min(curve, key=lambda point: abs(point["step"] - curve[-1]["step"] * 2 / 3))
        gains.append(curve[-1]["macro_f1"] - two_thirds["macro_f1"])
    return statistics.fmean(gains)


def per_label_table(summary: Summary) -> str:
    """Multi-label test F1 of each label (thresholds tuned on dev), mean over seeds, per contender."""
    contenders = summary.contenders("multi")
    if not contenders:
        return ""
    rows = {c: [r["test_per_label"] for r in summary.runs("multi", c)] for c in contenders}
    names = [row["label"] for row in next(iter(rows.values()))[0]]
    support = [row["support"] for row in next(iter(rows.values()))[0]]
    lines = ["<details><summary>Per-label test F1 (multi-label, mean over seeds, thresholds tuned on dev)</summary>",
             "", "| label | support | " + " | ".join(contenders) + " |", "| --- | --- | " + " | ".join(
                 "---" for _ in contenders) + " |"]
    for i, name in enumerate(names):
        cells = [f"{statistics.fmean(run[i]['f1'] for run in rows[c]):.2f}" for c in contenders]
        lines.append(f"| {name} | {support[i]} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "</details>"])


def plot(summary: Summary, stem: Path) -> dict[str, Path]:
    """Learning curves (dev macro-F1 against steps, mean ± std band over seeds) and a bar chart of the test
    metrics with std error bars, one row per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if summary.contenders(t)]
    paths = {"learning curves": stem.with_name(stem.name + "-curves.png"),
             "test metrics": stem.with_name(stem.name + "-bars.png")}
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for contender in summary.contenders(task):
            runs = summary.runs(task, contender)
            steps = [p["step"] for p in runs[0]["curve"]]
            values = np.array([[p["macro_f1"] for p in r["curve"]] for r in runs if len(r["curve"]) == len(steps)])
            mean, std = values.mean(0), values.std(0, ddof=1) if len(values) > 1 else np.zeros(len(steps))
            ax.plot(steps, mean, marker="o", ms=3, label=contender)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
        ax.set(title=f"{task}-label: dev macro-F1 (threshold 0.5 / argmax)", xlabel="training step",
               ylabel="dev macro-F1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths["learning curves"], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        contenders, metrics = summary.contenders(task), HEADLINE_METRICS[task]
        width = 0.8 / len(contenders)
        for i, contender in enumerate(contenders):
            stats = [_mean_std([r["test"][m] for r in summary.runs(task, contender)]) for m in metrics]
            ax.bar(np.arange(len(metrics)) + i * width, [m for m, _ in stats], width, yerr=[s for _, s in stats],
                   capsize=2, label=contender)
        ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, metrics)
        ax.set(title=f"{task}-label: test metrics (mean ± std over seeds)", ylim=(0, 1))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths["test metrics"], dpi=110)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------------- pilot
PILOT_FILE = RESULTS_DIR / "accuracy-pilot.jsonl"
# The schedules the pilot compares: (encoder and label-embedding lr, classifier-layer lr).
PILOT_SCHEDULES = ((5e-5, 1e-2), (2e-4, 1e-2))
PILOT_CONTENDERS = ("cls-head", "mean-pool", "ltc-random", "ltc-label_name")


def pilot_plan(lr: float, head_lr: float) -> Plan:
    """One seed, twice the study's steps, a dev point every 100 steps: where does each contender flatten?"""
    return Plan(steps=600, curve_points=6, lr=lr, head_lr=head_lr, seeds=(0,), batch_size=16, dev_size=600)


def run_pilot(model_path: str, workers: int, path: Path = PILOT_FILE) -> None:
    for lr, head_lr in PILOT_SCHEDULES:
        run_study(pilot_plan(lr, head_lr), ["multi"], model_path, workers, path, contenders=PILOT_CONTENDERS)


def render_pilot(path: Path = PILOT_FILE) -> str:
    """The pilot's dev curves (macro-F1 and ROC-AUC against steps, a line per schedule) and their table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_records(path)
    if not records:
        raise SystemExit(f"no pilot records in {path}; run `python -m bench.accuracy --pilot` first")
    contenders = [c for c in CONTENDERS if any(r["contender"] == c for r in records)]
    schedules = sorted({(r["plan"]["lr"], r["plan"]["head_lr"]) for r in records})
    figure = path.with_name(path.stem + "-curves.png")
    fig, axes = plt.subplots(2, len(contenders), figsize=(4 * len(contenders), 6.5), squeeze=False, sharey="row")
    lines = ["| contender | lr (encoder / classifier) | " + " | ".join(
        f"step {p['step']}" for p in records[0]["curve"]) + " | test macro-F1 | test ROC-AUC |",
        "| --- | --- | " + " | ".join("---" for _ in records[0]["curve"]) + " | --- | --- |"]
    for column, contender in enumerate(contenders):
        for lr, head_lr in schedules:
            for record in (r for r in records if r["contender"] == contender
                           and (r["plan"]["lr"], r["plan"]["head_lr"]) == (lr, head_lr)):
                steps = [p["step"] for p in record["curve"]]
                for row, metric in enumerate(("macro_f1", "roc_auc")):
                    axes[row][column].plot(steps, [p[metric] for p in record["curve"]], marker="o", ms=3,
                                           label=f"lr {lr:g} / {head_lr:g}")
                lines.append(f"| {contender} | {lr:g} / {head_lr:g} | " + " | ".join(
                    f"{p['macro_f1']:.3f} ({p['roc_auc']:.2f})" for p in record["curve"])
                    + f" | {record['test']['macro_f1']:.3f} | {record['test']['roc_auc']:.3f} |")
        axes[0][column].set(title=contender, ylabel="dev macro-F1 (0.5)")
        axes[1][column].set(xlabel="training step", ylabel="dev ROC-AUC")
        for row in (0, 1):
            axes[row][column].grid(alpha=0.3)
        axes[0][column].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    page = DOCS / "accuracy.md"
    lines += ["", "Cells: dev macro-F1 at threshold 0.5 (dev ROC-AUC). " + (
        f"{records[0]['provenance']['device']}; `python -m bench.accuracy --pilot`, records in "
        f"[{path.name}]({link_from(page, path)})."), "", f"![pilot curves]({link_from(page, figure)})"]
    return "\n".join(lines)


def render_summary(docs: bool, path: Path = RESULTS_FILE, section: str = "accuracy-study",
                   command: str = "--study") -> str:
    summary = summarize(read_records(path))
    page = DOCS / "accuracy.md"
    figures = plot(summary, path.with_suffix(""))
    text = markdown(summary, link_from(page, path), {k: link_from(page, v) for k, v in figures.items()}, command)
    if docs:
        replace_section(section, text, page)
    return text


# ---------------------------------------------------------------------------------------------------- long run
# Where the study's curves have not flattened: the same schedule stretched to three times the steps (the decay
# with it), one seed, the two plain heads against the leading label-token initialisation.
LONG_FILE = RESULTS_DIR / "accuracy-long.jsonl"
LONG_CONTENDERS = ("cls-head", "mean-pool", "ltc-label_name")


def long_plan() -> Plan:
    return replace(Plan(), steps=3 * Plan.steps, curve_points=6, seeds=(0,))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", action="store_true", help="run (or resume) the study")
    parser.add_argument("--summary", action="store_true", help="tables and plots from the recorded runs")
    parser.add_argument("--pilot", action="store_true",
                        help="the convergence pilot (one seed, 600 steps, two schedules), then its table and plot")
    parser.add_argument("--long", action="store_true",
                        help="the convergence check: the study's schedule at 3x the steps, one seed, the two heads "
                             "and label-name label tokens (multi-label), then its table")
    parser.add_argument("--docs", action="store_true", help="with --summary: rewrite docs/accuracy.md's section")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=None,
                        help="with --study / --long: train only these (e.g. to split the runs between processes)")
    parser.add_argument("--workers", type=int, default=1, help="processes of one torch thread each (CPU)")
    parser.add_argument("--model", default=None, help="encoder path (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--full", action="store_true", help="all of GoEmotions' train and test splits (a GPU)")
    parser.add_argument("--steps", type=int, default=Plan.steps)
    parser.add_argument("--train-size", type=int, default=Plan.train_size)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Plan.seeds))
    args = parser.parse_args(argv)
    if not (args.study or args.summary or args.pilot or args.long):
        parser.error("say --pilot, --study, --long, --summary (or --study --summary)")
    if args.long:
        run_study(long_plan(), ["multi"], args.model or bundled_minilm_path(), args.workers, LONG_FILE,
                  contenders=[c for c in LONG_CONTENDERS if args.contenders is None or c in args.contenders])
        print(render_summary(args.docs, LONG_FILE, "accuracy-long", "--long"))
    if args.pilot:
        run_pilot(args.model or bundled_minilm_path(), args.workers)
        text = render_pilot()
        print(text)
        if args.docs:
            replace_section("accuracy-pilot", text, DOCS / "accuracy.md")
    if args.study:
        plan = Plan(steps=args.steps, train_size=args.train_size, seeds=tuple(args.seeds))
        if args.full:
            plan = Plan(steps=args.steps, train_size=10**6, dev_size=10**6, test_size=10**6, seeds=tuple(args.seeds))
        run_study(plan, args.tasks, args.model or bundled_minilm_path(), args.workers, contenders=args.contenders)
    if args.summary:
        print(render_summary(args.docs))


if __name__ == "__main__":
    main()
