"""`python -m bench.cpu_inference [--texts 2000] [--batch-size 32] [--rounds 3] [--out FILE] [--docs]`: prediction
on the CPU, each way of batching it, measured in one run.

The bundled default: GoEmotions dev texts (in their file's order), all-MiniLM-L6-v2 with its 28 label tokens
(label_name init), fp32, `model.predict`'s probabilities (`prediction.predict_probas`). The ways:

- `plain`: batches in the texts' order, each padded to its longest text (`sort_by_length=False`);
- `sorted`: texts sorted by length within windows of batches (`predict`'s default), so a batch pads little;
- `packed`: sorted, and `sequence_packing="packed"`: no pad token in any matmul, attention per sequence (the
  CPU has no fused varlen kernel);
- `compiled`: sorted, under `torch.compile` (Inductor's CPU code; `compiled=True`), each batch padded to
  `batch_size` rows and a power-of-two width; its compile is a warm-up pass, not timed.

Timings are medians over `--rounds` passes over all texts, the ways interleaved within each round (drift of a
shared machine spreads over all of them); what counts are the ratios against `plain` within this run. Also
recorded: the token positions the encoder computes (rows entering its first layer: padding included) against
the real ones.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ltc_fast import AutoModelForTokenSequenceClassification
from ltc_fast.app.demo import bundled_minilm_path
from ltc_fast.app.goemotions import goemotions_label_names, load_goemotions
from ltc_fast.encoders import encoder_layers
from ltc_fast import prediction
from ltc_fast.layout import label_slots
from ltc_fast.prediction import predict_probas

from .report import DOCS, add_results_arguments, link_from, measured_or_rendered, publish_table

DOCS_PAGE = DOCS / "benchmarks.md"
WAYS = {
    "plain": {"sort_by_length": False},
    "sorted": {},
    "packed": {"sequence_packing": "packed"},
    "compiled": {"compiled": True},
}


class EncoderRows:
    """Rows (token positions, padding included) entering the encoder's first layer: counted by a hook on it, or,
    for the compiled way (a hook's Python counter would be traced into the graph), from each compiled call's
    input: B rows of the batch's width plus the label slots."""

    def __init__(self, model, compiled: bool):
        self.rows = 0
        if compiled:
            slots = label_slots(model.num_labels, model.config.label_positions, model.config.label_attention)
            compiled_probas = prediction._compiled_probas

            def counting(options):
                run = compiled_probas(options)

                def call(model, inputs):
                    batch, width = inputs["input_ids"].shape
                    self.rows += batch * (width + slots)
                    return run(model, inputs)
                return call

            prediction._compiled_probas = counting
            self.remove = lambda: setattr(prediction, "_compiled_probas", compiled_probas)
        else:
            first_layer = encoder_layers(model.transformer)[0]
            handle = first_layer.register_forward_pre_hook(self._count, with_kwargs=True)
            self.remove = handle.remove

    def _count(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.rows += hidden.shape[:-1].numel()


def one_pass(model, tokenizer, texts, batch_size: int, way: str):
    """(seconds, probabilities) of predicting every text one way."""
    options = dict(WAYS[way])
    model.config.sequence_packing = options.pop("sequence_packing", "padded")
    start = time.perf_counter()
    probas = predict_probas(model, tokenizer, texts, batch_size=batch_size, **options)
    return time.perf_counter() - start, probas


def measure(texts: list[str], batch_size: int, rounds: int, ways: list[str]) -> list[dict]:
    path = bundled_minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForTokenSequenceClassification.from_pretrained(
        path, label_names=goemotions_label_names(), label_init="label_name", tokenizer=tokenizer).eval()
    real_tokens = sum(len(ids) for ids in tokenizer(texts)["input_ids"]) + len(texts) * model.num_labels
    records = {}
    for way in ways:  # warm-up (the compiled way compiles its shapes here), rows counted, results compared
        counter = EncoderRows(model, compiled=way == "compiled")
        _, probas = one_pass(model, tokenizer, texts, batch_size, way)
        counter.remove()
        reference = records["plain"]["probas"] if "plain" in records else probas
        records[way] = {"way": way, "encoder_rows": counter.rows, "real_tokens": real_tokens, "times_s": [],
                        "probas": probas, "max_abs_diff_vs_plain": float(abs(probas - reference).max())}
        print(f"{way}: warm-up done, {counter.rows:,} encoder rows for {real_tokens:,} real tokens", flush=True)
    for round_ in range(rounds):
        for way in ways:
            seconds, _ = one_pass(model, tokenizer, texts, batch_size, way)
            records[way]["times_s"].append(seconds)
        print(f"round {round_ + 1}: " + ", ".join(f"{w} {records[w]['times_s'][-1]:.2f} s" for w in ways), flush=True)
    base = statistics.median(records[ways[0]]["times_s"])
    for record in records.values():
        record.pop("probas")
        record["median_s"] = statistics.median(record["times_s"])
        record["texts_per_s"] = len(texts) / record["median_s"]
        record["speedup_vs_" + ways[0]] = base / record["median_s"]
    return list(records.values())


def markdown_table(results: dict, json_link: str) -> str:
    p, setup = results["provenance"], results["setup"]
    first = results["records"][0]["way"]
    lines = [f"Measured on {p['device']}, "
             f"torch {p['torch']}, commit `{p['commit'][:8]}`, with `{p['command']}` ([JSON]({json_link})): "
             f"{setup['texts']} GoEmotions dev texts, MiniLM-L6 with 28 label tokens, fp32, batches of "
             f"{setup['batch_size']}; median of {setup['rounds']} interleaved passes. An absolute CPU time means "
             f"little; the ratios within the run are the result.", "",
             f"| way | encoder rows / real tokens | median s | texts/s | speed-up vs {first} | max abs diff |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["records"]:
        lines.append(f"| {r['way']} | {r['encoder_rows']:,} / {r['real_tokens']:,} | {r['median_s']:.2f} | "
                     f"{r['texts_per_s']:,.0f} | {r['speedup_vs_' + first]:.2f}x | {r['max_abs_diff_vs_plain']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000, help="GoEmotions dev texts, from the file's start")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS),
                        help="the first is the ratios' base")
    add_results_arguments(parser, DOCS_PAGE)
    args = parser.parse_args(argv)

    def run(results: dict, path: Path) -> None:
        texts = load_goemotions("dev", limit=args.texts)[0]
        results["setup"] = {"texts": len(texts), "batch_size": args.batch_size, "rounds": args.rounds,
                            "threads": torch.get_num_threads()}
        results["records"] = measure(texts, args.batch_size, args.rounds, args.ways)

    path, results = measured_or_rendered(args, "cpu-inference", run)
    table = markdown_table(results, link_from(DOCS_PAGE, path.resolve()))
    publish_table(table, "cpu-inference", DOCS_PAGE, args.docs)


if __name__ == "__main__":
    main()
