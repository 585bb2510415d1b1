"""The report renders what was measured (the accuracy study's own tests are in tests/test_accuracy_study.py)."""

from __future__ import annotations

import json

import pytest

from . import report


def _record(workload, contender, mode, median, peak, num_labels=28):
    return {"workload": workload, "num_labels": num_labels, "batch_size": 4, "text_tokens": 40, "mode": mode,
            "contender": contender, "median_s": median, "iqr_s": 0.01, "min_s": median, "max_s": median,
            "rounds": 3, "examples_per_s": 4 / median, "text_tokens_per_s": 40 / median, "peak_mib": peak}


def test_table_ratios_and_plot(tmp_path):
    results = {"provenance": {"device": "test device", "torch": "t", "transformers": "x", "commit": "abcdef123",
                              "command": "pytest bench/ --benchmark"},
               "records": [_record("W1", "reference-sdpa", "train", 2.0, 100.0),
                           _record("W1", "ltc_fast", "train", 0.5, 25.0),
                           _record("W2", "ltc_fast", "train", 1.0, 50.0, num_labels=128)]}
    table = report.markdown_table(results, "bench/results/x.json")
    ltc_row = next(line for line in table.splitlines() if "| W1 |" in line and "ltc_fast" in line)
    assert "| 4.00x | 0.25x |" in ltc_row
    assert "| - | - |" in next(line for line in table.splitlines() if "| W2 |" in line)
    assert "[JSON](bench/results/x.json)" in table
    png = tmp_path / "plot.png"
    report.plot(results, png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_docs_section_is_replaced_and_missing_markers_are_an_error(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- t:start -->\nold\n<!-- t:end -->\noutro\n")
    report.replace_section("t", "new table", page)
    assert page.read_text() == "intro\n<!-- t:start -->\nnew table\n<!-- t:end -->\noutro\n"
    with pytest.raises(ValueError, match="has no <!-- other:start -->"):
        report.replace_section("other", "x", page)


def test_the_docs_pages_hold_every_generated_table_and_their_links_resolve():
    """The tables the bench scripts write live in docs/; each link in them must point at a committed file."""
    import re
    for page, name in ((report.DOCS / "benchmarks.md", "bench-table"), (report.DOCS / "accuracy.md", "accuracy-pilot"),
                       (report.DOCS / "accuracy.md", "accuracy-study"), (report.DOCS / "accuracy.md", "accuracy-long"),
                       (report.DOCS / "large-label-sets.md", "large-labels-table"),
                       (report.DOCS / "benchmarks.md", "cost-on-paper"),
                       (report.DOCS / "benchmarks.md", "cpu-inference")):
        content = page.read_text()
        section = content.split(f"<!-- {name}:start -->", 1)[1].split(f"<!-- {name}:end -->", 1)[0]
        links = re.findall(r"\]\(([^)#]+)\)", section)
        assert links, (page, name)
        for link in links:
            assert (page.parent / link).resolve().exists(), (page.name, link)


def test_interleaved_ab_times_both_contenders():
    from . import interleaved

    result = interleaved.main(["W3", "--layers", "1", "--rounds", "1"])
    assert set(result["medians"]) == {"reference-sdpa", "ltc_fast"}
    for parts in result["medians"].values():
        assert set(parts) == {"forward_s", "backward_s", "optimizer_s"} and all(v > 0 for v in parts.values())


def test_large_label_sweep_runs_on_modernbert(tmp_path):
    """Rotary positions and local windows: ModernBERT's 8,192 positions hold 600 labels, even for the reference."""
    from bench import large_labels

    out = tmp_path / "sweep.json"
    large_labels.main(["--encoder", "tiny-modernbert", "--labels", "3", "600", "--text-tokens", "8", "--chunk", "256",
                       "--sampled", "4", "--rounds", "1", "--out", str(out)])
    measured = {(r["num_labels"], r["mode"], r["train"]) for r in json.loads(out.read_text())["records"]}
    assert {(600, "reference", False), (600, "ltc_fast shared", True), (600, "ltc_fast decoupled", True)} <= measured


def test_large_label_sweep_runs_and_renders(tmp_path):
    from bench import large_labels

    out = tmp_path / "sweep.json"
    large_labels.main(["--encoder", "tiny", "--labels", "3", "600", "--text-tokens", "8", "--chunk", "256",
                       "--sampled", "4", "--rounds", "1", "--out", str(out)])
    results = json.loads(out.read_text())
    measured = {(r["num_labels"], r["mode"], r["train"]) for r in results["records"]}
    # The reference cannot place 600 labels in 512 positions; the two ltc_fast modes can.
    assert (3, "reference", False) in measured and (600, "reference", False) not in measured
    assert {(600, "ltc_fast shared", True), (600, "ltc_fast decoupled", True)} <= measured
    assert (tmp_path / "sweep.png").exists()
    table = large_labels.markdown(results, "x.json")
    assert "| 600 | ltc_fast decoupled |" in table


def test_cpu_inference_measures_every_way_and_renders(tmp_path):
    """The bundled MiniLM on a few texts, one round: every way gives the plain way's probabilities, packing
    computes exactly the real tokens, sorting fewer rows than plain order, and the table renders."""
    from bench import cpu_inference

    out = tmp_path / "cpu.json"
    cpu_inference.main(["--texts", "12", "--batch-size", "4", "--rounds", "1", "--ways", "plain", "sorted", "packed",
                        "--out", str(out)])
    records = {r["way"]: r for r in json.loads(out.read_text())["records"]}
    assert set(records) == {"plain", "sorted", "packed"}
    assert records["packed"]["encoder_rows"] == records["packed"]["real_tokens"]
    assert records["sorted"]["encoder_rows"] < records["plain"]["encoder_rows"]
    assert all(r["max_abs_diff_vs_plain"] < 1e-5 and r["median_s"] > 0 for r in records.values())
    cpu_inference.main(["--render", str(out)])
