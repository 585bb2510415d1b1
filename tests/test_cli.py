"""The `ltc-fast` command end to end on a tiny random encoder: train -> eval -> predict -> convert and back,
each bad input (non-zero exit, file and line in the message, nothing left in --out), --help, bench."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from ltc_fast import AutoModelForTokenSequenceClassification as Model
from ltc_fast import prediction, tokenize_texts
from ltc_fast.app import cli
from ltc_fast.app.evaluation import multilabel_metrics
from ltc_fast.prediction import predict_probas
from ltc_fast.reference import ReferenceLabelTokenModel, reference_tokenize
from tests.helpers import save_tiny_encoder

REPO = Path(__file__).resolve().parents[1]
LABELS = ["calm", "fear", "joy", "love"]  # sorted: the label set the training data builds
WORDS = ["happy", "sad", "angry", "calm", "the", "a", "is", "not", "very", "day", "food", "good", "bad"]


def _rows(count, rng):
    rows = []
    for _ in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7)))
        rows.append({"text": text, "labels": rng.sample(LABELS, rng.randint(0, 2))})
    rows[0]["labels"] = list(LABELS)  # every label occurs
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def run(*argv):
    return cli.main([str(arg) for arg in argv])


def _no_leftovers(directory: Path):
    assert not [p.name for p in directory.iterdir() if ".partial" in p.name], "a staging directory was left"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny encoder, train/dev files and a model trained from them with the command (once per module)."""
    root = tmp_path_factory.mktemp("cli")
    rng = random.Random(0)
    paths = {
        "root": root,
        "encoder": save_tiny_encoder(root / "encoder"),
        "train": _write_jsonl(root / "train.jsonl", _rows(20, rng)),
        "dev": _write_jsonl(root / "dev.jsonl", _rows(10, rng)),
        "model": root / "model",
    }
    code = run("train", "--model", paths["encoder"], "--train", paths["train"], "--dev", paths["dev"],
               "--epochs", 1, "--batch-size", 4, "--eval-steps", 2, "--logging-steps", 1, "--lr", 1e-3,
               "--max-length", 32, "--tune-thresholds", "--seed", 1, "--out", paths["model"])
    assert code == 0
    return paths


def test_train_writes_a_complete_model_directory(work):
    model_dir = work["model"]
    assert {p.name for p in model_dir.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                     "labels.txt", "metrics.json"}
    assert not (model_dir / "checkpoints").exists()
    _no_leftovers(work["root"])
    assert (model_dir / "labels.txt").read_text().split() == LABELS
    metrics = json.loads((model_dir / "metrics.json").read_text())
    steps = [entry["step"] for entry in metrics["evaluations"]]
    assert steps[:2] == [2, 4], "dev evaluated every --eval-steps"
    best = max(metrics["evaluations"], key=lambda entry: entry["micro_f1"])
    assert metrics["best_dev_micro_f1"] == best["micro_f1"] and metrics["best_step"] in steps
    assert metrics["command"].startswith("ltc-fast train --model") and metrics["provenance"]["torch"]
    assert metrics["args"]["eval_steps"] == 2
    assert [row["label"] for row in metrics["dev"]["per_label"]] == LABELS
    model = Model.from_pretrained(model_dir)
    assert model.config.label_names == LABELS
    assert metrics["label_thresholds"] == model.config.label_thresholds and len(model.config.label_thresholds) == 4


def test_eval_prints_a_table_and_writes_json(work, tmp_path, capsys):
    assert run("eval", "--model", work["model"], "--data", work["dev"], "--json", tmp_path / "r.json") == 0
    printed = capsys.readouterr().out
    assert "micro_f1" in printed and all(f"\n  {name} " in printed for name in LABELS)
    report = json.loads((tmp_path / "r.json").read_text())
    model = Model.from_pretrained(work["model"])
    probas = predict_probas(model, AutoTokenizer.from_pretrained(work["model"]), _texts(work["dev"]))
    targets = np.zeros((10, 4))
    for row, entry in enumerate(_jsonl(work["dev"])):
        targets[row, [LABELS.index(name) for name in entry["labels"]]] = 1
    expected = multilabel_metrics(probas, targets, model.config.label_thresholds)  # the saved thresholds
    for key, value in expected.items():
        assert report["metrics"][key] == pytest.approx(value, nan_ok=True), key
    assert [row["threshold"] for row in report["per_label"]] == pytest.approx(model.config.label_thresholds)


def test_eval_threshold_overrides_and_tuning_saves(work, tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(work["model"], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["label_thresholds"] = None
    (model_dir / "config.json").write_text(json.dumps(config))
    assert run("eval", "--model", model_dir, "--data", work["dev"], "--threshold", 0.2, "--json", tmp_path / "a.json") == 0
    assert {row["threshold"] for row in json.loads((tmp_path / "a.json").read_text())["per_label"]} == {0.2}
    assert run("eval", "--model", model_dir, "--data", work["dev"], "--tune-thresholds") == 0
    tuned = Model.from_pretrained(model_dir).config.label_thresholds
    assert tuned == pytest.approx(Model.from_pretrained(work["model"]).config.label_thresholds), \
        "tuned on the same dev data as train --tune-thresholds"


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _texts(path):
    return [row["text"] for row in _jsonl(path)]


def test_predict_from_a_file_and_from_stdin(work, tmp_path, capsys, monkeypatch):
    texts = _texts(work["dev"])
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    assert run("predict", "--model", work["model"], "--input", tmp_path / "in.txt", "--output", tmp_path / "out.jsonl",
               "--top-k", 2, "--batch-size", 3) == 0
    lines = _jsonl(tmp_path / "out.jsonl")
    assert [line["text"] for line in lines] == texts
    expected = Model.from_pretrained(work["model"]).predict(texts, top_k=2)
    for line, labels in zip(lines, expected):
        assert [entry["label"] for entry in line["labels"]] == [entry["label"] for entry in labels]
        assert [entry["score"] for entry in line["labels"]] == pytest.approx([e["score"] for e in labels], abs=1e-6)
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(Path(work["dev"]).read_text()))
    assert run("predict", "--model", work["model"], "--input-format", "jsonl", "--threshold", 0.0) == 0
    out = capsys.readouterr()
    from_stdin = [json.loads(line) for line in out.out.splitlines()]
    assert [line["text"] for line in from_stdin] == texts
    assert all(len(line["labels"]) == 4 for line in from_stdin), "threshold 0 keeps every label"
    assert "predict:" not in out.err, "no progress bar on standard input"


def test_convert_to_reference_and_back_gives_identical_logits(work, tmp_path):
    reference_dir, back_dir = tmp_path / "reference", tmp_path / "back"
    assert run("convert", "--to-reference", work["model"], "--out", reference_dir) == 0
    assert (reference_dir / "pytorch_model.bin").exists()
    assert run("convert", "--from-reference", reference_dir, "--out", back_dir) == 0
    original, back = Model.from_pretrained(work["model"]), Model.from_pretrained(back_dir)
    tokenizer = AutoTokenizer.from_pretrained(work["model"])
    texts = _texts(work["dev"])
    batch = tokenize_texts(tokenizer, texts, 4, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = original(**batch).logits
        assert torch.equal(back(**batch).logits, logits)
    # The reference itself, with its own tokenizer (label tokens added) and label-token inputs.
    reference_tokenizer = AutoTokenizer.from_pretrained(reference_dir)
    assert len(reference_tokenizer) == len(tokenizer) + 4
    encoder = AutoModel.from_config(AutoConfig.from_pretrained(reference_dir))
    reference = ReferenceLabelTokenModel(encoder, 4, "multi_label_classification").eval()
    reference.load_state_dict(torch.load(reference_dir / "pytorch_model.bin", weights_only=True))
    with torch.no_grad():
        reference_logits = reference(**reference_tokenize(reference_tokenizer, texts, LABELS))["logits"]
    torch.testing.assert_close(reference_logits, logits, rtol=0, atol=1e-5)


def test_eval_and_predict_take_a_reference_checkpoint(work, tmp_path, capsys):
    reference_dir = tmp_path / "reference"
    assert run("convert", "--to-reference", work["model"], "--out", reference_dir) == 0
    assert run("predict", "--model", reference_dir, "--input", work["dev"], "--output", tmp_path / "p.jsonl",
               "--top-k", 4) == 0
    expected = Model.from_pretrained(work["model"]).predict(_texts(work["dev"]), top_k=4)
    for line, labels in zip(_jsonl(tmp_path / "p.jsonl"), expected):
        assert [e["label"] for e in line["labels"]] == [e["label"] for e in labels]
        assert [e["score"] for e in line["labels"]] == pytest.approx([e["score"] for e in labels], abs=1e-5)
    capsys.readouterr()
    assert run("eval", "--model", reference_dir, "--data", work["dev"], "--tune-thresholds") == 2
    assert "is a reference checkpoint (convert it first" in capsys.readouterr().err


def test_single_label_training_from_csv(work, tmp_path):
    rng = random.Random(1)
    lines = ["text,labels"] + [f"{' '.join(rng.choice(WORDS) for _ in range(3))},{rng.choice(['pos', 'neg'])}"
                               for _ in range(12)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "model"
    assert run("train", "--model", work["encoder"], "--train", tmp_path / "train.csv", "--dev", tmp_path / "train.csv",
               "--problem-type", "single", "--max-steps", 2, "--batch-size", 6, "--label-init", "random",
               "--out", out) == 0
    model = Model.from_pretrained(out)
    assert model.config.problem_type == "single_label_classification" and model.config.label_names == ["neg", "pos"]
    results = model.predict(["happy day", "sad food"])
    assert [len(labels) for labels in results] == [1, 1]


def test_training_with_decoupled_attention_and_sampled_labels(work, tmp_path):
    out = tmp_path / "model"
    assert run("train", "--model", work["encoder"], "--train", work["train"], "--dev", work["dev"], "--max-steps", 2,
               "--batch-size", 4, "--label-positions", "shared", "--label-attention", "decoupled",
               "--label-chunk-size", 3, "--sampled-negatives", 1, "--max-length", 32, "--out", out) == 0
    model = Model.from_pretrained(out)
    assert (model.config.label_positions, model.config.label_attention) == ("shared", "decoupled")
    assert (model.config.label_chunk_size, model.config.sampled_negatives) == (3, 1)
    assert [len(labels) for labels in model.predict(["happy day"], top_k=2)] == [2]


@pytest.mark.parametrize("bad_file,content,message", [
    ("dev", '{"text": "happy", "labels": ["joy"]}\n{"text": "sad", "labels": ["anger"]}\n',
     "line 2: unknown label 'anger'"),
    ("train", '{"text": "happy", "labels": ["joy"]}\n{"text": "", "labels": ["joy"]}\n', "line 2: empty text"),
    ("train", '{"text": "happy", "labels": ["joy"]}\n{"text": "sad", "labels": \n', "line 2: malformed JSON"),
    ("dev", '{"body": "happy", "labels": ["joy"]}\n', "line 1: unknown column 'text'"),
])
def test_bad_data_fails_cleanly(work, tmp_path, capsys, bad_file, content, message):
    files = {"train": work["train"], "dev": work["dev"]}
    files[bad_file] = str(tmp_path / f"bad_{bad_file}.jsonl")
    Path(files[bad_file]).write_text(content)
    out = tmp_path / "out"
    code = run("train", "--model", work["encoder"], "--train", files["train"], "--dev", files["dev"], "--out", out)
    err = capsys.readouterr().err
    assert code == 2
    assert f"ltc-fast train: error: {files[bad_file]}, {message}" in err
    assert "Traceback" not in err
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_a_failure_during_training_leaves_nothing_in_out(work, tmp_path, capsys):
    out = tmp_path / "out"
    # 4 labels + [CLS] + [SEP] do not fit in 5 tokens: found while tokenizing, after --out was staged
    code = run("train", "--model", work["encoder"], "--train", work["train"], "--dev", work["dev"],
               "--max-length", 5, "--out", out)
    assert code == 2 and "max_length=5 leaves no room for text" in capsys.readouterr().err
    assert not out.exists()
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("command", ["eval", "predict", "convert-from", "convert-to"])
def test_a_directory_that_is_not_a_checkpoint_is_refused(work, tmp_path, capsys, command):
    arguments = {
        "eval": ["eval", "--model", work["encoder"], "--data", work["dev"]],
        "predict": ["predict", "--model", work["encoder"], "--input", work["dev"]],
        "convert-from": ["convert", "--from-reference", work["encoder"], "--out", tmp_path / "out"],
        "convert-to": ["convert", "--to-reference", tmp_path, "--out", tmp_path / "out"],
    }[command]
    assert run(*arguments) == 2
    err = capsys.readouterr().err
    assert "is not an ltc_fast or reference checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_convert_refuses_the_wrong_direction_and_a_non_empty_out(work, tmp_path, capsys):
    assert run("convert", "--from-reference", work["model"], "--out", tmp_path / "a") == 2
    assert "is an ltc_fast checkpoint, not a reference checkpoint" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    assert run("convert", "--to-reference", work["model"], "--out", tmp_path / "b") == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert os.listdir(tmp_path / "b") == ["keep.txt"]
    assert run("convert", "--to-reference", work["model"], "--out", tmp_path / "b", "--overwrite") == 0
    assert (tmp_path / "b" / "pytorch_model.bin").exists() and not (tmp_path / "b" / "keep.txt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_bf16_needs_cuda(work, tmp_path, capsys):
    assert run("train", "--model", work["encoder"], "--train", work["train"], "--dev", work["dev"], "--bf16",
               "--out", tmp_path / "out") == 2
    assert "--bf16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_with_2(work, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        run("train", "--train", work["train"], "--dev", work["dev"])  # no --out
    assert caught.value.code == 2
    assert run("predict", "--model", work["model"], "--input", work["dev"], "--top-k", 0) == 2
    assert "--top-k must be >= 1, got 0" in capsys.readouterr().err


def test_every_subcommand_documents_every_option(capsys):
    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subcommands) == {"train", "eval", "predict", "convert", "export", "bench", "info"}
    for name, subparser in subcommands.items():
        for action in subparser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
        with pytest.raises(SystemExit) as caught:
            run(name, "--help")
        assert caught.value.code == 0
        printed = capsys.readouterr().out
        for action in subparser._actions:
            for option in action.option_strings:
                assert option in printed, f"{name} --help does not show {option}"


def test_the_installed_entry_runs_as_a_module():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "ltc_fast", "--help"], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert all(command in result.stdout for command in ("train", "eval", "predict", "convert", "export", "bench"))


def test_bench_runs_pytest_on_the_bench_folder(tmp_path, capsys):
    assert run("bench", "--bench-dir", tmp_path / "nowhere") == 2
    assert "the benchmarks live in the source repository" in capsys.readouterr().err
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "conftest.py").write_text("")
    (bench / "test_fake.py").write_text("def test_ok():\n    pass\n\ndef test_bad():\n    assert False\n")
    assert run("bench", "--bench-dir", bench, "--smoke", "-q", "-p", "no:cacheprovider", "-k", "ok") == 0
    assert run("bench", "--bench-dir", bench, "--smoke", "--", "-q", "-p", "no:cacheprovider") == 1, "pytest's exit code"


@pytest.mark.parametrize("kind", ["ltc_fast", "reference"])
def test_training_on_from_a_checkpoint_keeps_its_labels(work, tmp_path, kind):
    """Without --labels, a checkpoint's own labels (in their order) are the label set, even when the data
    names only some of them."""
    source = work["model"]
    if kind == "reference":
        source = tmp_path / "reference"
        assert run("convert", "--to-reference", work["model"], "--out", source) == 0
    rows = [{"text": "happy day", "labels": ["joy"]}, {"text": "sad food", "labels": ["fear"]}]
    data = _write_jsonl(tmp_path / "subset.jsonl", rows)
    out = tmp_path / "continued"
    assert run("train", "--model", source, "--train", data, "--dev", data, "--max-steps", 1, "--batch-size", 2,
               "--out", out) == 0
    assert Model.from_pretrained(out).config.label_names == LABELS


def test_the_trained_directory_works_in_a_pipeline_with_truncation(work):
    """`ltc-fast train` saves the tokenizer with the text budget (max_length minus the labels and specials'
    room) as its limit, so pipeline(..., truncation=True) cuts a long text as `predict` does."""
    from transformers import pipeline

    model = Model.from_pretrained(work["model"])
    budget = 32 - len(LABELS)
    assert prediction.saved_tokenizer(str(work["model"])).model_max_length == budget
    long_text = "happy day " * 40
    classifier = pipeline("text-classification", model=str(work["model"]))
    got = classifier(long_text, truncation=True, top_k=None)
    want = model.predict([long_text], top_k=len(LABELS), max_length=32)[0]
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], rel=1e-5)


def test_predict_compiled_gives_the_same_labels(work, tmp_path, monkeypatch):
    """--compiled runs the model under torch.compile on repeating shapes (here Dynamo with its eager backend:
    Inductor's build is the slow test of tests/test_prediction_batching.py)."""
    from ltc_fast import prediction

    asked = []

    def eager_backend(compiled, device):
        asked.append(compiled)
        return {"backend": "eager", "fullgraph": True}

    monkeypatch.setattr(prediction, "compile_options", eager_backend)
    (tmp_path / "in.txt").write_text("\n".join(_texts(work["dev"])) + "\n")
    for flag, out in (([], "plain.jsonl"), (["--compiled"], "compiled.jsonl")):
        assert run("predict", "--model", work["model"], "--input", tmp_path / "in.txt", "--output", tmp_path / out,
                   "--top-k", 2, "--batch-size", 3, *flag) == 0
    assert asked == [True]
    plain, compiled = _jsonl(tmp_path / "plain.jsonl"), _jsonl(tmp_path / "compiled.jsonl")
    assert [[e["label"] for e in line["labels"]] for line in compiled] == \
        [[e["label"] for e in line["labels"]] for line in plain]
    assert [e["score"] for line in compiled for e in line["labels"]] == \
        pytest.approx([e["score"] for line in plain for e in line["labels"]], abs=1e-6)
    assert run("predict", "--model", tmp_path / "model.onnx", "--input", tmp_path / "in.txt",
               "--compiled") == 2
