"""Backend selection shared by every op: auto / torch / forced fast path, and the environment override."""

import pytest

from ltc_fast.ops.dispatch import ENV_VAR, resolve_backend


def test_auto_takes_the_fast_path_only_where_it_applies(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend("op", None, "triton", True) == "triton"
    assert resolve_backend("op", "auto", "triton", False) == "torch"


def test_torch_is_always_honoured(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend("op", "torch", "triton", True) == "torch"


def test_environment_variable_forces_the_twin_under_auto_only(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    assert resolve_backend("op", None, "triton", True) == "torch"
    assert resolve_backend("op", "triton", "triton", True) == "triton"  # an explicit argument wins


def test_forcing_an_unavailable_fast_path_says_why(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(RuntimeError, match="op: backend='triton'.*no CUDA"):
        resolve_backend("op", "triton", "triton", False, "no CUDA")


@pytest.mark.parametrize("bad", ["cuda", "Triton2"])
def test_unknown_backend_names_the_choices(monkeypatch, bad):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'torch', 'triton'"):
        resolve_backend("op", bad, "triton", True)


def test_bad_environment_value_is_reported(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_backend("op", None, "triton", True)
