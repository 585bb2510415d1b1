"""Accuracy report: fine-tune all-MiniLM-L6-v2 on GoEmotions with (a) the reference method, (b) ltc_fast
and (c) a [CLS]-head AutoModelForSequenceClassification; same data, schedule and seeds. Reports micro/macro
F1, ROC-AUC (on probabilities) and subset accuracy on dev and test, and wall time, as mean ± std over seeds.

(a) and (b) start from the same weights (ltc_fast is converted from the reference's initial state), so any
difference between them comes from execution (dropout masks, summation order), i.e. seed noise.

    python -m bench.accuracy                 # CPU, ~35 min: 2,400 train / 1,000 dev / 1,000 test, seeds 0 1 2
    python -m bench.accuracy --full --epochs 3   # GPU: all of GoEmotions (43,410 / 5,426 / 5,427)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
from transformers import logging as hf_logging

from ltc_fast import AutoModelForTokenSequenceClassification, from_reference_state_dict
from ltc_fast.config import MULTI_LABEL
from ltc_fast import LabelTokenCollator, tokenize_texts
from ltc_fast.app.demo import bundled_minilm_path
from ltc_fast.app.evaluation import evaluate_multilabel
from ltc_fast.app.finetune import Schedule, as_examples, fine_tune
from ltc_fast.app.goemotions import goemotions_label_names, goemotions_subset
from ltc_fast.app.provenance import provenance
from ltc_fast.reference import ReferenceLabelTokenModel, reference_tokenize

from .report import DOCS, RESULTS_DIR, link_from, replace_section

MODELS = ("reference", "ltc_fast", "cls-head")
METRICS = ("micro_f1", "macro_f1", "roc_auc", "subset_accuracy")


def _splits(args):
    sizes = {"train": args.train_size, "dev": args.eval_size, "test": args.eval_size}
    # The data subset is fixed (seed 0) so that the spread over seeds is training noise only.
    return {split: goemotions_subset(split, None if args.full else size, seed=0) for split, size in sizes.items()}


def _models_and_examples(seed, model_path, names, splits, max_length):
    """The three models at their initial weights, each with its own tokenization of the same texts."""
    torch.manual_seed(seed)
    reference_tokenizer = AutoTokenizer.from_pretrained(model_path)
    reference = ReferenceLabelTokenModel.from_encoder(AutoModel.from_pretrained(model_path), names, MULTI_LABEL,
                                                      tokenizer=reference_tokenizer)
    ltc = AutoModelForTokenSequenceClassification.from_pretrained(model_path, label_names=names)
    ltc.load_state_dict(from_reference_state_dict(reference.state_dict(), len(names)), strict=True)
    torch.manual_seed(seed)
    cls_head = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(names),
                                                                  problem_type=MULTI_LABEL)
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def plain(texts):
        return tokenize_texts(tokenizer, texts, len(names), max_length=max_length)

    def with_labels(texts):
        return reference_tokenize(reference_tokenizer, texts, names, max_length, padding=False, return_tensors=None)

    setups = {"reference": (reference, reference_tokenizer, with_labels), "ltc_fast": (ltc, tokenizer, plain),
              "cls-head": (cls_head, tokenizer, plain)}
    for name, (model, model_tokenizer, encode) in setups.items():
        examples = {split: as_examples(encode(texts), labels) for split, (texts, labels) in splits.items()}
        yield name, model, LabelTokenCollator(model_tokenizer, len(names), MULTI_LABEL), examples


def run(args) -> dict:
    meta = provenance()  # taken first: the commit whose code runs, not whatever HEAD is at the end
    model_path = args.model or bundled_minilm_path()
    names = goemotions_label_names()
    splits = _splits(args)
    runs = {name: [] for name in MODELS}
    for seed in args.seeds:
        schedule = Schedule(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed)
        for name, model, collator, examples in _models_and_examples(seed, model_path, names, splits, args.max_length):
            print(f"\n== seed {seed}: {name}")
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as out:
                trainer, train_seconds = fine_tune(model, examples["train"], collator, schedule, out)
                result = {split: evaluate_multilabel(trainer, examples[split], collator, args.threshold)
                          for split in ("dev", "test")}
            runs[name].append({"seed": seed, **result, "train_seconds": train_seconds,
                               "wall_seconds": time.perf_counter() - start})
    summary = {name: {f"{split}_{metric}": _mean_std([r[split][metric] for r in rows])
                      for split in ("dev", "test") for metric in METRICS}
               | {"wall_seconds": _mean_std([r["wall_seconds"] for r in rows])}
               for name, rows in runs.items()}
    return {"provenance": meta, "args": vars(args), "sizes": {s: len(t) for s, (t, _) in splits.items()},
            "runs": runs, "summary": summary}


def _mean_std(values):
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def markdown_table(report: dict, link: str) -> str:
    args, sizes = report["args"], report["sizes"]
    lines = [
        f"all-MiniLM-L6-v2 on GoEmotions: {sizes['train']:,} train / {sizes['dev']:,} dev / {sizes['test']:,} test "
        f"examples, {args['epochs']:g} epochs, batch {args['batch_size']}, lr {args['lr']:g}, max_length "
        f"{args['max_length']}, threshold {args['threshold']}; mean ± std over seeds {args['seeds']}. "
        f"{report['provenance']['device']}; `{report['provenance']['command']}` ([JSON]({link})).",
        "",
        "| model | split | micro-F1 | macro-F1 | ROC-AUC | subset acc. | wall s (train + eval) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, summary in report["summary"].items():
        for split in ("dev", "test"):
            cells = [f"{summary[f'{split}_{m}']['mean']:.3f} ± {summary[f'{split}_{m}']['std']:.3f}" for m in METRICS]
            wall = f"{summary['wall_seconds']['mean']:.0f}" if split == "dev" else ""
            lines.append(f"| {name} | {split} | " + " | ".join(cells) + f" | {wall} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="encoder path (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--full", action="store_true", help="all of GoEmotions (for a GPU)")
    parser.add_argument("--train-size", type=int, default=2400)
    parser.add_argument("--eval-size", type=int, default=1000, help="dev and test examples each")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-length", type=int, default=64, help="tokens per example, labels included")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--docs", action="store_true", help="rewrite the table in docs/accuracy.md")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    report = run(args)
    meta = report["provenance"]
    device = "gpu" if torch.cuda.is_available() else "cpu"
    path = RESULTS_DIR / f"accuracy-{device}-{meta['date'][:10]}-{(meta['commit'] or 'nocommit')[:8]}.json"
    path.write_text(json.dumps(report, indent=1))
    page = DOCS / "accuracy.md"
    table = markdown_table(report, link_from(page, path))
    print("\n" + table)
    if args.docs:
        replace_section("accuracy-table", table, page)
    return report


if __name__ == "__main__":
    main()
