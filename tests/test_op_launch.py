"""Triton launches on the *current* CUDA device, not on the one the tensors live on: every kernel of ltc_fast/ops
must launch inside `triton_support.launch_guard` of its inputs (a model on a second GPU of the process)."""

import contextlib

import pytest
import torch

from tests.helpers import OP_DEVICE, needs_triton
from ltc_fast.ops import label_embedding, label_head, triton_support

KERNELS = {label_embedding: ("_inject_forward_kernel", "_label_grad_kernel"),
           label_head: ("_head_forward_kernel", "_head_backward_kernel")}


@needs_triton
def test_every_kernel_launches_under_its_inputs_device(monkeypatch):
    guarded_devices, launches = [], []

    @contextlib.contextmanager
    def recording_guard(tensor):
        guarded_devices.append(tensor.device)
        with triton_support.launch_guard(tensor):
            yield
        guarded_devices.pop()

    for module, kernel_names in KERNELS.items():
        monkeypatch.setattr(module, "launch_guard", recording_guard)
        for name in kernel_names:
            kernel = getattr(module, name)
            real_run = kernel.run

            def run(*args, name=name, real_run=real_run, **kwargs):
                launches.append((name, list(guarded_devices)))
                return real_run(*args, **kwargs)

            monkeypatch.setattr(kernel, "run", run)

    words = torch.randn(30, 24, device=OP_DEVICE, requires_grad=True)
    labels = torch.randn(3, 24, device=OP_DEVICE, requires_grad=True)
    weight, bias = torch.randn(1, 24, device=OP_DEVICE, requires_grad=True), torch.zeros(1, device=OP_DEVICE)
    embedded = label_embedding.inject_label_embeddings(torch.randint(0, 30, (2, 5), device=OP_DEVICE), words, labels,
                                                       backend="triton")
    logits = label_head.label_head_logits(embedded, weight, bias, 3, 0.1, training=True, backend="triton")
    logits.sum().backward()

    assert sorted(name for name, _ in launches) == sorted(n for names in KERNELS.values() for n in names)
    # The tensors' own device (cuda:0), not torch.device(OP_DEVICE): "cuda" has no index and compares unequal.
    assert all(devices == [words.device] for _, devices in launches), launches


@pytest.mark.gpu
@needs_triton
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_kernels_run_on_a_second_gpu_while_the_first_is_current():
    inputs = torch.randint(0, 30, (2, 5), device="cuda:1")
    words, labels = torch.randn(30, 24, device="cuda:1"), torch.randn(3, 24, device="cuda:1")
    with torch.cuda.device(0):
        out = label_embedding.inject_label_embeddings(inputs, words, labels, backend="triton")
        expected = label_embedding.inject_label_embeddings(inputs, words, labels, backend="torch")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
