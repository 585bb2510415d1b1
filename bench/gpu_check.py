"""`python -m bench.gpu_check --out DIR` (`make gpu-check OUT=DIR`): on a CUDA machine, build the loss extension,
run every GPU and kernel test, the op and end-to-end benches and the large-label sweep, and write a complete
verdict into DIR in at most the sum of the stage caps (9 minutes by default). See docs/gpu-check.md.

Each stage is a subprocess with its own wall-clock cap, logging to DIR/<stage>.log; summary.json is rewritten
after every stage, so a stage that fails, hangs or is killed loses nothing of the others. Time a stage leaves
unused is banked for the stages after it (the total stays within the sum of the caps). The exit code is
non-zero when a stage failed or timed out, once everything has run. `--dry-run` runs the same stages on the
CPU at tiny sizes (tests/test_gpu_check.py), so the command cannot rot between GPU runs.

This module imports nothing beyond the standard library at top level: the orchestrating process holds no CUDA
context and keeps working when torch or the extension is broken.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"  # where bench/conftest.py writes (not imported: it imports torch)
BUNDLE = "gpu-check.tar.gz"
REPORT = "report.txt"
GRACE_S = 10.0  # a timed-out stage gets SIGINT this long before its cap, so pytest still writes XML and JSON
TAIL_LINES = 15
MAX_CRASHES = 3  # restarts of a test stage that died of a signal
RECORD_ENV_VAR = "LTC_FAST_STAGE_RECORD"  # bench/stage_record.py writes each test's start and outcome there
RECORD_SUFFIX = ".record.jsonl"
TALLY = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")
# Default caps (s), in run order; they sum to 540 s. Overridable with --cap STAGE=SECONDS. "compiled" runs last: its
# Inductor compiles are the least predictable part, and a timeout there costs nothing else.
CAPS = {"build": 90, "env": 30, "tests-gpu": 60, "tests-ops": 90, "ops": 45, "e2e": 120, "large-labels": 45,
        "compiled": 60}
STAGE_NAMES = [*CAPS, "report"]  # "report" (log tails + bundle) always runs, in this process
# Build stage: exit 0 only when the freshly built module loads with its CUDA kernels (not a JIT build).
CHECK_EXTENSION = ("import sys; from ltc_fast.ops import extension_status; status = extension_status(); "
                   "print('loss extension:', status); "
                   "sys.exit(0 if status.startswith('prebuilt') and 'CUDA' in status else 1)")


@dataclass
class Stage:
    name: str
    argv: list[str]
    outputs: list[str] = field(default_factory=list)  # files in DIR it writes besides its log
    collect: bool = False  # copy the JSON it writes into bench/results/ to DIR/<name>.json
    env: dict = field(default_factory=dict)


def build_stages(out: Path, dry_run: bool) -> list[Stage]:
    py = sys.executable  # the machine's own python and torch (make passes python3): nothing is installed
    # bench.stage_record: each test's start and outcome as it happens, so a crash loses nothing (run_stage)
    pytest = [py, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-p", "bench.stage_record"]
    op_test_files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_op_*.py"))
    if dry_run:
        build = [py, "-c", "import glob; print('dry run, no rebuild; prebuilt:', glob.glob('ltc_fast/_loss_ext*'))"]
        # On the CPU the Triton kernels run in the (slow) interpreter: the loss extension's file stands for all.
        op_test_files = ["tests/test_op_label_loss.py"]
        bench, e2e = [], ["-k", "W5 and not compiled"]  # smoke sizes (no --benchmark); W5 has every path
        large = ["--encoder", "tiny", "--text-tokens", "8", "--labels", "4", "8", "--rounds", "1", "--chunk", "4",
                 "--sampled", "2", "--max-full-labels", "4"]
    else:
        # pip first (what users run); setup.py if pip cannot; then prove the module has its CUDA kernels.
        # -v: pip shows the compiler's output (a warning of setup.py's optional build) in the log, not only on failure
        pip = [py, "-m", "pip", "install", "-v", "--no-index", "--no-deps", "--no-build-isolation", "-e", "."]
        fallback = [py, "setup.py", "build_ext", "--inplace"]
        versions = [py, "-c", "import setuptools, torch; print('setuptools', setuptools.__version__, '| torch', "
                    "torch.__version__, 'cuda', torch.version.cuda)"]
        build = ["sh", "-c", f"{shlex.join(versions)}; {{ {shlex.join(pip)} || {shlex.join(fallback)}; }} && "
                 f"LTC_FAST_NO_EXTENSION_BUILD=1 {shlex.join([py, '-c', CHECK_EXTENSION])}"]
        bench, e2e = ["--benchmark"], ["-k", "not compiled"]
        # roberta-base, T=256: the reference still fits at N=256; N=2048 and 16384 are workloads W4 and W5.
        large = ["--encoder", "roberta-base", "--text-tokens", "256", "--labels", "256", "2048", "16384"]
    # After the build, test and time the module stage 0 built: never a silent JIT rebuild.
    no_rebuild = {"LTC_FAST_NO_EXTENSION_BUILD": "1"}
    junit = lambda name: [f"--junitxml={out / name}.xml"]  # noqa: E731
    return [
        Stage("build", build),
        Stage("env", [py, "-m", "bench.gpu_check", "--env-json", str(out / "env.json")], ["env.json"], env=no_rebuild),
        # every `gpu`-marked test, then the kernel tests (on CUDA where there is one) that are not marked
        Stage("tests-gpu", [*pytest, "tests", "-m", "gpu", *junit("tests-gpu")], ["tests-gpu.xml"], env=no_rebuild),
        Stage("tests-ops", [*pytest, *op_test_files, "-m", "not gpu", *junit("tests-ops")], ["tests-ops.xml"],
              env=no_rebuild),
        Stage("ops", [*pytest, "bench/test_ops.py", "bench/test_op_loss.py", *bench], collect=True, env=no_rebuild),
        Stage("e2e", [*pytest, "bench/test_end_to_end.py", *bench, *e2e], collect=True, env=no_rebuild),
        Stage("large-labels", [py, "-m", "bench.large_labels", *large, "--out", str(out / "large-labels.json")],
              ["large-labels.json", "large-labels.png"], env=no_rebuild),
        # launch-free inference at W1 (the launch-bound workload): the reference and ltc_fast under torch.compile
        # with CUDA graphs, against the eager contenders of the e2e stage
        Stage("compiled", [*pytest, "bench/test_end_to_end.py", *bench, "-k", "compiled and W1 and infer"],
              collect=True, env=no_rebuild),
    ]


def _bench_results() -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in RESULTS_DIR.glob("*.json")}


def collect_bench_json(before: dict[Path, int], target: Path) -> bool:
    """Copy the results JSON a pytest bench session wrote (new or rewritten since `before`) to `target`. Kept in
    bench/results/ too, but the op and end-to-end sessions write the same name there: DIR keeps both."""
    changed = [path for path, mtime in _bench_results().items() if before.get(path) != mtime]
    if not changed:
        return False
    shutil.copy2(max(changed, key=lambda path: path.stat().st_mtime_ns), target)
    return True


def _kill_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # the stage's own session: its compile workers and subprocesses too


def _run_process(argv: list[str], log, env: dict, seconds: float) -> tuple[int | None, bool, str | None]:
    """(exit code, timed out, note) of one subprocess under a wall-clock cap, its output appended to `log`."""
    log.write(f"$ {shlex.join(argv)}\n")
    log.flush()
    try:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    except OSError as error:
        return None, False, f"could not start: {error}"
    try:
        return process.wait(max(seconds - GRACE_S, 1.0)), False, None
    except subprocess.TimeoutExpired:
        _kill_group(process, signal.SIGINT)  # pytest's KeyboardInterrupt path writes XML and JSON
        try:
            code = process.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(process, signal.SIGKILL)
            code = process.wait()
        _kill_group(process, signal.SIGKILL)
        return code, True, f"stopped after {seconds:.0f} s"
    except BaseException:  # Ctrl-C of gpu_check itself: leave no stage running behind it
        _kill_group(process, signal.SIGKILL)
        raise


def read_record(path: Path) -> tuple[dict[str, str], list[str]]:
    """A test stage's record (bench/stage_record.py): ({nodeid: outcome} of the finished tests, [nodeid of each
    test that started and never finished: the one running when the process died])."""
    outcomes, started = {}, []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the crash
                continue
            if "outcome" in entry:
                outcomes[entry["nodeid"]] = entry["outcome"]
            else:
                started.append(entry["nodeid"])
    return outcomes, [nodeid for nodeid in started if nodeid not in outcomes]


def _signal_name(code: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(-code).name
    return f"signal {-code}"


def native_backtrace(nodeid: str, target: Path, env: dict, seconds: float) -> bool:
    """Run one test under gdb (cuda-gdb on a CUDA machine) and keep its native backtrace: the Python trace of a
    segfault stops at the call into C++, which is where the question starts."""
    debugger = shutil.which("cuda-gdb") or shutil.which("gdb")
    if debugger is None or seconds < 5:
        return False
    argv = [debugger, "-q", "-batch", "-ex", "run", "-ex", "bt 40", "--args",
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid]
    with target.open("w") as log:
        _run_process(argv, log, {**env, RECORD_ENV_VAR: ""}, seconds)
    return True


def run_stage(stage: Stage, out: Path, allowed_s: float, env: dict) -> dict:
    """Run one stage under its cap; its stdout+stderr go to DIR/<name>.log as they come. A pytest stage that dies
    of a signal is started again without the tests it already ran (its record knows them), up to MAX_CRASHES
    times, after a native backtrace of the crashing test (DIR/<name>-backtrace.log) where a debugger exists."""
    log_path = out / f"{stage.name}.log"
    record_path = out / f"{stage.name}{RECORD_SUFFIX}"
    is_pytest = "pytest" in stage.argv
    stage_env = {**env, **stage.env, **({RECORD_ENV_VAR: str(record_path)} if is_pytest else {})}
    before = _bench_results() if stage.collect else {}
    start = time.monotonic()
    remaining = lambda: allowed_s - (time.monotonic() - start)  # noqa: E731
    crashes = []
    with log_path.open("w") as log:
        code, timed_out, note = _run_process(stage.argv, log, stage_env, allowed_s)
        while is_pytest and code is not None and code < 0 and not timed_out and len(crashes) < MAX_CRASHES:
            crashed = read_record(record_path)[1]
            if not crashed:
                break
            crashes.append({"test": crashed[-1], "signal": _signal_name(code)})
            backtrace = out / f"{stage.name}-backtrace.log"
            debug_s = min(60.0, remaining() / 3)  # the first crash only: later ones are most likely the same
            if not backtrace.exists() and native_backtrace(crashed[-1], backtrace, stage_env, debug_s):
                stage.outputs.append(backtrace.name)
            log.write(f"\n[gpu-check] {stage.name}: died of {crashes[-1]['signal']} in {crashed[-1]}; started again "
                      "without the tests already run\n")
            # A JUnit file of its own per restart: the first one's is gone with the crash
            argv = [re.sub(r"\.xml$", f"-restart{len(crashes)}.xml", arg) if arg.startswith("--junitxml=") else arg
                    for arg in stage.argv]
            stage.outputs.extend(Path(arg.partition("=")[2]).name for arg in argv if arg.startswith("--junitxml="))
            code, timed_out, note = _run_process(argv, log, stage_env, remaining())
    if stage.collect and collect_bench_json(before, out / f"{stage.name}.json"):
        stage.outputs.append(f"{stage.name}.json")
    status = "timeout" if timed_out else "passed" if code == 0 and not crashes else "failed"
    if crashes:
        note = "; ".join(f"died of {crash['signal']} in {crash['test']}" for crash in crashes) + (
            f"; {note}" if note else "")
    record = {"name": stage.name, "status": status, "exit_code": code,
              "duration_s": round(time.monotonic() - start, 1), "allowed_s": round(allowed_s, 1),
              "command": shlex.join(stage.argv), "outputs": [log_path.name, *(f for f in stage.outputs
                                                                               if (out / f).exists())],
              "note": note}
    if is_pytest:
        record["tests"] = tests_tally(record_path, log_path.read_text(errors="replace"), len(crashes))
        if crashes:
            record["crashed"] = crashes
    return record


def tests_tally(record_path: Path, log: str, crashed: int) -> dict[str, int] | None:
    """Counts per outcome: from the stage's record (complete across crashes and restarts), else from pytest's
    closing line."""
    outcomes = read_record(record_path)[0]
    if not outcomes:
        return pytest_tally(log)
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return {**counts, "crashed": crashed} if crashed else counts


def pytest_tally(log: str) -> dict[str, int] | None:
    """pytest's closing line ("3 failed, 40 passed, 2 skipped in 9.1s") as counts; None if it never got there."""
    for line in reversed(log.splitlines()):
        counts = TALLY.findall(line)
        if counts and re.search(r" in [\d.]+s", line):
            return {kind.removesuffix("s") if kind == "errors" else kind: int(n) for n, kind in counts}
    return None


def write_summary(out: Path, summary: dict) -> None:
    temporary = out / "summary.json.tmp"  # replaced atomically: a reader never sees half a file
    temporary.write_text(json.dumps(summary, indent=1))
    temporary.replace(out / "summary.json")


def write_report(out: Path, stages: list[dict]) -> str:
    """One compact file: each stage's verdict and the tail of its log (pytest's last line is its tally)."""
    parts = []
    for stage in stages:
        if stage["status"] == "skipped":
            parts.append(f"== {stage['name']}: skipped ({stage['note']})")
            continue
        parts.append(f"== {stage['name']}: {stage['status']} (exit {stage['exit_code']}, {stage['duration_s']} s of "
                     f"{stage['allowed_s']}) {stage.get('tests') or ''}")
        log = out / f"{stage['name']}.log"
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
            parts.extend(line[:240] for line in lines)
    text = "\n".join(parts) + "\n"
    (out / REPORT).write_text(text)
    return text


def bundle(out: Path) -> None:
    """DIR as one file (the device machine hands back only a few files)."""
    with tarfile.open(out / BUNDLE, "w:gz") as tar:
        for path in sorted(out.iterdir()):
            if path.name != BUNDLE and path.is_file():
                tar.add(path, arcname=f"gpu-check/{path.name}")


def write_env(path: Path) -> None:
    """The `env` stage: what ran where, and which path each part of ltc_fast took."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    from ltc_fast import backends
    from ltc_fast.ops import extension_status
    from ltc_fast.app.provenance import provenance

    def output(argv) -> str | None:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=ROOT, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return None

    def last_line(argv) -> str | None:
        text = output(argv)
        return text.strip().splitlines()[-1] if text and text.strip() else None

    meta = provenance()
    gpu = None
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        gpu = {"name": properties.name, "capability": f"{properties.major}.{properties.minor}",
               "memory_gib": round(properties.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
               "driver": last_line(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])}
    versions = {"python": meta["python"], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                "nvcc": last_line([str(Path(CUDA_HOME) / "bin" / "nvcc"), "--version"]) if CUDA_HOME else None,
                "triton": meta["triton"], "transformers": meta["transformers"]}
    # The commit alone does not say what ran: a checkout carried to a GPU machine may hold uncommitted edits.
    changes = output(["git", "status", "--porcelain", "--untracked-files=no"])
    env = {"provenance": meta, "gpu": gpu, "versions": versions, "extension": extension_status(),
           "backends": backends(), "uncommitted_files": None if changes is None else changes.splitlines()}
    path.write_text(json.dumps(env, indent=1))
    where = f"{meta['device']}" + (f" (sm {gpu['capability']}, {gpu['memory_gib']} GiB)" if gpu else "")
    print(f"{where} | torch {versions['torch']} (CUDA {versions['torch_cuda']}) | triton {versions['triton']} | "
          f"loss extension {env['extension']}")
    for part, path_taken in env["backends"].items():
        print(f"  {part}: {path_taken}")


def _cap(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    if name not in CAPS or not seconds:
        raise argparse.ArgumentTypeError(f"expected STAGE=SECONDS with STAGE in {', '.join(CAPS)}")
    return name, float(seconds)


def _stage_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(CAPS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {unknown}; stages: {', '.join(CAPS)}")
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-check-out"), help="output folder (created)")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU at tiny sizes, no rebuild")
    parser.add_argument("--stages", type=_stage_list, default=list(CAPS),
                        help=f"comma-separated subset of: {','.join(CAPS)} (report always runs)")
    parser.add_argument("--cap", type=_cap, action="append", default=[], metavar="STAGE=SECONDS",
                        help=f"override a stage's wall-clock cap (defaults: {CAPS})")
    parser.add_argument("--env-json", type=Path, help=argparse.SUPPRESS)  # the env stage, in its own process
    args = parser.parse_args(argv)
    if args.env_json:
        write_env(args.env_json)
        return 0

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # A reused folder: files of an earlier run would pass for this one's (outputs are listed if they exist).
    stage_files = (".log", ".xml", ".json", ".png", RECORD_SUFFIX, "-backtrace.log")
    for name in {f"{stage}{ext}" for stage in CAPS for ext in stage_files} | {"summary.json", REPORT, BUNDLE}:
        (out / name).unlink(missing_ok=True)
    for restart_xml in out.glob("*-restart*.xml"):
        restart_xml.unlink()
    caps = {**CAPS, **dict(args.cap)}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.dry_run:
        env.setdefault("TRITON_INTERPRET", "1")  # as the root conftest does for pytest, for large_labels too
        # The dry run checks this command, not the kernels: a fixed test seed, so no random-input flake fails it.
        env.setdefault("LTC_FAST_TEST_SEED", "0")
    else:
        env["LTC_FAST_REQUIRE_EXTENSION"] = "prebuilt"  # setup.py and the tests fail loudly without the module
    summary = {"dry_run": args.dry_run, "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "command": shlex.join([sys.executable, "-m", "bench.gpu_check", *(argv or sys.argv[1:])]),
               "caps_s": caps, "verdict": "running", "stages": []}
    wall = time.monotonic()
    bank = 0.0  # seconds earlier stages left unused
    for stage in build_stages(out, args.dry_run):
        if stage.name not in args.stages:
            record = {"name": stage.name, "status": "skipped", "exit_code": None, "duration_s": 0.0,
                      "outputs": [], "note": "not in --stages"}
        else:
            print(f"[gpu-check] {stage.name}: up to {caps[stage.name] + bank:.0f} s ...", flush=True)
            record = run_stage(stage, out, caps[stage.name] + bank, env)
            bank = max(bank + caps[stage.name] - record["duration_s"], 0.0)
            print(f"[gpu-check] {stage.name}: {record['status']} in {record['duration_s']} s", flush=True)
        summary["stages"].append(record)
        write_summary(out, summary)

    failed = [s["name"] for s in summary["stages"] if s["status"] in ("failed", "timeout")]
    report = {"name": "report", "status": "passed", "exit_code": 0, "duration_s": 0.0,
              "outputs": [REPORT, BUNDLE], "note": "log tails of every stage; DIR bundled into " + BUNDLE}
    summary["stages"].append(report)
    summary.update(verdict="failed" if failed else "passed", failed=failed, wall_s=round(time.monotonic() - wall, 1),
                   finished=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    print(write_report(out, summary["stages"][:-1]), end="")
    write_summary(out, summary)
    bundle(out)  # last: it holds the final summary
    print(f"[gpu-check] {summary['verdict']} in {summary['wall_s']} s; results in {out} ({BUNDLE})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
