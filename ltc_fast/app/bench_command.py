"""`ltc-fast bench`: runs the benchmark suite, which lives in the source repository's `bench/` folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def find_bench_dir(bench_dir: str | None = None) -> Path:
    """`bench_dir`, else `bench/` next to the `ltc_fast` package (an editable install or a source checkout)."""
    candidate = Path(bench_dir) if bench_dir else Path(__file__).resolve().parents[2] / "bench"
    if not (candidate / "conftest.py").is_file():
        where = f"{str(candidate)!r} is not the benchmark folder (no conftest.py)" if bench_dir else (
            "no bench/ folder next to the installed package")
        raise ValueError(f"{where}; the benchmarks live in the source repository: clone it, `pip install -e .` "
                         f"there, or pass --bench-dir REPO/bench")
    return candidate


def run_benchmarks(pytest_args: list[str], bench_dir: str | None = None, smoke: bool = False) -> int:
    """`pytest bench/ --benchmark [pytest_args]` (real sizes, timed) or, with `smoke`, the tiny untimed run;
    returns pytest's exit code."""
    folder = find_bench_dir(bench_dir)
    command = [sys.executable, "-m", "pytest", str(folder), *([] if smoke else ["--benchmark"]), *pytest_args]
    print("running: " + " ".join(command), file=sys.stderr)
    return subprocess.call(command, cwd=folder.parent)
