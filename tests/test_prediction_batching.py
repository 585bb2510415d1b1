"""Prediction batches texts by length (`sort_by_length`, as sentence-transformers' `encode` does): fewer padded
positions, the same scores, in the texts' order."""

import numpy as np
import pytest

from ltc_fast import AutoModelForTokenSequenceClassification as Model
from ltc_fast import prediction
from ltc_fast.prediction import predict_probas
from tests.helpers import encoder_config, make_tiny_tokenizer

NAMES = ["joy", "fear", "love"]
# Alternating short and long texts: batches of two in this order pad every short text to a long one.
TEXTS = ["a", "the very bad food is not good at all", "b", "sad sad sad day and more sad days", "c",
         "love joy fear and a long sentence here", "d"]


@pytest.fixture
def model():
    return Model.from_config(encoder_config("bert"), label_names=NAMES).eval()


def _forward_widths(model, monkeypatch) -> list[int]:
    widths = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape[0] * kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    return widths


def test_sorted_batches_give_the_unsorted_scores_in_order(model):
    tokenizer = make_tiny_tokenizer()
    sorted_probas = predict_probas(model, tokenizer, TEXTS, batch_size=2)
    unsorted = predict_probas(model, tokenizer, TEXTS, batch_size=2, sort_by_length=False)
    one_by_one = predict_probas(model, tokenizer, TEXTS, batch_size=1, sort_by_length=False)
    np.testing.assert_allclose(sorted_probas, one_by_one, rtol=0, atol=1e-6)
    np.testing.assert_allclose(unsorted, one_by_one, rtol=0, atol=1e-6)
    assert sorted_probas.shape == (len(TEXTS), len(NAMES))


def test_sorting_removes_padding(model, monkeypatch):
    tokenizer = make_tiny_tokenizer()
    widths = _forward_widths(model, monkeypatch)
    predict_probas(model, tokenizer, TEXTS, batch_size=2, sort_by_length=False)
    unsorted_positions = sum(widths)
    widths.clear()
    predict_probas(model, tokenizer, TEXTS, batch_size=2)
    assert sum(widths) < 0.8 * unsorted_positions


def test_windows_keep_the_order_across_them(model, monkeypatch):
    """Sorting happens within windows of SORT_WINDOW_BATCHES batches; results still come back in order."""
    monkeypatch.setattr(prediction, "SORT_WINDOW_BATCHES", 1)
    tokenizer = make_tiny_tokenizer()
    runs = list(prediction.iter_probas(model, tokenizer, TEXTS, batch_size=2))
    assert [len(run) for run in runs] == [2, 2, 2, 1]
    np.testing.assert_allclose(np.concatenate(runs), predict_probas(model, tokenizer, TEXTS, batch_size=1),
                               rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ compiled prediction
def _compiled_shapes(monkeypatch) -> list[tuple]:
    """The input shapes each compiled call receives (recorded outside the compiled function)."""
    shapes = []
    compiled_probas = prediction._compiled_probas

    def recording(options):
        run = compiled_probas(options)

        def call(model, inputs):
            shapes.append(tuple(inputs["input_ids"].shape))
            return run(model, inputs)
        return call

    monkeypatch.setattr(prediction, "_compiled_probas", recording)
    return shapes


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "single_label_classification"])
@pytest.mark.parametrize("options", [{}, {"label_positions": "shared"}, {"label_attention": "decoupled"}],
                         ids=["reference", "shared", "decoupled"])
def test_compiled_prediction_gives_the_eager_scores_on_repeating_shapes(problem_type, options, monkeypatch):
    """Every batch padded to batch_size rows and a power-of-two width: 7 texts in batches of 3 make 3 calls of
    one shape (the last batch padded with empty texts, dropped from the results)."""
    import torch

    model = Model.from_config(encoder_config("bert"), label_names=NAMES, problem_type=problem_type,
                              **options).eval()
    tokenizer = make_tiny_tokenizer()
    eager = predict_probas(model, tokenizer, TEXTS, batch_size=3)
    shapes = _compiled_shapes(monkeypatch)
    torch._dynamo.reset()
    compiled = predict_probas(model, tokenizer, TEXTS, batch_size=3, compiled={"backend": "eager",
                                                                              "fullgraph": True})
    torch._dynamo.reset()
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=1e-6)
    assert shapes == [(3, prediction.SMALLEST_BUCKET)] * 3


def test_model_predict_takes_compiled(model):
    import torch

    tokenizer = make_tiny_tokenizer()
    torch._dynamo.reset()
    labels = model.predict(TEXTS, tokenizer=tokenizer, top_k=2, compiled={"backend": "eager"})
    torch._dynamo.reset()
    assert labels == model.predict(TEXTS, tokenizer=tokenizer, top_k=2)


@pytest.mark.parametrize("width,budget,bucket", [(1, 510, 16), (16, 510, 16), (17, 510, 32), (100, 510, 128),
                                                 (300, 510, 510), (40, 30, 30)])
def test_bucket_widths_are_powers_of_two_within_the_budget(width, budget, bucket):
    assert prediction.bucket_width(width, budget) == bucket


def test_compile_options_default_to_one_static_graph_and_cuda_graphs_on_a_gpu():
    import torch

    assert prediction.compile_options(True, torch.device("cpu")) == {"fullgraph": True, "dynamic": False}
    assert prediction.compile_options(True, torch.device("cuda"))["mode"] == "reduce-overhead"
    assert prediction.compile_options({"backend": "eager"}, torch.device("cuda")) == {"backend": "eager"}
    with pytest.raises(ValueError, match="compiled must be False, True or a dict of torch.compile arguments, "
                                         "got 'yes'"):
        prediction.compile_options("yes", torch.device("cpu"))


@pytest.mark.slow
def test_compiled_prediction_with_inductor_on_the_cpu(model):
    """compiled=True: Inductor's CPU code (a C++ compiler builds it), the eager scores."""
    import torch

    tokenizer = make_tiny_tokenizer()
    torch._dynamo.reset()
    compiled = predict_probas(model, tokenizer, TEXTS, batch_size=4, compiled=True)
    torch._dynamo.reset()
    np.testing.assert_allclose(compiled, predict_probas(model, tokenizer, TEXTS, batch_size=4), rtol=0, atol=1e-5)
