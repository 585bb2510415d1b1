"""A pytest plugin for bench/gpu_check.py's test stages: every test's start and outcome, one JSON line each, in
the file named by $LTC_FAST_STAGE_RECORD, written as they happen. It exists for a session that dies of a signal
(a segfault in a kernel or an extension): pytest then prints no summary and writes no JUnit XML, but the record
still says which tests passed or failed and which one was running when the process died. A session started
again with the same record runs only the tests the record has not seen, so one crash does not hide the rest.

Loaded with `-p bench.stage_record`; without the variable it does nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.gpu_check import RECORD_ENV_VAR, read_record


def _record_path() -> Path | None:
    value = os.environ.get(RECORD_ENV_VAR)
    return Path(value) if value else None


def _append(entry: dict) -> None:
    path = _record_path()
    if path is not None:
        with path.open("a") as record:  # opened per line: what is written survives the process dying next
            record.write(json.dumps(entry) + "\n")


def pytest_collection_modifyitems(config, items):
    path = _record_path()
    if path is None:
        return
    finished, crashed = read_record(path)
    seen = set(finished) | set(crashed)
    kept = [item for item in items if item.nodeid not in seen]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in seen])
        items[:] = kept


def pytest_runtest_logstart(nodeid, location):
    _append({"nodeid": nodeid})


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    # One outcome per test: the call's, or setup's when setup failed or skipped, or teardown's when it failed.
    if report.when == "call" or (report.when == "setup" and not report.passed) or (
            report.when == "teardown" and report.failed):
        outcome = "error" if report.when != "call" and report.failed else report.outcome
        _append({"nodeid": report.nodeid, "outcome": outcome})
