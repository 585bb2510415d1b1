"""Fixtures: a fixed seed per test (LTC_FAST_TEST_SEED=random for fresh ones, printed, so a failure can be
replayed: set LTC_FAST_TEST_SEED to it), the tiny tokenizer, and `gpu`-marked tests skipped without CUDA.
The helpers themselves live in tests/helpers.py."""

from __future__ import annotations

import os
import random
import zlib

import pytest
import torch

from tests.helpers import OP_DEVICE, make_tiny_tokenizer


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


@pytest.fixture
def kernel_calls(monkeypatch):
    """What the ops of `ltc_fast.ops` ran during the test, in call order: each plain-PyTorch twin called
    (`"<op>_torch"`, e.g. `"label_loss_and_probas_torch"`) and each of ltc_fast's custom ops dispatched, forward
    and backward (`"ltc_fast::label_head"`, the Triton kernels; `"ltc_fast_ext::multi_label_forward"`, the loss
    extension). Seen from outside the ops: the twins through their module attribute (which the public
    functions call), the custom ops through a `TorchDispatchMode` (torch.library's documented hook on the
    dispatcher), so a test asserts which backend ran without naming anything private."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from ltc_fast.ops import label_attention, label_embedding, label_head, label_loss

    calls = []
    for module in (label_attention, label_embedding, label_head, label_loss):
        name = f"{module.OP}_torch"
        twin = getattr(module, name)

        def spy(*args, _name=name, _twin=twin, **kwargs):
            calls.append(_name)
            return _twin(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)

    class RecordCustomOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace in ("ltc_fast", "ltc_fast_ext"):
                calls.append(func.name())
            return func(*args, **(kwargs or {}))

    with RecordCustomOps():
        yield calls


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip cleanly on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def unwritten_memory_is_nan():
    """New floating-point tensors come filled with NaN: `torch.empty` / `new_empty` / `empty_like`, which the
    launchers allocate their outputs with, under PyTorch's deterministic mode with
    `torch.utils.deterministic.fill_uninitialized_memory` (its default). An output element a kernel leaves
    unwritten then shows as NaN in the comparison with the twin. The previous settings are restored."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        assert torch.empty(3, device=OP_DEVICE).isnan().all()
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill
