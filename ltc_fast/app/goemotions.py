"""The bundled GoEmotions data set (Apache-2.0; files and attribution in bundled/goemotions/): its label names,
its splits, and seeded subsets of them, read by the same reader as `ltc-fast train --train FILE`."""

from __future__ import annotations

import random
from importlib import resources

from .datafiles import read_labeled

BUNDLED = resources.files("ltc_fast.app").joinpath("bundled/goemotions")
GOEMOTIONS_SPLITS = ("train", "dev", "test")


def goemotions_label_names() -> list[str]:
    text = BUNDLED.joinpath("labels.txt").read_text(encoding="utf-8")
    return text.split()


def load_goemotions(split: str, limit: int | None = None) -> tuple[list[str], list[list[int]]]:
    """Texts and label-index lists of a GoEmotions split (bundled, Apache-2.0; see its README), read by the
    same GoEmotions-format reader as `ltc-fast train --train FILE`."""
    if split not in GOEMOTIONS_SPLITS:
        raise ValueError(f"split must be one of {GOEMOTIONS_SPLITS}, got {split!r}")
    bundled = BUNDLED.joinpath(f"{split}.tsv.gz")
    with resources.as_file(bundled) as path:
        data = read_labeled(str(path), goemotions_label_names(), fmt="goemotions")
    return data.texts[:limit], data.labels[:limit]


def goemotions_subset(split: str, size: int | None, seed: int):
    """A seeded random subset of a GoEmotions split (all of it when `size` is None)."""
    texts, labels = load_goemotions(split)
    if size is None or size >= len(texts):
        return texts, labels
    order = random.Random(seed).sample(range(len(texts)), size)
    return [texts[i] for i in order], [labels[i] for i in order]
