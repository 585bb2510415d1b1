"""Prediction: batched probabilities for raw texts, and the labels (with scores) each text gets.

Decision rule (multi-label): a label is predicted when its probability reaches its threshold, which is
`threshold` when given, else the model's saved per-label thresholds (`config.label_thresholds`), else 0.5.
`top_k` keeps at most the k best labels; given alone (no `threshold`) it returns the k best labels
whatever their scores. Single-label models return the best label unless `top_k` / `threshold` say
otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from . import encoders
from .batching import tokenize_texts
from .layout import label_slots
from .config import MULTI_LABEL

DEFAULT_THRESHOLD = 0.5
DEFAULT_MAX_LENGTH = 512  # the reference's


def saved_tokenizer(path: str):
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path!r} holds no tokenizer ({str(error).splitlines()[0]}); save one next to the "
                         f"model or pass tokenizer=...") from None


def default_max_length(model) -> int:
    return min(DEFAULT_MAX_LENGTH, encoders.max_sequence_length(model.config.encoder))


# Texts are sorted by length within windows of this many batches: a batch then pads only to its own longest
# text (sentence-transformers' `encode` does the same), while a stream's first results still come early.
SORT_WINDOW_BATCHES = 64


def iter_batched_probas(texts: Sequence[str], num_labels: int, probas_of: Callable[[list[str]], np.ndarray],
                        batch_size: int = 32, progress: bool = False,
                        sort_by_length: bool = True) -> Iterator[np.ndarray]:
    """Probabilities `[n, num_labels]` (float32) of consecutive runs of `texts`, in the texts' order, from
    `probas_of(batch_texts) -> [len(batch_texts), num_labels]`, called once per batch of at most `batch_size`
    texts: the batching that a PyTorch model (`iter_probas`) and an exported graph (`OnnxClassifier`) share.

    With `sort_by_length` (the default), the texts of each window of `SORT_WINDOW_BATCHES` batches are batched
    by length (in characters, longest first) and their probabilities put back in order, so short texts are not
    padded to the length of long ones; the numbers are those of unsorted batches up to float rounding.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    window = batch_size * (SORT_WINDOW_BATCHES if sort_by_length else 1)
    with tqdm(total=len(texts), unit="text", disable=not progress, desc="predict") as bar:
        for window_start in range(0, len(texts), window):
            chunk = list(texts[window_start:window_start + window])
            order = (sorted(range(len(chunk)), key=lambda i: -len(chunk[i])) if sort_by_length
                     else list(range(len(chunk))))
            probas = np.empty((len(chunk), num_labels), dtype=np.float32)
            for start in range(0, len(chunk), batch_size):
                rows = order[start:start + batch_size]
                probas[rows] = probas_of([chunk[i] for i in rows])
                bar.update(len(rows))
            yield probas


# Compiled prediction pads every batch to a width from this ladder (and to `batch_size` rows), so that a few
# shapes repeat and each is compiled (and, on CUDA, graph-captured) once: powers of two from 16, then the budget.
SMALLEST_BUCKET = 16


def bucket_width(width: int, budget: int) -> int:
    """The padded width of a compiled batch whose longest text has `width` tokens: the next power of two (at
    least SMALLEST_BUCKET), at most `budget` (the tokens a text may have)."""
    bucket = SMALLEST_BUCKET
    while bucket < width:
        bucket *= 2
    return min(bucket, budget)


def compile_options(compiled, device: torch.device) -> dict:
    """`torch.compile`'s keyword arguments for `compiled`: True gives one graph of static shapes (`fullgraph`,
    `dynamic=False`), with CUDA graphs on a GPU (`mode="reduce-overhead"`: one launch replays the whole
    forward); a dict is taken as given (e.g. `{"backend": "aot_eager"}`)."""
    if isinstance(compiled, dict):
        return dict(compiled)
    if compiled is True:
        return {"fullgraph": True, "dynamic": False, **({"mode": "reduce-overhead"} if device.type == "cuda" else {})}
    raise ValueError(f"compiled must be False, True or a dict of torch.compile arguments, got {compiled!r}")


def _probas(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).probas


_COMPILED_PROBAS: dict[str, Callable] = {}


def _compiled_probas(options: dict) -> Callable:
    """One compiled `_probas` per set of options (kept by their repr: they may hold dicts), taking the model as
    an argument: it holds no model (a model can be freed), and dynamo keeps each model's graphs apart by its
    guards."""
    key = repr(sorted(options.items()))
    if key not in _COMPILED_PROBAS:
        _COMPILED_PROBAS[key] = torch.compile(_probas, **options)
    return _COMPILED_PROBAS[key]


@torch.no_grad()
def iter_probas(model, tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int | None = None,
                progress: bool = False, sort_by_length: bool = True, compiled=False) -> Iterator[np.ndarray]:
    """Probabilities `[n, num_labels]` (float32) of consecutive runs of `texts`, in the texts' order (batched
    as `iter_batched_probas` says).

    `compiled`: False runs the model eagerly; True (or a dict of `torch.compile` arguments, see
    `compile_options`) runs it compiled, each batch padded to `batch_size` rows (with empty texts, whose results
    are dropped) and to a width from a ladder of powers of two (`bucket_width`), so the compiled shapes repeat:
    on a GPU with CUDA graphs, a forward is one replay instead of hundreds of kernel launches. The numbers are
    the eager model's up to float rounding (padding is masked out)."""
    max_length = default_max_length(model) if max_length is None else max_length
    device = next(model.parameters()).device
    config = model.config
    options = None if compiled is False else compile_options(compiled, device)

    def tokenize(batch_texts: list[str]):
        padding = True if options is None else False
        return tokenize_texts(tokenizer, batch_texts, model.num_labels, max_length=max_length, padding=padding,
                              return_tensors="pt" if options is None else None,
                              label_positions=config.label_positions, label_attention=config.label_attention)

    def probas_of(batch_texts: list[str]) -> np.ndarray:
        if options is None:
            batch = tokenize(batch_texts)
            return model(**{k: v.to(device) for k, v in batch.items()}).probas.float().cpu().numpy()
        count = len(batch_texts)
        batch = tokenize(batch_texts + [""] * (batch_size - count))
        budget = max_length - label_slots(model.num_labels, config.label_positions, config.label_attention)
        width = bucket_width(max(len(ids) for ids in batch["input_ids"]), budget)
        batch = tokenizer.pad(batch, padding="max_length", max_length=width, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in batch.items()}
        return _compiled_probas(options)(model, inputs)[:count].float().cpu().numpy()

    was_training = model.training
    model.eval()
    try:
        yield from iter_batched_probas(texts, model.num_labels, probas_of, batch_size, progress, sort_by_length)
    finally:
        model.train(was_training)


def predict_probas(model, tokenizer, texts, batch_size: int = 32, max_length: int | None = None,
                   progress: bool = False, sort_by_length: bool = True, compiled=False) -> np.ndarray:
    """Probabilities `[len(texts), num_labels]` (sigmoid for multi-label, softmax for single-label); `compiled`
    as in `iter_probas`."""
    parts = list(iter_probas(model, tokenizer, texts, batch_size, max_length, progress, sort_by_length, compiled))
    return np.concatenate(parts) if parts else np.zeros((0, model.num_labels), dtype=np.float32)


def decision_rule(config, top_k: int | None = None, threshold: float | None = None):
    """`(top_k, thresholds)` for `select_labels` from the caller's choices and the model's defaults
    (see the module's docstring); thresholds is a float, one float per label, or None (rank only)."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
        return top_k, float(threshold)
    if top_k is not None:
        return top_k, None
    if config.problem_type != MULTI_LABEL:
        return 1, None
    return None, saved_thresholds(config)


def saved_thresholds(config):
    """A multi-label model's decision thresholds: its saved per-label ones, else 0.5 for every label."""
    return list(config.label_thresholds) if config.label_thresholds else DEFAULT_THRESHOLD


def select_labels(probas: np.ndarray, label_names: list[str], top_k: int | None = None,
                  thresholds=None) -> list[dict]:
    """One text's labels as `{"label", "score"}`, best first: those at or above their threshold (all when
    `thresholds` is None), at most `top_k` of them."""
    order = np.argsort(-probas, kind="stable")
    if thresholds is not None:
        limits = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), probas.shape)
        order = [i for i in order if probas[i] >= limits[i]]
    if top_k is not None:
        order = order[:top_k]
    return [{"label": label_names[i], "score": float(probas[i])} for i in order]


def resolve_tokenizer(model, tokenizer=None):
    """`tokenizer`, else the one saved in the directory the model was loaded from."""
    if tokenizer is not None:
        return tokenizer
    cached = getattr(model, "_ltc_tokenizer", None)
    if cached is not None:
        return cached
    path = getattr(model, "name_or_path", "") or ""
    if not path or not os.path.isdir(path):
        raise ValueError("pass tokenizer=...: the model was not loaded from a directory that could hold one")
    model._ltc_tokenizer = saved_tokenizer(path)
    return model._ltc_tokenizer


def iter_predictions(model, tokenizer, texts, top_k: int | None = None, threshold: float | None = None,
                     batch_size: int = 32, max_length: int | None = None, progress: bool = False,
                     sort_by_length: bool = True, compiled=False):
    """`predict`, a run of texts at a time (see `iter_probas`): yields each run's list of label lists."""
    runs = iter_probas(model, tokenizer, texts, batch_size, max_length, progress, sort_by_length, compiled)
    yield from labels_of_probas(runs, model.config, top_k, threshold)


def labels_of_probas(runs: Iterable[np.ndarray], config, top_k: int | None = None,
                     threshold: float | None = None) -> Iterator[list[list[dict]]]:
    """Each run of probabilities `[n, num_labels]` -> its texts' labels (`select_labels`) under the decision rule
    of `config` (anything with `label_names`, `problem_type` and `label_thresholds`, as an `LtcConfig`)."""
    top_k, thresholds = decision_rule(config, top_k, threshold)
    names = config.label_names
    for probas in runs:
        yield [select_labels(row, names, top_k, thresholds) for row in probas]


def predict(model, texts, tokenizer=None, top_k: int | None = None, threshold: float | None = None,
            batch_size: int = 32, max_length: int | None = None, progress: bool = False,
            sort_by_length: bool = True, compiled=False) -> list[list[dict]]:
    """For each text, its labels as `[{"label": name, "score": probability}, ...]`, best first.
    See the module's docstring for the decision rule, `iter_probas` for `sort_by_length` and `compiled`."""
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = resolve_tokenizer(model, tokenizer)
    batches = iter_predictions(model, tokenizer, texts, top_k, threshold, batch_size, max_length, progress,
                               sort_by_length, compiled)
    return [labels for batch in batches for labels in batch]
