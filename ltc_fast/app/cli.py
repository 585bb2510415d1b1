"""The `ltc-fast` command: train, eval, predict, convert, export, bench, info.

Argument parsing and printing only; the work is done by `finetune`, `evaluation`, `prediction`,
`datafiles`, `reference`, `onnx_export` and `benchmarks`. Exit codes: 0 success, 2 bad usage or bad input (a message
`ltc-fast <command>: error: ...`, no traceback), 1 other failures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import sys
import textwrap
import threading
from collections.abc import Sequence

PROG = "ltc-fast"
DATA_FORMAT_HELP = (
    'Data files: JSONL (.jsonl: one object per line with a "text" field and a "labels" field, a list of label '
    "names or ids), CSV (.csv) or TSV (.tsv) with a header naming the text and labels columns (several labels "
    "in one cell joined by --label-separator), or the GoEmotions TSV of the bundled data (no header: text, "
    "comma-separated label ids, example id). Files may be gzipped (.gz). A label given as an id (an int in "
    "JSONL, digits in CSV/TSV) indexes the label set. Errors name the file and the line.")


def _describe(*paragraphs: str) -> str:
    return "\n\n".join(textwrap.fill(paragraph, 100) for paragraph in paragraphs)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (unless it is required, a flag, or None, whose meaning the help text
    says) and keeps the descriptions' paragraphs."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if action.required or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return help_text
        return f"{help_text} (default: %(default)s)"


def bundled_encoder() -> str:
    from .demo import bundled_minilm_path

    return bundled_minilm_path()


# ---------------------------------------------------------------------------------------------- parser
def _add_format_options(parser: argparse.ArgumentParser) -> None:
    from .datafiles import FORMATS

    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="data file format; auto: by the file name (.jsonl, .csv, .tsv, optionally .gz), a "
                             "TSV without a header row is read as GoEmotions")
    parser.add_argument("--text-column", default="text", metavar="NAME", help="the text field (JSONL) or column (CSV/TSV)")
    parser.add_argument("--labels-column", default="labels", metavar="NAME", help="the labels field (JSONL) or column (CSV/TSV)")
    parser.add_argument("--label-separator", default=",", metavar="SEP",
                        help="separator of several labels in one CSV/TSV cell, e.g. 'joy,love' or with '|' "
                             "'joy|love'")


def _add_run_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("--batch-size", type=int, default=batch_size, metavar="N", help="texts per forward pass")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="tokens per text, labels included (the reference's budget); default: the smaller of "
                             "512 and the encoder's positions")
    parser.add_argument("--device", default="auto", metavar="DEVICE", help="torch device: auto (cuda when available, else cpu), "
                                                         "cpu, cuda, cuda:1, ...")


def build_parser() -> argparse.ArgumentParser:
    from ..config import LABEL_ATTENTIONS, LABEL_INITS, LABEL_POSITIONS, SEQUENCE_PACKING

    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="Label-token text classification (ltc_fast): train, evaluate, predict, convert, export, "
                    "benchmark.",
        epilog=f"`{PROG} <command> --help` documents each command.")
    commands = parser.add_subparsers(dest="command", metavar="<command>")

    train = commands.add_parser(
        "train", formatter_class=_Formatter, help="fine-tune a model on labelled data",
        description=_describe("Fine-tune an encoder (or an ltc_fast / reference checkpoint) with label tokens; evaluate "
                    "on --dev every epoch (or every --eval-steps) and keep the checkpoint with the best dev "
                    "micro-F1 (accuracy for single-label). --out receives the model (safetensors), its "
                    "tokenizer, labels.txt and metrics.json, only once training has succeeded.", DATA_FORMAT_HELP))
    train.add_argument("--model", default=None, metavar="PATH_OR_NAME",
                       help="encoder path or hub name, an ltc_fast checkpoint or a reference checkpoint "
                            "(default: the bundled all-MiniLM-L6-v2)")
    train.add_argument("--train", required=True, metavar="FILE", help="training data")
    train.add_argument("--dev", required=True, metavar="FILE", help="dev data: periodic evaluation, best checkpoint")
    train.add_argument("--test", default=None, metavar="FILE", help="optional test data, evaluated once at the end")
    train.add_argument("--labels", default=None, metavar="FILE",
                       help="label names, one per line (their order gives the ids); default: the checkpoint's "
                            "labels, else the training data's names sorted (LABEL_0.. when it has only ids)")
    _add_format_options(train)
    train.add_argument("--max-train-examples", type=int, default=None, metavar="N",
                       help="use only the first N training examples")
    train.add_argument("--max-dev-examples", type=int, default=None, metavar="N", help="use only the first N dev examples")
    train.add_argument("--problem-type", default="multi", choices=["multi", "single"],
                       help="multi: sigmoid + BCE, any number of labels per text; single: softmax + cross-entropy, "
                            "exactly one label per text")
    train.add_argument("--epochs", type=float, default=3.0, metavar="N", help="training epochs")
    train.add_argument("--max-steps", type=int, default=-1, metavar="N", help="stop after this many optimizer steps (-1: epochs)")
    train.add_argument("--lr", type=float, default=5e-5, metavar="LR", help="peak learning rate (AdamW, linear decay)")
    train.add_argument("--batch-size", type=int, default=16, metavar="N", help="training examples per device and step")
    train.add_argument("--eval-batch-size", type=int, default=64, metavar="N", help="examples per evaluation forward pass")
    train.add_argument("--gradient-accumulation-steps", type=int, default=1, metavar="N",
                       help="micro-batches accumulated per optimizer step (the loss stays exact)")
    train.add_argument("--weight-decay", type=float, default=0.01, metavar="W", help="AdamW weight decay")
    train.add_argument("--warmup-ratio", type=float, default=0.1, metavar="R", help="fraction of the steps spent warming up")
    train.add_argument("--max-length", type=int, default=128, metavar="N",
                       help="tokens per example, labels included (the reference's budget)")
    train.add_argument("--label-init", default="label_name", choices=LABEL_INITS,
                       help="new label rows: random, avg (vocabulary mean), label_name (mean of the name's word "
                            "pieces), cls (the [CLS] embedding); ignored for checkpoints")
    train.add_argument("--label-positions", default=None, choices=LABEL_POSITIONS,
                       help="position ids of the label tokens (default: the checkpoint's, else reference)")
    train.add_argument("--label-attention", default=None, choices=LABEL_ATTENTIONS,
                       help="which tokens the labels and the text attend to (default: the checkpoint's, else full)")
    train.add_argument("--label-chunk-size", type=int, default=None, metavar="N",
                       help="decoupled attention: score the labels N at a time (memory bounded by N)")
    train.add_argument("--sampled-negatives", type=int, default=None, metavar="K",
                       help="decoupled attention: train each batch on its positive labels plus K sampled negatives")
    train.add_argument("--sequence-packing", default=None, choices=SEQUENCE_PACKING,
                       help="run batches unpadded (packed), padded, or auto (packed where a fused varlen kernel runs: "
                            "CUDA, fp16/bf16)")
    train.add_argument("--hidden-layer", type=int, default=-1, metavar="K",
                       help="encoder layer the head reads (-1: the last); layers above it are dropped")
    train.add_argument("--eval-steps", type=int, default=None, metavar="N",
                       help="evaluate and checkpoint every N optimizer steps (default: every epoch)")
    train.add_argument("--logging-steps", type=int, default=50, metavar="N", help="log the training loss every N steps")
    train.add_argument("--threshold", type=float, default=0.5, metavar="T",
                       help="multi-label decision threshold of the dev / test metrics (not saved with the model)")
    train.add_argument("--tune-thresholds", action="store_true",
                       help="after training, tune one threshold per label on dev (best F1 on a 0.05 grid) and "
                            "save them with the model (predict and eval use them); favours macro-F1, micro-F1 "
                            "can fall")
    train.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the new weights, the data order and dropout")
    train.add_argument("--bf16", action="store_true", help="bf16 mixed precision (CUDA only)")
    train.add_argument("--out", required=True, metavar="DIR", help="where the trained model is saved")
    train.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "eval", formatter_class=_Formatter, help="evaluate a trained model on labelled data",
        description=_describe("Micro/macro F1, ROC-AUC on the probabilities, subset accuracy (accuracy for single-label) "
                    "and a per-label table of precision, recall, F1 and support. Multi-label decisions use "
                    "--threshold, else the model's saved per-label thresholds, else 0.5.", DATA_FORMAT_HELP))
    evaluate.add_argument("--model", required=True, metavar="DIR", help="an ltc_fast or reference checkpoint")
    evaluate.add_argument("--data", required=True, metavar="FILE", help="labelled data (labels: the model's)")
    _add_format_options(evaluate)
    evaluate.add_argument("--max-examples", type=int, default=None, metavar="N", help="use only the first N examples")
    evaluate.add_argument("--threshold", type=float, default=None, metavar="T",
                          help="one decision threshold for every label (overrides saved per-label thresholds)")
    evaluate.add_argument("--tune-thresholds", action="store_true",
                          help="tune one threshold per label on --data (use dev data) for the best F1 and save "
                               "them into the model's config.json")
    evaluate.add_argument("--json", default=None, metavar="OUT", help="also write the report as JSON")
    _add_run_options(evaluate, batch_size=64)
    evaluate.set_defaults(handler=_eval)

    predict = commands.add_parser(
        "predict", formatter_class=_Formatter, help="label texts with a trained model",
        description=_describe("Writes one JSON line per input text: {\"text\": ..., \"labels\": [{\"label\": name, "
                    "\"score\": probability}, ...]}, best first. Multi-label: the labels at or above "
                    "--threshold (default: the model's per-label thresholds, else 0.5), at most --top-k; "
                    "--top-k alone gives the k best labels. Single-label: the best label by default."))
    predict.add_argument("--model", required=True, metavar="DIR|FILE",
                         help="an ltc_fast or reference checkpoint, or a .onnx file written by `export` (then "
                              "onnxruntime runs it on the CPU)")
    predict.add_argument("--tokenizer", default=None, metavar="DIR",
                         help="with a .onnx model: the directory of its tokenizer (default: the .onnx file's)")
    predict.add_argument("--input", default="-", metavar="FILE|-",
                         help="texts: plain lines (one text per line), JSONL with a text field, CSV/TSV with a "
                              "text column; - reads standard input")
    predict.add_argument("--input-format", default="auto", choices=["auto", "lines", "jsonl", "csv", "tsv"],
                         help="auto: by the file name (.jsonl, .csv, .tsv; others and stdin: lines)")
    predict.add_argument("--text-column", default="text", metavar="NAME", help="the text field (JSONL) or column (CSV/TSV)")
    predict.add_argument("--output", default="-", metavar="FILE|-", help="JSON lines out; - writes standard output")
    predict.add_argument("--top-k", type=int, default=None, metavar="K", help="at most K labels per text (default: no limit)")
    predict.add_argument("--threshold", type=float, default=None, metavar="T", help="labels with at least this probability (default: see above)")
    _add_run_options(predict, batch_size=32)
    predict.add_argument("--compiled", action="store_true",
                         help="run the model under torch.compile, batches padded to repeating shapes (CUDA graphs on "
                              "a GPU: worth it for many short texts; the first batches of each shape compile)")
    predict.set_defaults(handler=_predict)

    convert = commands.add_parser(
        "convert", formatter_class=_Formatter, help="convert between reference and ltc_fast checkpoints",
        description=_describe("Reference checkpoint (label tokens in the vocabulary, pytorch_model.bin) <-> ltc_fast "
                    "checkpoint (label_embeddings, safetensors). The tokenizer is copied; towards the reference "
                    "it gets the label tokens added. Both compute the same logits. Per-label thresholds are "
                    "not part of the reference format."))
    source = convert.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-reference", metavar="DIR", help="a reference checkpoint to convert to ltc_fast")
    source.add_argument("--to-reference", metavar="DIR", help="an ltc_fast checkpoint to convert to the reference")
    convert.add_argument("--out", required=True, metavar="DIR", help="where the converted checkpoint is saved")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    convert.set_defaults(handler=_convert)

    export = commands.add_parser(
        "export", formatter_class=_Formatter, help="export a trained model for deployment (ONNX)",
        description=_describe("Writes the model's inference graph to one ONNX file: inputs input_ids and attention_mask "
                    "(int64 [batch, sequence], plain tokenized text, both axes dynamic), outputs logits and probas "
                    "([batch, num_labels]); the label names, problem type and per-label thresholds go into the "
                    "file's metadata. The graph runs PyTorch's own ops (no Triton kernel or C++ extension) and is "
                    "checked in onnxruntime against the model before it is written. Reference checkpoints export "
                    "as the ltc_fast model they load into (same logits). Predict with "
                    "ltc_fast.onnx_prediction.OnnxClassifier(FILE, tokenizer=DIR); see docs/deployment.md. Needs "
                    'pip install "ltc_fast[onnx]".'))
    export.add_argument("--format", default="onnx", choices=["onnx"], help="the export format")
    export.add_argument("--model", required=True, metavar="DIR", help="an ltc_fast or reference checkpoint")
    export.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    export.add_argument("--opset", type=int, default=None, metavar="N",
                        help="ONNX opset (17 up to the onnx package's newest; default: the exporter's)")
    export.add_argument("--no-check", action="store_true",
                        help="skip comparing onnxruntime's logits with PyTorch's before writing")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    export.set_defaults(handler=_export)

    bench = commands.add_parser(
        "bench", formatter_class=_Formatter, help="run the benchmark suite (source checkout only)",
        usage=f"{PROG} bench [-h] [--bench-dir DIR] [--smoke] [PYTEST_ARGS ...]",
        description=_describe("Runs `pytest bench/ --benchmark [PYTEST_ARGS]` on the repository's benchmark suite "
                    "(results in bench/results/). Every other argument goes to pytest, e.g. "
                    f"`{PROG} bench -k W1 --bench-rounds 5`."))
    bench.add_argument("--bench-dir", default=None, metavar="DIR",
                       help="the bench/ folder (default: next to the package, as in an editable install)")
    bench.add_argument("--smoke", action="store_true", help="tiny sizes, untimed (no --benchmark)")
    # Any other argument goes to pytest (collected by `main` with parse_known_args, in order).
    bench.set_defaults(handler=_bench)

    info = commands.add_parser(
        "info", formatter_class=_Formatter, help="versions, and which implementation each part uses here",
        description=_describe("Prints the versions ltc_fast runs with and, for this machine's device, the path "
                              "each part takes: Triton kernels or their PyTorch twins, the C++/CUDA loss "
                              "extension (prebuilt, JIT-compiled or unavailable), the attention kernels."))
    info.add_argument("--device", default=None, metavar="DEVICE", help="cpu or cuda (default: cuda when present)")
    info.set_defaults(handler=_info)
    return parser


# -------------------------------------------------------------------------------------------- commands
class UsageError(ValueError):
    """A bad argument found after parsing (reported like argparse's, exit code 2)."""


def _check_positive(args, *names) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _check_probability(name: str, value) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise UsageError(f"--{name} must be a probability in [0, 1], got {value}")


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available")
    return device


def _read(path, args, label_names=None, problem_type="multi", limit=None):
    from .datafiles import read_labeled

    data = read_labeled(path, label_names, problem_type, args.format, args.text_column, args.labels_column,
                        args.label_separator)
    return data if limit is None else dataclasses.replace(data, texts=data.texts[:limit], labels=data.labels[:limit])


def _train(args) -> int:
    import torch

    from .datafiles import read_label_names
    from .evaluation import format_report
    from .finetune import TrainOptions, pretrained_label_names, train_classifier
    from .output import check_output_dir, staged_output_dir

    _check_positive(args, "batch_size", "eval_batch_size", "gradient_accumulation_steps", "eval_steps",
                    "logging_steps", "max_train_examples", "max_dev_examples")
    _check_probability("threshold", args.threshold)
    if args.bf16 and not torch.cuda.is_available():
        raise UsageError("--bf16 needs a CUDA device; none is available (train in fp32 on the CPU)")
    check_output_dir(args.out, args.overwrite)  # before reading data or loading anything
    model = args.model or bundled_encoder()
    names = read_label_names(args.labels) if args.labels else pretrained_label_names(model)
    train = _read(args.train, args, names, args.problem_type, args.max_train_examples)
    dev = _read(args.dev, args, train.label_names, args.problem_type, args.max_dev_examples)
    test = _read(args.test, args, train.label_names, args.problem_type) if args.test else None
    print(f"{len(train)} train / {len(dev)} dev examples, {len(train.label_names)} labels; model {model}",
          file=sys.stderr)
    options = TrainOptions(
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, lr=args.lr, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, seed=args.seed, eval_steps=args.eval_steps, logging_steps=args.logging_steps,
        bf16=args.bf16, threshold=args.threshold)
    model_options = dict(label_init=args.label_init, hidden_layer=args.hidden_layer,
                         label_positions=args.label_positions, label_attention=args.label_attention,
                         label_chunk_size=args.label_chunk_size, sampled_negatives=args.sampled_negatives,
                         sequence_packing=args.sequence_packing)
    record = {"command": f"{PROG} {shlex.join(args.argv)}",
              "args": {k: v for k, v in vars(args).items() if k not in ("handler", "argv")}}
    with staged_output_dir(args.out, args.overwrite) as staging:
        metrics = train_classifier(model, train, dev, staging, options, args.problem_type, args.max_length, test,
                                   args.tune_thresholds, model_options, record)
    if metrics is None:  # another rank of a torchrun launch: rank 0 reports
        return 0
    if metrics["best_step"] is not None:
        print(f"best dev micro-F1 {metrics['best_dev_micro_f1']:.4f} at step {metrics['best_step']}")
    print(format_report(metrics["dev"]))
    if metrics["test"] is not None:
        print(format_report(metrics["test"]))
    print(f"saved to {args.out}")
    return 0


def _load(args):
    from ..modeling import load_classifier

    model, tokenizer = load_classifier(args.model)
    return model.to(_device(args.device)), tokenizer


def _eval(args) -> int:
    from ..checkpoints import is_reference_checkpoint
    from .evaluation import evaluate, format_report, report_from_probas, tuned_thresholds
    from .output import write_json

    _check_positive(args, "batch_size", "max_examples")
    _check_probability("threshold", args.threshold)
    if args.tune_thresholds and args.threshold is not None:
        raise UsageError("--tune-thresholds and --threshold exclude each other")
    if args.tune_thresholds and is_reference_checkpoint(args.model):
        raise UsageError(f"--tune-thresholds saves into an ltc_fast checkpoint; {args.model!r} is a reference "
                         f"checkpoint (convert it first: ltc-fast convert --from-reference)")
    model, tokenizer = _load(args)
    data = _read(args.data, args, model.config.label_names, model.config.problem_type, args.max_examples)
    report, probas = evaluate(model, tokenizer, data, args.threshold, args.batch_size, args.max_length, progress=True)
    if args.tune_thresholds:
        model.config.label_thresholds = tuned_thresholds(model.config, probas, data)
        report = report_from_probas(model.config, probas, data)
        _save_config(model.config, args.model)
        print(f"saved per-label thresholds tuned on {args.data} to {args.model}/config.json", file=sys.stderr)
    print(format_report(report))
    if args.json:
        write_json(args.json, {"model": args.model, **report})
    return 0


def _save_config(config, directory: str) -> None:
    """Rewrite config.json in one step (a reader never sees half a file)."""
    from .output import replacing

    with replacing(os.path.join(directory, "config.json")) as partial:
        config.to_json_file(partial, use_diff=True)  # what save_pretrained writes


def _predict(args) -> int:
    from .datafiles import read_texts
    from .output import replacing

    _check_positive(args, "batch_size", "top_k")
    _check_probability("threshold", args.threshold)
    texts = read_texts(args.input, args.input_format, args.text_column)
    batches = _prediction_batches(args, texts)
    if args.output == "-":
        _write_predictions(sys.stdout, texts, batches)
        return 0
    with replacing(args.output) as partial, open(partial, "w", encoding="utf-8") as out:
        _write_predictions(out, texts, batches)  # the output file appears only when complete
    return 0


def _prediction_batches(args, texts):
    """The label lists of `texts`, a run at a time: from the PyTorch model, or from onnxruntime for a .onnx file."""
    options = dict(top_k=args.top_k, threshold=args.threshold, batch_size=args.batch_size,
                   max_length=args.max_length, progress=args.input != "-")
    if args.model.endswith(".onnx"):
        from ..onnx_prediction import OnnxClassifier

        if args.device not in ("auto", "cpu"):
            raise UsageError(f"--device {args.device!r}: a .onnx model runs on onnxruntime's CPU provider here; "
                             f"use the checkpoint directory for a torch device")
        if args.compiled:
            raise UsageError("--compiled goes with a checkpoint directory; a .onnx model runs on onnxruntime")
        return OnnxClassifier(args.model, tokenizer=args.tokenizer).iter_predictions(texts, **options)
    if args.tokenizer is not None:
        raise UsageError("--tokenizer goes with a .onnx model; a checkpoint directory holds its tokenizer")
    from ..prediction import iter_predictions

    model, tokenizer = _load(args)
    return iter_predictions(model, tokenizer, texts, **options, compiled=args.compiled)


def _write_predictions(out, texts, batches) -> None:
    done = 0
    for batch in batches:  # written batch by batch, so a long run shows its results as it goes
        for labels in batch:
            out.write(json.dumps({"text": texts[done], "labels": labels}, ensure_ascii=False) + "\n")
            done += 1
        out.flush()


def _convert(args) -> int:
    from ..checkpoints import is_reference_checkpoint
    from ..modeling import AutoModelForTokenSequenceClassification, load_classifier
    from ..reference import reference_from_ltc
    from .output import check_output_dir, staged_output_dir

    check_output_dir(args.out, args.overwrite)
    source = args.from_reference or args.to_reference
    model, tokenizer = load_classifier(source)  # refuses directories that are neither kind
    if args.from_reference and not is_reference_checkpoint(source):
        raise UsageError(f"--from-reference {source!r} is an ltc_fast checkpoint, not a reference checkpoint")
    if args.to_reference and is_reference_checkpoint(source):
        raise UsageError(f"--to-reference {source!r} is a reference checkpoint already (give an ltc_fast one)")
    with staged_output_dir(args.out, args.overwrite) as staging:
        if args.from_reference:
            model.save_pretrained(staging)
        else:
            reference_from_ltc(model, tokenizer).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        AutoModelForTokenSequenceClassification.from_pretrained(staging)  # it loads back, before it is published
    print(f"converted {source} to {'ltc_fast' if args.from_reference else 'the reference format'} in {args.out}")
    return 0


def _export(args) -> int:
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r} is a directory; give the path of the .onnx file to write")
    if os.path.exists(args.out) and not args.overwrite:
        raise UsageError(f"--out {args.out!r} exists; pass --overwrite to replace it")
    from ..onnx_export import export_onnx

    try:
        result = export_onnx(args.model, args.out, opset=args.opset, check=not args.no_check)
    except ImportError as error:  # a missing extra is not bad usage: exit 1, with the install line
        print(f"{PROG} export: error: {error}", file=sys.stderr)
        return 1
    checked = ("" if result.max_abs_logit_diff is None
               else f"; onnxruntime matches PyTorch to {result.max_abs_logit_diff:.1e} in the logits")
    print(f"exported {args.model} to {args.out} (ONNX opset {result.opset}{checked})")
    return 0


def _info(args) -> int:
    from ..backend_report import backends
    from .provenance import provenance

    meta = provenance()
    for key in ("device", "python", "torch", "transformers", "triton"):
        if meta.get(key):
            print(f"{key:>30}: {meta[key]}")
    for part, path in backends(args.device).items():
        print(f"{part:>30}: {path}")
    return 0


def _bench(args) -> int:
    from .bench_command import run_benchmarks

    return run_benchmarks(args.pytest_args, args.bench_dir, args.smoke)


# ---------------------------------------------------------------------------------------------- entry
def _exit_on_sigterm():
    """Turn SIGTERM (e.g. a job scheduler's) into SystemExit, so the cleanup of a half-written --out runs;
    returns the previous handler (None when not in the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.pytest_args = [arg for arg in extra if arg != "--"]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    args.argv = argv
    from transformers import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # warnings about new weights etc. are expected here
    hf_logging.disable_progress_bar()  # loading / saving bars; the Trainer's and ours stay
    on_term = _exit_on_sigterm()
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        # ValueError: bad input (data files, options, checkpoints; DataFileError included) -> 2, the usage
        # convention; OSError: unreadable / unwritable files, a missing model -> 1.
        return 2 if isinstance(error, ValueError) else 1
    finally:
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
