"""Large label sets: time and peak memory against the number of labels N, for the reference (while it fits in
the encoder's positions), ltc_fast with shared positions (full attention over N + T tokens) and ltc_fast
with decoupled label attention (labels in chunks, cost N * T). Inference, plus a training step where
decoupled mode scores the positives and `--sampled` sampled negatives.

    python -m bench.large_labels                      # MiniLM-shaped encoder (6 x 384), T=64, B=2, CPU-sized
    python -m bench.large_labels --encoder roberta-base --text-tokens 256 --labels 2048 16384   # GPU (W4/W5)
    python -m bench.large_labels --render FILE.json --docs     # table + plot into docs/large-label-sets.md

Writes `bench/results/large-labels-<device>-<date>-<commit>.json` with provenance and a PNG beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import re
import statistics
import time
from pathlib import Path

import torch
from transformers import BertConfig

from ltc_fast.encoders import max_sequence_length
from ltc_fast.app.provenance import provenance

from .contenders import BASELINE, DECOUPLED, build_model, make_batch
from .measure import PeakMemory, synchronize
from .report import DOCS, RESULTS_DIR, link_from, replace_section
from .workloads import modernbert_base_config, roberta_base_config, tiny_modernbert_config, tiny_roberta_config

MODES = {
    "reference": None,
    "ltc_fast shared": {"label_positions": "shared"},
    "ltc_fast decoupled": DECOUPLED,
}


def minilm_config() -> BertConfig:
    """The shape of the bundled all-MiniLM-L6-v2 (random weights: speed does not depend on them)."""
    return BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536, max_position_embeddings=512, pad_token_id=0)


ENCODERS = {"minilm": minilm_config, "roberta-base": roberta_base_config, "tiny": tiny_roberta_config,
            "modernbert-base": modernbert_base_config, "tiny-modernbert": tiny_modernbert_config}


def build(mode: str, encoder_config, num_labels: int, chunk: int, sampled: int):
    if mode == "reference":
        return build_model(BASELINE, encoder_config, num_labels)
    options = dict(MODES[mode])
    if options.get("label_attention") == "decoupled":
        options.update(label_chunk_size=chunk, sampled_negatives=sampled)
    return build_model("ltc_fast", encoder_config, num_labels, options)


def measure(mode, encoder_config, num_labels, args, device, train: bool) -> dict:
    generator = torch.Generator().manual_seed(num_labels)
    lengths = [args.text_tokens] * args.batch_size
    contender = BASELINE if mode == "reference" else "ltc_fast"
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    with PeakMemory(device) as memory:
        model = build(mode, encoder_config, num_labels, args.chunk, args.sampled).to(device)
        batch = make_batch(contender, lengths, num_labels, encoder_config.vocab_size, encoder_config.pad_token_id,
                           generator, device).inputs
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5) if train else None

        def step():
            if train:
                model.train()
                with autocast:
                    loss = model(**batch)["loss"]
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            else:
                model.eval()
                with torch.inference_mode(), autocast:
                    model(**{k: v for k, v in batch.items() if k != "labels"})
            synchronize(device)

        step()  # warm-up
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return {"mode": mode, "num_labels": num_labels, "train": train, "median_s": statistics.median(times),
            "times_s": times, "peak_mib": memory.peak_mib, "examples_per_s": args.batch_size / statistics.median(times)}


def run(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder_config = ENCODERS[args.encoder]()
    positions = max_sequence_length(encoder_config)
    records = []
    for num_labels in args.labels:
        for mode in MODES:
            if mode == "reference" and num_labels + args.text_tokens > positions:
                continue  # the reference cannot place N labels and the text in the encoder's positions
            if mode == "ltc_fast shared" and num_labels > args.max_full_labels:
                continue  # (N + T)^2 attention: beyond this, time rather than memory rules it out here
            for train in (False, True):
                record = measure(mode, encoder_config, num_labels, args, device, train)
                print(json.dumps({k: v for k, v in record.items() if k != "times_s"}), flush=True)
                records.append(record)
    meta = provenance()
    meta["setup"] = {"encoder": args.encoder, "text_tokens": args.text_tokens, "batch_size": args.batch_size,
                     "chunk": args.chunk, "sampled_negatives": args.sampled, "rounds": args.rounds,
                     "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda"
                     else "CPU RSS growth over the measurement (model, optimizer, activations)"}
    return {"provenance": meta, "records": records}


def markdown(results: dict, link: str) -> str:
    meta, setup = results["provenance"], results["provenance"]["setup"]
    lines = [
        f"Measured on {meta['device']}, torch {meta['torch']}, commit `{(meta['commit'] or '?')[:8]}`, with "
        f"`{meta['command']}` ([JSON]({link})): {setup['encoder']}-shaped encoder, {setup['batch_size']} texts of "
        f"{setup['text_tokens']} tokens; decoupled mode scores labels in chunks of {setup['chunk']} and trains on the "
        f"positives + {setup['sampled_negatives']} sampled negatives. Peak memory: {setup['peak_memory_kind']}.",
        "",
        "| labels N | mode | inference s/batch | inference peak MiB | train step s | train peak MiB |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    by_key = {(r["num_labels"], r["mode"], r["train"]): r for r in results["records"]}
    for num_labels in sorted({r["num_labels"] for r in results["records"]}):
        for mode in MODES:
            infer, train = by_key.get((num_labels, mode, False)), by_key.get((num_labels, mode, True))
            if infer is None:
                continue
            lines.append(f"| {num_labels:,} | {mode} | {infer['median_s']:.3f} | {infer['peak_mib']:.0f} | "
                         f"{train['median_s']:.3f} | {train['peak_mib']:.0f} |")
    return "\n".join(lines)


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode in MODES:
        rows = sorted((r for r in results["records"] if r["mode"] == mode and not r["train"]),
                      key=lambda r: r["num_labels"])
        if rows:
            axes[0].plot([r["num_labels"] for r in rows], [r["median_s"] for r in rows], marker="o", label=mode)
            axes[1].plot([r["num_labels"] for r in rows], [r["peak_mib"] for r in rows], marker="o", label=mode)
    for axis, title in zip(axes, ("inference time per batch (s)", "inference peak memory (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("number of labels N")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", choices=sorted(ENCODERS), default="minilm",
                        help="tiny, tiny-modernbert: smoke tests")
    parser.add_argument("--labels", type=int, nargs="+", default=[28, 256, 1024, 4096, 16384])
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=4096, help="decoupled mode: labels per chunk")
    parser.add_argument("--sampled", type=int, default=1024, help="decoupled training: sampled negatives")
    parser.add_argument("--max-full-labels", type=int, default=4096, help="largest N run with full attention")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--render", help="render an existing JSON instead of measuring")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/large-label-sets.md")
    parser.add_argument("--out", help="JSON path (default: bench/results/large-labels-<device>-<date>-<commit>.json)")
    args = parser.parse_args(argv)
    if args.render:
        path = Path(args.render)
        results = json.loads(path.read_text())
    else:
        results = run(args)
        device = re.sub(r"[^a-z0-9]+", "-", results["provenance"]["device"].lower()).strip("-")[:40]
        commit = (results["provenance"]["commit"] or "nocommit")[:8]
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"large-labels-{device}-{datetime.date.today().isoformat()}-{commit}.json"
        path = Path(args.out) if args.out else path
        path.write_text(json.dumps(results, indent=1))
    plot(results, path.with_suffix(".png"))
    page = DOCS / "large-label-sets.md"
    table = markdown(results, link_from(page, path))
    print(table)
    if args.docs:
        plot_link = link_from(page, path.with_suffix(".png"))
        replace_section("large-labels-table", f"{table}\n\n![large labels]({plot_link})", page)


if __name__ == "__main__":
    main()
