"""`pytest bench/ --benchmark`: real workload sizes, timed rounds (pytest-benchmark), results written to
`bench/results/<device>-<date>-<commit>.json` and ltc_fast/reference ratios printed.
`pytest bench/`: tiny sizes, each bench run once untimed (a smoke test, run by CI)."""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from ltc_fast.app.provenance import provenance

from .contenders import BASELINE
from .measure import bf16_matmul_peak_flops, copy_bandwidth_gbps
from .workloads import TINY_WORKLOADS, WORKLOADS, roberta_base_config, tiny_roberta_config

RESULTS_DIR = Path(__file__).with_name("results")


def pytest_addoption(parser):
    group = parser.getgroup("ltc_fast benchmarks")
    group.addoption("--benchmark", action="store_true", default=False,
                    help="real workload sizes and timing; writes bench/results/*.json (default: tiny smoke run)")
    group.addoption("--bench-rounds", type=int, default=3, help="timed rounds per bench (after one warm-up)")


def pytest_configure(config):
    if not config.getoption("--benchmark"):
        config.option.benchmark_disable = True  # pytest-benchmark then calls each bench once, untimed


@dataclass
class BenchSession:
    real_sizes: bool
    rounds: int
    device: torch.device
    records: list = field(default_factory=list)
    peak_flops: float | None = None
    _copy_gbps: float | None = None

    def copy_gbps(self) -> float:
        """Measured copy bandwidth of this device (once per session): the denominator of op GB/s."""
        if self._copy_gbps is None:
            self._copy_gbps = copy_bandwidth_gbps(self.device, 512 if self.real_sizes else 4)
        return self._copy_gbps

    def record_op(self, benchmark, fields: dict, traffic_bytes: int, calls_per_round: int = 1) -> None:
        """Append an op bench's record: its `fields` (with an "op" key), the median time of one call and the
        achieved bandwidth of `traffic_bytes` (the op's minimum memory traffic), also as a share of copy's."""
        stats = benchmark.stats.stats
        median_s = stats.median / calls_per_round
        gbps = traffic_bytes / median_s / 1e9
        record = {**fields, "median_s": median_s, "iqr_s": stats.iqr / calls_per_round, "rounds": stats.rounds,
                  "calls_per_round": calls_per_round, "bytes": traffic_bytes, "gbps": gbps,
                  "copy_gbps": self.copy_gbps(), "fraction_of_copy": gbps / self.copy_gbps()}
        benchmark.extra_info.update(record)
        self.records.append(record)

    def workload(self, workload_id):
        return (WORKLOADS if self.real_sizes else TINY_WORKLOADS)[workload_id]

    def encoder_config(self):
        return roberta_base_config() if self.real_sizes else tiny_roberta_config()

    @property
    def autocast_dtype(self):
        return torch.bfloat16 if self.device.type == "cuda" else None  # bf16 on GPU, fp32 on CPU


@pytest.fixture(scope="session")
def bench_session(request) -> BenchSession:
    real = request.config.getoption("--benchmark")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    session = BenchSession(real, request.config.getoption("--bench-rounds"), device)
    if real:
        session.peak_flops = bf16_matmul_peak_flops(device)
    request.config._ltc_bench_session = session
    return session


def _results_path(meta, records) -> Path:
    """One name per device, date, commit and kind of session: an op-bench session ("-ops") and an end-to-end
    one run at the same commit (as `make gpu-check` does) must not overwrite each other."""
    device = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")[:40]
    date = datetime.date.today().isoformat()
    kind = "-ops" if all("op" in record for record in records) else ""
    return RESULTS_DIR / f"{device}-{date}-{(meta['commit'] or 'nocommit')[:8]}{kind}.json"


def pytest_sessionfinish(session, exitstatus):
    bench = getattr(session.config, "_ltc_bench_session", None)
    if bench is None or not bench.real_sizes or not bench.records:
        return
    meta = provenance()
    meta["bf16_matmul_peak_tflops"] = None if bench.peak_flops is None else bench.peak_flops / 1e12
    meta["copy_bandwidth_gbps"] = bench._copy_gbps
    path = _results_path(meta, bench.records)
    RESULTS_DIR.mkdir(exist_ok=True)
    path.write_text(json.dumps({"provenance": meta, "records": bench.records}, indent=1))
    session.config._ltc_results_path = path


def pytest_terminal_summary(terminalreporter, config):
    bench = getattr(config, "_ltc_bench_session", None)
    if bench is None or not bench.records:
        return
    terminalreporter.section("ltc_fast / reference (SDPA): speed-up and memory ratio")
    # Op benches (ltc_fast/ops kernels against their torch compositions) add records with "op" set.
    by_key = {(r["workload"], r["mode"], r["contender"]): r for r in bench.records
              if r.get("median_s") and "op" not in r}
    for (workload, mode, contender), record in sorted(by_key.items()):
        baseline = by_key.get((workload, mode, BASELINE))
        if contender != "ltc_fast" or baseline is None:
            continue
        terminalreporter.write_line(
            f"{workload} {mode:5}: {baseline['median_s'] / record['median_s']:.2f}x faster, "
            f"peak memory {record['peak_mib'] / max(baseline['peak_mib'], 1e-9):.2f}x of the reference's")
    _op_summary(terminalreporter, bench.records)
    path = getattr(config, "_ltc_results_path", None)
    if path:
        terminalreporter.write_line(f"results: {path}")


def _op_summary(terminalreporter, records) -> None:
    """Op benches: Triton kernel against its torch twin, and the kernel's share of the copy bandwidth."""
    # Loss-op records (bench/test_op_loss.py) have a shape, not a workload, and no Triton contender.
    ops = {(r["op"], r["workload"], r["mode"], r["contender"]): r for r in records if "op" in r and "workload" in r}
    lines = []
    for (op, workload, mode, contender), record in sorted(ops.items()):
        twin = ops.get((op, workload, mode, "torch"))
        if contender == "triton" and twin is not None:
            lines.append(f"{op} {workload} {mode:7}: {twin['median_s'] / record['median_s']:.2f}x the torch twin, "
                         f"{record['gbps']:.0f} GB/s = {record['fraction_of_copy']:.0%} of copy bandwidth")
    if lines:
        terminalreporter.section("ltc_fast ops: Triton kernel / torch twin")
        for line in lines:
            terminalreporter.write_line(line)
