"""Prediction through onnxruntime on a graph written by `ltc_fast.onnx_export.export_onnx`: the batching, the
decision rule and the output of `model.predict` (`ltc_fast.prediction`), with onnxruntime running the model."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .batching import tokenize_texts
from .onnx_export import ExportMetadata, require
from .prediction import iter_batched_probas, labels_of_probas, saved_tokenizer


class OnnxClassifier:
    """An exported classifier in an onnxruntime session.

    `path`: the .onnx file (its labels, problem type, thresholds and tokenization budget come from its metadata:
    `self.config`, an `ExportMetadata`). `tokenizer`: the model's tokenizer, or a directory holding it (e.g. the
    checkpoint's); None: the directory of the .onnx file. `providers`: onnxruntime's execution providers, in order
    of preference (default: the CPU); `session_options`: an `onnxruntime.SessionOptions` (threads, ...).
    """

    def __init__(self, path: str | os.PathLike, tokenizer=None, *, providers: Sequence[str] | None = None,
                 session_options=None):
        ort = require("onnxruntime", "OnnxClassifier")
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ValueError(f"{self.path!r} is not a file; give the .onnx file written by export_onnx")
        self.session = ort.InferenceSession(self.path, sess_options=session_options,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        self.config = ExportMetadata.from_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = saved_tokenizer(os.fspath(tokenizer) if tokenizer is not None
                                        else os.path.dirname(os.path.abspath(self.path)))
        self.tokenizer = tokenizer

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    def __call__(self, input_ids, attention_mask) -> dict[str, np.ndarray]:
        """The graph on one tokenized batch: int `[B, T]` plain text ids and mask (numpy arrays, or anything
        `np.asarray` takes) -> `{"logits": [B, N], "probas": [B, N]}`."""
        feeds = {"input_ids": np.asarray(input_ids, dtype=np.int64),
                 "attention_mask": np.asarray(attention_mask, dtype=np.int64)}
        return dict(zip(self.config.outputs, self.session.run(self.config.outputs, feeds)))

    def tokenize(self, texts, max_length: int | None = None) -> dict[str, np.ndarray]:
        """Texts -> the graph's padded inputs, with the budget the model was trained with (`tokenize_texts`)."""
        max_length = self.config.max_length if max_length is None else max_length
        if isinstance(max_length, bool) or not isinstance(max_length, int) or \
                not 1 <= max_length <= self.config.position_limit:
            raise ValueError(f"max_length must be an int from 1 to {self.config.position_limit} (the encoder's "
                             f"positions), got {max_length!r}")
        batch = tokenize_texts(self.tokenizer, texts, self.num_labels, max_length=max_length, padding=True,
                               return_tensors="np", label_positions=self.config.label_positions,
                               label_attention=self.config.label_attention)
        return {name: batch[name] for name in ("input_ids", "attention_mask")}

    def predict_probas(self, texts: Sequence[str], batch_size: int = 32, max_length: int | None = None,
                       progress: bool = False, sort_by_length: bool = True) -> np.ndarray:
        """Probabilities `[len(texts), num_labels]` (float32), batched as `model.predict` batches."""
        return np.concatenate([np.zeros((0, self.num_labels), dtype=np.float32),
                               *self._iter_probas(texts, batch_size, max_length, progress, sort_by_length)])

    def predict(self, texts, top_k: int | None = None, threshold: float | None = None, batch_size: int = 32,
                max_length: int | None = None, sort_by_length: bool = True) -> list[list[dict]]:
        """`model.predict` through onnxruntime: for each text `[{"label": name, "score": probability}, ...]`, best
        first, under the same decision rule (`ltc_fast.prediction`; the saved per-label thresholds included)."""
        if isinstance(texts, str):
            texts = [texts]
        runs = self.iter_predictions(texts, top_k, threshold, batch_size, max_length, sort_by_length=sort_by_length)
        return [labels for run in runs for labels in run]

    def iter_predictions(self, texts, top_k: int | None = None, threshold: float | None = None, batch_size: int = 32,
                         max_length: int | None = None, progress: bool = False, sort_by_length: bool = True):
        """`predict`, a run of texts at a time (as `ltc_fast.prediction.iter_predictions`): each run's label lists."""
        runs = self._iter_probas(texts, batch_size, max_length, progress, sort_by_length)
        yield from labels_of_probas(runs, self.config, top_k, threshold)

    def _iter_probas(self, texts, batch_size, max_length, progress, sort_by_length):
        def probas_of(batch_texts: list[str]) -> np.ndarray:
            return self(**self.tokenize(batch_texts, max_length))["probas"]

        return iter_batched_probas(texts, self.num_labels, probas_of, batch_size, progress, sort_by_length)
