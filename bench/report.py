"""Render benchmark results: a markdown table (ratios against the reference with SDPA) and a PNG plot
of throughput and peak memory against the number of labels (log scale).

    python -m bench.report                      # newest bench/results/*.json, table to stdout, plot beside it
    python -m bench.report FILE.json --docs     # also rewrite the table in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from .contenders import BASELINE, CONTENDERS

DOCS = Path(__file__).resolve().parents[1] / "docs"
RESULTS_DIR = Path(__file__).with_name("results")


def link_from(page: Path, target: Path) -> str:
    """`target` as a relative link in the markdown `page`."""
    return Path(os.path.relpath(target.resolve(), page.resolve().parent)).as_posix()


def replace_section(name: str, text: str, page: Path) -> None:
    """Replace what stands between `<!-- name:start -->` and `<!-- name:end -->` in a docs page."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = page.read_text()
    if start not in content or end not in content:
        raise ValueError(f"{page} has no {start} ... {end} section to fill")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{start}\n{text.strip()}\n{end}{tail}")


def add_results_arguments(parser: argparse.ArgumentParser, page: Path) -> None:
    """--out, --render and --docs, for a bench script whose results are one JSON and one table in a docs page."""
    parser.add_argument("--out", type=Path, help="results JSON (default: bench/results/<name>-<commit>.json)")
    parser.add_argument("--render", type=Path, help="only print (and with --docs write) the table of this JSON")
    parser.add_argument("--docs", action="store_true", help=f"write the table into docs/{page.name}")


def measured_or_rendered(args, name: str, measure: Callable[[dict, Path], None]) -> tuple[Path, dict]:
    """(path, results): the JSON given by --render, or a new measurement: `measure(results, path)` fills
    `results` (which starts with the provenance) and may save it to `path` as it goes (--out, else
    bench/results/<name>-<commit>.json); it is saved once more when `measure` returns."""
    if args.render:
        return args.render, json.loads(args.render.read_text())
    from ltc_fast.app.provenance import provenance

    results = {"provenance": provenance()}
    path = args.out or RESULTS_DIR / f"{name}-{results['provenance']['commit'][:8]}.json"
    measure(results, path)
    path.write_text(json.dumps(results, indent=1))
    return path, results


def publish_table(table: str, section: str, page: Path, docs: bool) -> None:
    """Print the table; with `docs`, also write it into its section of the docs page."""
    print(table)
    if docs:
        replace_section(section, table, page)


def newest_results() -> Path:
    # Only end-to-end sessions: not the accuracy, large-label, demo, cost, CPU-inference or op-bench results
    others = ("accuracy-", "large-labels-", "demo-", "cost-on-paper-", "cpu-inference-")
    files = sorted((p for p in RESULTS_DIR.glob("*.json")
                    if not p.name.startswith(others) and not p.stem.endswith("-ops")), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"no results in {RESULTS_DIR}: run `pytest bench/ --benchmark` first")
    return files[-1]


def end_to_end_records(results: dict) -> list[dict]:
    """The W1-W5 model records; op benches' records (with an "op" key) are reported on their own."""
    return [r for r in results["records"] if "op" not in r]


def markdown_table(results: dict, link: str) -> str:
    meta = results["provenance"]
    records = {(r["workload"], r["mode"], r["contender"]): r for r in end_to_end_records(results)}
    lines = [
        f"Measured on {meta['device']}, torch {meta['torch']}, transformers {meta['transformers']}, commit "
        f"`{(meta['commit'] or '?')[:8]}`, with `{meta['command']}` ([JSON]({link})). Ratios are against "
        f"`{BASELINE}` in the same run: speed-up = its median time / this one's; memory = this one's peak / its.",
        "",
        "| workload | N | B | step | model | median s | spread (IQR) s | examples/s | text tokens/s | peak MiB "
        "| speed-up | memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (workload, mode, contender), r in sorted(records.items(), key=lambda kv: (
            kv[0][0], kv[0][1], CONTENDERS.index(kv[0][2]))):
        base = records.get((workload, mode, BASELINE))
        speed = f"{base['median_s'] / r['median_s']:.2f}x" if base else "-"
        memory = f"{r['peak_mib'] / base['peak_mib']:.2f}x" if base and base["peak_mib"] > 0 else "-"
        lines.append(
            f"| {workload} | {r['num_labels']} | {r['batch_size']} | {mode} | {contender} | {r['median_s']:.3f} "
            f"| {r['iqr_s']:.3f} | {r['examples_per_s']:.2f} | {r['text_tokens_per_s']:.0f} | {r['peak_mib']:.0f} "
            f"| {speed} | {memory} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.ticker
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for contender in CONTENDERS:
        rows = sorted((r for r in end_to_end_records(results) if r["contender"] == contender and r["mode"] == "train"),
                      key=lambda r: r["num_labels"])
        if not rows:
            continue
        labels = [r["num_labels"] for r in rows]
        axes[0].plot(labels, [r["examples_per_s"] for r in rows], marker="o", label=contender)
        axes[1].plot(labels, [r["peak_mib"] for r in rows], marker="o", label=contender)
    ticks = sorted({(r["num_labels"], r["workload"]) for r in end_to_end_records(results)})
    for axis, title in zip(axes, ("train step throughput (examples/s)", "peak memory of a train step (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_xticks([n for n, _ in ticks], [f"{n}\n{w}" for n, w in ticks])
        axis.set_xlabel("number of labels N (workload; T and B differ per workload)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(results["provenance"]["device"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", type=Path, help="a bench/results/*.json (default: the newest)")
    parser.add_argument("--docs", action="store_true", help="rewrite the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    path = (args.results or newest_results()).resolve()
    results = json.loads(path.read_text())
    png = path.with_suffix(".png")
    plot(results, png)
    page = DOCS / "benchmarks.md"
    table = (markdown_table(results, link_from(page, path))
             + f"\n\n![throughput and memory against N]({link_from(page, png)})")
    print(table)
    if args.docs:
        replace_section("bench-table", table, page)


if __name__ == "__main__":
    main()
