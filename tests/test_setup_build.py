"""setup.py builds the loss extension where it can and, when the build fails, falls back to a pure-Python install
with a warning; with LTC_FAST_REQUIRE_EXTENSION set (CI, `make gpu-check`) a failed build (a C++ or an nvcc
error) fails the install loudly instead of passing on the PyTorch path."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _build_with_a_broken_compiler(tmp_path, **env):
    """`setup.py build_ext` into tmp_path with a compiler that always fails (the repo's own build is untouched)."""
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'broken compiler' >&2\nexit 1\n")
    broken.chmod(0o755)
    environment = {k: v for k, v in os.environ.items() if k not in ("LTC_FAST_REQUIRE_EXTENSION",
                                                                   "LTC_FAST_NO_EXTENSION_BUILD")}
    environment.update(CC=str(broken), CXX=str(broken), MAX_JOBS="1", **env)
    return subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
                           "--build-temp", str(tmp_path / "temp")], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_failed_build_warns_and_installs_pure_python(tmp_path):
    result = _build_with_a_broken_compiler(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not building the C++ loss extension" in result.stderr
    assert not list((tmp_path / "lib").rglob("_loss_ext*.so"))


@pytest.mark.slow
def test_a_failed_build_fails_loudly_where_the_extension_is_required(tmp_path):
    result = _build_with_a_broken_compiler(tmp_path, LTC_FAST_REQUIRE_EXTENSION="prebuilt")
    assert result.returncode != 0
    assert "building the loss extension failed and LTC_FAST_REQUIRE_EXTENSION=prebuilt requires it" in result.stderr
