"""Fixtures: a fixed seed per test (LTC_FAST_TEST_SEED=random for fresh ones, printed, so a failure can be
replayed: set LTC_FAST_TEST_SEED to it), the tiny tokenizer, and `gpu`-marked tests skipped without CUDA.
The helpers themselves live in tests/helpers.py."""

from __future__ import annotations

import os
import random
import zlib

import pytest
import torch

from tests.helpers import make_tiny_tokenizer


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """Each test's seed: fixed by default (a hash of the test's id, so a run is repeatable and a test fails
    only when the product changes); LTC_FAST_TEST_SEED=random draws a fresh one per test (soak mode, printed);
    LTC_FAST_TEST_SEED=<int> replays one."""
    chosen = os.environ.get("LTC_FAST_TEST_SEED", "").strip()
    if chosen == "random":
        seed = int.from_bytes(os.urandom(4), "little")
    elif chosen:
        seed = int(chosen)
    else:
        seed = zlib.crc32(request.node.nodeid.encode())
    print(f"torch/random seed for this test: {seed}")
    torch.manual_seed(seed)
    random.seed(seed)
    return seed


@pytest.fixture
def tiny_tokenizer():
    return make_tiny_tokenizer()


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip cleanly on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
