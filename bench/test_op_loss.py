"""Op bench: forward + backward of the label loss, the C++/CUDA extension against the torch composition it
replaces (BCE-with-logits / cross-entropy + sigmoid / softmax + autograd, i.e. the op's PyTorch twin), at
[32, 28], [16, 2048] and [256, 100000]; bf16 logits on the GPU, fp32 on the CPU. Achieved GB/s is measured
against the device's copy bandwidth."""

from __future__ import annotations

import pytest
import torch

from ltc_fast.ops import loss_extension
from ltc_fast.ops.label_loss import label_loss_and_probas

from .measure import bytes_of, synchronize

SHAPES = [(32, 28), (16, 2048), (256, 100000)]
TINY_SHAPES = [(2, 3), (3, 17), (4, 101)]
CONTENDERS = ["extension", "torch"]


def _inputs(shape, multi_label, device, dtype, generator):
    logits = (torch.randn(shape, generator=generator) * 3).to(device=device, dtype=dtype).requires_grad_()
    if multi_label:
        targets = (torch.rand(shape, generator=generator) < 0.1).float().to(device)
    else:
        targets = torch.randint(0, shape[1], (shape[0],), generator=generator).to(device)
    return logits, targets


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("multi_label", [True, False], ids=["multi", "single"])
@pytest.mark.parametrize("shape_index", range(len(SHAPES)))
def test_op_label_loss(benchmark, bench_session, shape_index, multi_label, contender):
    if contender == "extension" and not loss_extension.runs_on(bench_session.device):
        pytest.skip(f"loss extension {loss_extension.extension_status()}")
    shape = (SHAPES if bench_session.real_sizes else TINY_SHAPES)[shape_index]
    device = bench_session.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    logits, targets = _inputs(shape, multi_label, device, dtype, torch.Generator().manual_seed(shape_index))

    def step():
        logits.grad = None
        loss, probas = label_loss_and_probas(logits, targets, multi_label, backend=contender)
        loss.backward()
        synchronize(device)
        return probas

    op = "label_loss_multi" if multi_label else "label_loss_single"
    benchmark.group = f"{op} {list(shape)} fwd+bwd"
    probas = benchmark.pedantic(step, rounds=bench_session.rounds, warmup_rounds=1, iterations=1)
    assert probas.shape == shape and logits.grad is not None and logits.grad.isfinite().all()
    if benchmark.disabled:
        return
    # Minimum traffic of a forward and a backward pass that each touch the data once: forward reads logits and
    # targets and writes probas; backward reads logits and targets again and writes dlogits.
    traffic = bytes_of(logits, targets, probas) + bytes_of(logits, targets, logits.grad)
    fields = {"op": op, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "mode": "fwd+bwd",
              "contender": contender, "extension": loss_extension.extension_status()}
    bench_session.record_op(benchmark, fields, traffic)
