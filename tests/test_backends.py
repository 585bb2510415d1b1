"""`ltc_fast.backends()` / `ltc-fast info`: which path each part takes on this machine."""

import pytest

import ltc_fast
from ltc_fast.app import cli
from ltc_fast.ops import dispatch, loss_extension


def test_cpu_report_names_the_twins_and_the_extension(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    report = ltc_fast.backends("cpu")
    assert report["tensors on"] == "cpu"
    assert report["label injection / label head"].startswith("torch (")
    if loss_extension.runs_on(__import__("torch").device("cpu")):
        assert report["loss"] == f"extension ({loss_extension.extension_status()})"
    else:
        assert report["loss"].startswith("torch (extension unavailable")


def test_the_environment_override_shows(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    report = ltc_fast.backends("cpu")
    assert report["loss"] == report["label injection / label head"] == f"torch ({dispatch.ENV_VAR}=torch)"


@pytest.mark.gpu
def test_cuda_report_names_triton():
    assert ltc_fast.backends("cuda")["label injection / label head"].startswith("triton")


def test_info_command_prints_versions_and_paths(capsys):
    assert cli.main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for line in ("torch:", "transformers:", "loss:", "packed attention:", "tensors on: cpu"):
        assert line in out
