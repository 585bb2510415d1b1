"""transformers' own entry points load and run an ltc_fast checkpoint once `ltc_fast` is imported: AutoConfig,
AutoModelForSequenceClassification, pipeline("text-classification") (sigmoid for multi-label, softmax for
single-label, label names, top_k; the scores are `model.predict`'s), and Trainer.predict / evaluate with a
compute_metrics written for any classifier (it gets the logits)."""

import numpy as np
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    Trainer,
    TrainingArguments,
    pipeline,
)

import ltc_fast
from ltc_fast import (
    AutoModelForTokenSequenceClassification,
    LabelTokenCollator,
    LtcConfig,
    tokenize_texts,
)
from tests.helpers import save_tiny_encoder

NAMES = ["happy", "sad", "angry", "calm", "fear"]
TEXTS = ["the day is very good", "not happy", "sad sad sad food", "a"]


@pytest.fixture(scope="module", params=["multi_label_classification", "single_label_classification"])
def checkpoint(request, tmp_path_factory):
    """A saved ltc_fast model (random head and label rows, drawn under a fixed seed) with its tokenizer."""
    root = tmp_path_factory.mktemp("entry")
    encoder = save_tiny_encoder(root / "encoder")
    torch.manual_seed(0)
    model = AutoModelForTokenSequenceClassification.from_pretrained(encoder, label_names=NAMES,
                                                                    problem_type=request.param)
    with torch.no_grad():  # logits far enough apart that the label order is not decided by rounding
        model.classifier.bias.fill_(0.0)
        model.transformer.get_input_embeddings().weight.mul_(20)
    model.save_pretrained(root / "model")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(encoder).save_pretrained(root / "model")
    return str(root / "model"), request.param


def test_auto_classes_load_the_checkpoint(checkpoint):
    path, problem_type = checkpoint
    config = AutoConfig.from_pretrained(path)
    assert isinstance(config, LtcConfig) and config.label_names == NAMES and config.problem_type == problem_type
    model = AutoModelForSequenceClassification.from_pretrained(path)
    assert type(model) is AutoModelForTokenSequenceClassification
    direct = AutoModelForTokenSequenceClassification.from_pretrained(path)
    batch = tokenize_texts(ltc_fast.prediction.saved_tokenizer(path), TEXTS, len(NAMES), padding=True,
                           return_tensors="pt")
    assert torch.equal(model(**batch).logits, direct(**batch).logits)


def test_the_pipeline_scores_are_predicts(checkpoint):
    path, problem_type = checkpoint
    classifier = pipeline("text-classification", model=path)
    model = AutoModelForTokenSequenceClassification.from_pretrained(path)
    expected = model.predict(TEXTS, top_k=len(NAMES))
    got = classifier(TEXTS, top_k=None)
    for text, pipe_rows, predict_rows in zip(TEXTS, got, expected):
        assert [r["label"] for r in pipe_rows] == [r["label"] for r in predict_rows], text
        np.testing.assert_allclose([r["score"] for r in pipe_rows], [r["score"] for r in predict_rows],
                                   rtol=1e-6, atol=1e-7, err_msg=text)
        scores = np.array([r["score"] for r in pipe_rows])
        if problem_type == "single_label_classification":  # softmax: one distribution over the classes
            assert scores.sum() == pytest.approx(1.0, abs=1e-5)
    logits = model(**tokenize_texts(model_tokenizer(path), TEXTS[:1], len(NAMES), return_tensors="pt")).logits[0]
    squash = torch.sigmoid if problem_type == "multi_label_classification" else lambda x: torch.softmax(x, -1)
    by_name = {r["label"]: r["score"] for r in got[0]}
    np.testing.assert_allclose([by_name[name] for name in NAMES], squash(logits).detach().numpy(), rtol=1e-6)


def model_tokenizer(path):
    return ltc_fast.prediction.saved_tokenizer(path)


def test_the_pipeline_honours_top_k(checkpoint):
    path, _ = checkpoint
    classifier = pipeline("text-classification", model=path)
    everything = classifier(TEXTS[0], top_k=None)
    two = classifier(TEXTS[0], top_k=2)
    assert two == everything[:2] and len({r["label"] for r in two}) == 2
    best = classifier(TEXTS[0])  # the pipeline's default: the best label only
    assert best == everything[:1]


def test_trainer_predict_and_evaluate_give_compute_metrics_the_logits(checkpoint, tmp_path):
    path, problem_type = checkpoint
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tokenizer = model_tokenizer(path)
    encoded = tokenize_texts(tokenizer, TEXTS, len(NAMES))
    targets = [[0, 2], [1], [], [4]] if problem_type == "multi_label_classification" else [0, 1, 2, 4]
    data = [{"input_ids": ids, "labels": t} for ids, t in zip(encoded["input_ids"], targets)]
    seen = []

    def compute_metrics(prediction):  # written for any classifier: argmax / sigmoid of an array of logits
        seen.append(prediction)
        return {"argmax_mean": float(np.argmax(prediction.predictions, axis=-1).mean())}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=3, report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args, data_collator=LabelTokenCollator(tokenizer, len(NAMES), problem_type),
                      compute_metrics=compute_metrics)
    output = trainer.predict(data)
    assert isinstance(output.predictions, np.ndarray) and output.predictions.shape == (len(TEXTS), len(NAMES))
    batch = tokenize_texts(tokenizer, TEXTS, len(NAMES), padding=True, return_tensors="pt")
    np.testing.assert_allclose(output.predictions, model(**batch).logits.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert "test_argmax_mean" in output.metrics and output.metrics["test_loss"] > 0
    metrics = trainer.evaluate(data)
    assert metrics["eval_argmax_mean"] == output.metrics["test_argmax_mean"]
    assert all(isinstance(p.predictions, np.ndarray) for p in seen)


def test_dtype_auto_and_names_load_as_transformers_takes_them(checkpoint):
    path, _ = checkpoint
    assert next(AutoModelForSequenceClassification.from_pretrained(path, dtype="auto").parameters()).dtype == \
        torch.float32
    assert next(AutoModelForSequenceClassification.from_pretrained(path, dtype="bfloat16").parameters()).dtype == \
        torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be a torch.dtype"):
        AutoModelForTokenSequenceClassification.from_pretrained(path, dtype="float33")
