"""`python -m bench.gpu_check` (`make gpu-check`): its dry run on the CPU keeps the GPU command from rotting between
the rare runs on a GPU machine; the bookkeeping (timeouts, failures, results copied) is checked on stand-in stages."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]
ENV_KEYS = {"provenance", "gpu", "versions", "extension", "backends"}


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_the_dry_run_runs_every_stage_and_writes_a_complete_verdict(tmp_path):
    out = tmp_path / "gc"
    # The caps are sized for the GPU machine; on a busy 2-core CPU a dry stage can take longer than its cap
    # (tests-ops took 245 s once). This checks the plumbing, not the time: every stage gets room.
    roomy_caps = [arg for stage in gpu_check.CAPS for arg in ("--cap", f"{stage}=900")]
    result = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out), *roomy_caps],
                            cwd=ROOT, capture_output=True, text=True, timeout=3600, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    summary = _summary(out)
    assert [stage["name"] for stage in summary["stages"]] == gpu_check.STAGE_NAMES
    assert {stage["name"]: stage["status"] for stage in summary["stages"]} == dict.fromkeys(
        gpu_check.STAGE_NAMES, "passed")
    assert summary["verdict"] == "passed" and summary["dry_run"]
    env = json.loads((out / "env.json").read_text())
    assert ENV_KEYS <= env.keys() and env["provenance"]["torch"] and env["extension"]
    for stage in summary["stages"]:
        assert stage["outputs"], stage["name"]
        for name in stage["outputs"]:
            assert (out / name).is_file(), (stage["name"], name)
    tallies = {stage["name"]: stage.get("tests") for stage in summary["stages"]}
    assert tallies["tests-ops"]["passed"] > 0 and tallies["e2e"]["passed"] > 0
    assert "large-labels.json" in summary["stages"][gpu_check.STAGE_NAMES.index("large-labels")]["outputs"]
    with tarfile.open(out / gpu_check.BUNDLE) as tar:
        bundled = {Path(name).name for name in tar.getnames()}
    assert {"summary.json", "env.json", "tests-gpu.xml", "report.txt"} <= bundled


def test_a_failed_stage_fails_the_run_only_after_the_others_ran(tmp_path, monkeypatch):
    stages = [gpu_check.Stage("build", [sys.executable, "-c", "print('compiling'); raise SystemExit(3)"]),
              gpu_check.Stage("env", [sys.executable, "-c", "print('fine')"])]
    monkeypatch.setattr(gpu_check, "build_stages", lambda out, dry_run: stages)
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 1
    summary = _summary(tmp_path)
    assert [(s["name"], s["status"], s["exit_code"]) for s in summary["stages"]] == [
        ("build", "failed", 3), ("env", "passed", 0), ("report", "passed", 0)]
    assert summary["verdict"] == "failed" and summary["failed"] == ["build"]
    assert "compiling" in (tmp_path / "build.log").read_text()
    assert "== build: failed" in (tmp_path / gpu_check.REPORT).read_text()


def test_stages_outside_the_selection_are_listed_as_skipped(tmp_path):
    assert gpu_check.main(["--dry-run", "--stages", "build", "--out", str(tmp_path)]) == 0
    statuses = {stage["name"]: stage["status"] for stage in _summary(tmp_path)["stages"]}
    assert statuses == {"build": "passed", "report": "passed", **dict.fromkeys(gpu_check.STAGE_NAMES[1:-1], "skipped")}
    assert (tmp_path / gpu_check.BUNDLE).is_file()


def test_a_stage_past_its_cap_is_stopped_and_keeps_its_log(tmp_path):
    stage = gpu_check.Stage("slow", [sys.executable, "-c", "print('started', flush=True); import time; time.sleep(60)"])
    start = time.monotonic()
    record = gpu_check.run_stage(stage, tmp_path, allowed_s=1.0, env={})
    assert time.monotonic() - start < 20
    assert record["status"] == "timeout" and "started" in (tmp_path / "slow.log").read_text()


def test_the_json_a_bench_session_writes_is_copied_into_the_output(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "old.json").write_text("{}")
    monkeypatch.setattr(gpu_check, "RESULTS_DIR", results)
    before = gpu_check._bench_results()
    assert not gpu_check.collect_bench_json(before, tmp_path / "ops.json")
    (results / "new.json").write_text('{"records": []}')
    assert gpu_check.collect_bench_json(before, tmp_path / "ops.json")
    assert (tmp_path / "ops.json").read_text() == '{"records": []}'


def test_pytest_tally():
    log = "....\n=== short test summary ===\nFAILED x\n2 failed, 40 passed, 3 skipped, 1 error in 9.12s (0:00:09)\n"
    assert gpu_check.pytest_tally(log) == {"failed": 2, "passed": 40, "skipped": 3, "error": 1}
    assert gpu_check.pytest_tally("collecting ... KeyboardInterrupt") is None


CRASHING_TESTS = '''
import os, signal

def test_before():
    pass

def test_fails():
    assert False

def test_crashes():
    os.kill(os.getpid(), signal.SIGSEGV)

def test_after():
    pass
'''


def test_a_test_stage_that_dies_of_a_signal_is_restarted_without_the_tests_it_ran(tmp_path, monkeypatch):
    tests = tmp_path / "test_crashing.py"
    tests.write_text(CRASHING_TESTS)
    monkeypatch.setattr(gpu_check, "native_backtrace", lambda *args: False)  # gdb's run is checked below
    stage = gpu_check.Stage("tests-x", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                                        "bench.stage_record", str(tests), f"--junitxml={tmp_path / 'tests-x.xml'}"])
    record = gpu_check.run_stage(stage, tmp_path, allowed_s=120.0, env=dict(os.environ))
    assert record["status"] == "failed" and record["exit_code"] == 0  # the restart ran test_after and passed
    assert [(crash["signal"], crash["test"].rpartition("/")[2]) for crash in record["crashed"]] == [
        ("SIGSEGV", "test_crashing.py::test_crashes")]
    assert record["tests"] == {"passed": 2, "failed": 1, "crashed": 1}
    assert "died of SIGSEGV" in record["note"] and "tests-x-restart1.xml" in record["outputs"]
    restart_xml = (tmp_path / "tests-x-restart1.xml").read_text()
    assert "test_after" in restart_xml and "test_before" not in restart_xml


@pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb")
def test_the_native_backtrace_of_a_crashing_test_is_kept(tmp_path):
    tests = tmp_path / "test_crashing.py"
    tests.write_text(CRASHING_TESTS)
    target = tmp_path / "bt.log"
    assert gpu_check.native_backtrace(f"{tests}::test_crashes", target, dict(os.environ), 60.0)
    text = target.read_text()
    if "ptrace" in text and "#0" not in text:
        pytest.skip("this machine does not allow ptrace")
    assert "SIGSEGV" in text and "#0" in text
