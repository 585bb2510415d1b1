"""`python -m bench.cost_on_paper [--workloads W1 W2 ...] [--out FILE] [--docs]`: what one step of each contender
costs on paper, for the workloads W1-W5 at roberta-base size, measured on the CPU and independent of the machine:

- FLOPs of a train step (forward, backward, AdamW) and of an inference batch (`torch.utils.flop_counter`);
- the tokens the encoder computes (rows entering its first layer, counted by a hook) against the real ones
  (text tokens, plus N label tokens per text for the label-token models): the padding a contender pays for;
- the peak memory of the step in bf16 autocast with fp32 weights, as on the GPU bench, from the bytes of live
  tensor storages (`measure.LiveTensorBytes`), i.e. what a CUDA caching allocator would need at least;
- the ratios of all three against reference-sdpa.

The encoder's layers are identical, so a step's FLOPs are exactly linear in the number of layers and its memory
very nearly so: each step runs with 1 and 2 layers, and the 12-layer figure is cost(1) + 11 * (cost(2) - cost(1))
(`--layers 12` runs all of them instead). The kernels are the PyTorch twins (LTC_FAST_BACKEND=torch: the Triton
interpreter would take hours, and FLOPs and memory are the same). `ltc_fast-packed` is ltc_fast with its
batch packed (unpadded), which is what `auto` runs on a GPU with a fused varlen kernel; on the CPU a packed batch
runs an exact per-sequence attention loop with the same FLOPs as a fused kernel.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.models.roberta.modeling_roberta import RobertaLayer

from ltc_fast.encoders import max_sequence_length

from .contenders import BASELINE, build_model, make_batch, step_function
from .measure import LiveTensorBytes
from .report import add_results_arguments, link_from, measured_or_rendered, publish_table
from .workloads import WORKLOADS, roberta_base_config

DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
CONTENDERS = ("reference-eager", "reference-sdpa", "cls-head", "ltc_fast", "ltc_fast-packed", "ltc_fast-decoupled")
MODES = ("train", "infer")
AUTOCAST = torch.bfloat16


def _ltc_options(contender: str, workload) -> dict:
    """The workload's options, the layout fixed: padded (what `auto` runs where no fused varlen kernel does; on the
    CPU `auto` would pack an inference batch) or, for `ltc_fast-packed`, packed."""
    return {**workload.ltc_options, "sequence_packing": "packed" if contender == "ltc_fast-packed" else "padded"}


def _skip_reason(contender: str, workload, lengths: list[int], config) -> str | None:
    decoupled_already = workload.ltc_options.get("label_attention") == "decoupled"
    if decoupled_already and contender in ("ltc_fast-decoupled", "ltc_fast-packed"):
        return "ltc_fast runs decoupled already at this workload (the same model)"
    if contender.startswith("reference-") and not workload.reference_fits(lengths, max_sequence_length(config)):
        return "the reference cannot hold the label tokens and the text in the encoder's positions"
    return None


class RowCounter:
    """Rows (token positions) entering the encoder's first layer, summed over its calls in a step: a padded
    batch counts B * width, a packed one the real tokens, a decoupled model its text pass plus its label pass."""

    def __init__(self, model: torch.nn.Module):
        first = next(m for m in model.modules() if isinstance(m, RobertaLayer))
        self.rows = 0
        self._handle = first.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.rows += hidden.shape[:-1].numel()

    def remove(self):
        self._handle.remove()


def measure_step(contender: str, workload, mode: str, layers: int, lengths: list[int], seed: int) -> dict:
    """FLOPs, peak live bytes and encoder rows of one step of `contender` on `workload` with `layers` layers."""
    config = roberta_base_config()
    config.num_hidden_layers = layers
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(contender.removesuffix("-packed"), config, workload.num_labels,
                        _ltc_options(contender, workload))
    batch = make_batch(contender, lengths, workload.num_labels, config.vocab_size, config.pad_token_id, generator,
                       "cpu")
    step = step_function(model, batch, mode, torch.device("cpu"), AUTOCAST)
    step()  # warm-up: AdamW's states exist from the first step on, as in the timed rounds of the GPU bench
    # Everything alive now counts from the start: weights, batch, AdamW's states (as on the GPU, where the
    # bench's peak counts from before the model was built).
    gc.collect()
    tracked = [obj for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor)]  # type(): no __class__ lookups
    counter = RowCounter(model)
    with FlopCounterMode(display=False) as flop_counter, LiveTensorBytes(tracked) as memory:  # one pass, both
        step()
    counter.remove()
    flops, rows = flop_counter.get_total_flops(), counter.rows
    return {"flops": flops, "peak_bytes": memory.peak, "encoder_rows": rows, "text_tokens": batch.text_tokens}


def extrapolate(one: dict, two: dict, layers: int) -> dict:
    """cost(L) = cost(1) + (L - 1) * (cost(2) - cost(1)) for FLOPs and memory; rows per layer do not change."""
    return {key: one[key] + (layers - 1) * (two[key] - one[key]) for key in ("flops", "peak_bytes")}


def _say(message: str) -> None:
    print(message, flush=True)  # a long run's progress, also when stdout is a file


def paper_costs(workload_ids, contenders=CONTENDERS, layers: int | None = None, progress=_say,
                on_record=lambda records: None) -> list[dict]:
    """The records of every contender, workload and mode; `on_record(records so far)` after each (a long run
    keeps what it has measured)."""
    records = []
    for workload_id in workload_ids:
        workload = WORKLOADS[workload_id]
        seed = int(workload_id[1:])
        lengths = workload.text_lengths(torch.Generator().manual_seed(seed))  # the GPU bench's own texts
        for contender in contenders:
            reason = _skip_reason(contender, workload, lengths, roberta_base_config())
            if reason:
                progress(f"{workload_id} {contender}: skipped ({reason})")
                continue
            for mode in MODES:
                if layers:
                    cost = measure_step(contender, workload, mode, layers, lengths, seed)
                    how = f"{layers} layers, measured"
                else:
                    one, two = (measure_step(contender, workload, mode, n, lengths, seed) for n in (1, 2))
                    cost = {**one, **extrapolate(one, two, 12)}
                    how = "12 layers, extrapolated from 1 and 2"
                labels = 0 if contender == "cls-head" else workload.num_labels * workload.batch_size
                real = cost["text_tokens"] + labels
                record = {"workload": workload_id, "num_labels": workload.num_labels,
                          "batch_size": workload.batch_size, "mode": mode, "contender": contender,
                          "flops": cost["flops"], "peak_mib": cost["peak_bytes"] / 2**20,
                          "encoder_rows": cost["encoder_rows"], "real_tokens": real,
                          "padding_factor": cost["encoder_rows"] / real, "layers": how}
                records.append(record)
                on_record(with_ratios(records))
                progress(f"{workload_id} {contender} {mode}: {record['flops'] / 1e9:.1f} GFLOP, "
                         f"{record['peak_mib']:.0f} MiB, rows {record['encoder_rows']} / real {real}")
    return with_ratios(records)


def with_ratios(records: list[dict]) -> list[dict]:
    """Each record's FLOPs, memory and encoder rows over reference-sdpa's in the same workload and mode."""
    baseline = {(r["workload"], r["mode"]): r for r in records if r["contender"] == BASELINE}
    for record in records:
        base = baseline.get((record["workload"], record["mode"]))
        for key, name in (("flops", "flops_ratio"), ("peak_mib", "memory_ratio"), ("encoder_rows", "rows_ratio")):
            record[name] = record[key] / base[key] if base else None
    return records


def markdown_table(results: dict, json_link: str) -> str:
    p = results["provenance"]
    lines = [f"Computed on {p['device']}, torch {p['torch']}, commit `{p['commit'][:8]}`, with `{p['command']}` "
             f"([JSON]({json_link})): roberta-base, bf16 autocast with fp32 weights; memory is the peak of live "
             f"tensor bytes (no allocator rounding or workspaces); {results['records'][0]['layers']}. Ratios are "
             f"against `{BASELINE}` in the same workload and step.", "",
             "| workload | N | B | step | model | GFLOP | encoder rows / real tokens | peak MiB "
             "| FLOPs | rows | memory |",
             "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    ratio = lambda value: f"{value:.2f}x" if value is not None else "-"  # noqa: E731
    for r in results["records"]:
        lines.append(f"| {r['workload']} | {r['num_labels']} | {r['batch_size']} | {r['mode']} | {r['contender']} | "
                     f"{r['flops'] / 1e9:,.0f} | {r['encoder_rows']:,} / {r['real_tokens']:,} | {r['peak_mib']:,.0f} | "
                     f"{ratio(r['flops_ratio'])} | {ratio(r['rows_ratio'])} | {ratio(r['memory_ratio'])} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    parser.add_argument("--layers", type=int, help="run this many layers instead of extrapolating from 1 and 2")
    add_results_arguments(parser, DOCS_PAGE)
    args = parser.parse_args(argv)

    def run(results: dict, path: Path) -> None:
        os.environ["LTC_FAST_BACKEND"] = "torch"  # the PyTorch twins: same FLOPs and memory, no interpreter

        def save(records):  # after every record: a run stopped early keeps what it measured
            results["records"] = records
            path.write_text(json.dumps(results, indent=1))

        save(paper_costs(args.workloads, args.contenders, args.layers, on_record=save))

    path, results = measured_or_rendered(args, "cost-on-paper", run)
    table = markdown_table(results, link_from(DOCS_PAGE, path.resolve()))
    publish_table(table, "cost-on-paper", DOCS_PAGE, args.docs)


if __name__ == "__main__":
    main()
