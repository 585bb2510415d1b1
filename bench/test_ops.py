"""Op benches: each Triton kernel of `ltc_fast/ops` against its plain-PyTorch twin (what the model runs without
it), forward and forward+backward, at the W1, W4 and W5 sizes (H = 768, bf16 on the GPU; fp32 on the CPU). The
decoupled label attention is not memory-bound at W4/W5 (about 160 FLOPs per byte with 64-wide heads): its record
also holds its forward's matmul FLOPs (`attention_flops_fwd`, 4 B heads N T d, as flash attention counts them).

Achieved GB/s = the op's minimum memory traffic (the bytes it must read and write, `measure.bytes_of`) / its
median time, also as a fraction of the measured copy bandwidth. On the CPU the Triton contender runs only in
the smoke run (once, in Triton's interpreter, to prove the bench works): interpreter timings mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from ltc_fast.ops import label_attention, label_embedding, label_head
from ltc_fast.ops.triton_support import triton_available

from .measure import bytes_of, synchronize

OP_WORKLOADS = ["W1", "W4", "W5"]
CONTENDERS = ["torch", "triton"]
MODES = ["fwd", "fwd+bwd"]
CALLS_PER_ROUND = 10  # op calls between two synchronisations: a single call is too short to time alone
HEAD_DROPOUT = 0.1  # LtcConfig's default label_head_dropout (the reference's), so the bench trains with it


@dataclass
class OpCase:
    call: Callable[[], torch.Tensor]
    params: list  # the tensors that get gradients
    sizes: dict  # what the record reports about the shapes
    bytes: dict  # minimum bytes moved, per mode


def _text_ids(workload, vocab_size, pad_id, generator, device):
    lengths = workload.text_lengths(generator)
    ids = torch.randint(3, vocab_size, (len(lengths), max(lengths)), generator=generator)
    for row, length in enumerate(lengths):
        ids[row, length:] = pad_id
    return ids.to(device)


def _injection_case(workload, config, dtype, device, generator, backend) -> OpCase:
    ids = _text_ids(workload, config.vocab_size, config.pad_token_id, generator, device)
    hidden = config.hidden_size
    words = torch.randn(config.vocab_size, hidden, generator=generator).to(device, dtype).requires_grad_()
    labels = torch.randn(workload.num_labels, hidden, generator=generator).to(device, dtype).requires_grad_()
    out = label_embedding.inject_label_embeddings_torch(ids, words.detach(), labels.detach())
    text_rows = out[:, :ids.shape[1]]  # as many rows as the text: the word rows read / their gradients
    forward = bytes_of(ids, text_rows, labels, out)  # ids, looked-up word rows and label rows in; output out
    # backward: the output's gradient in, the dense word-table gradient and the label gradient out
    backward = bytes_of(ids, out, words, labels)
    return OpCase(
        call=lambda: label_embedding.inject_label_embeddings(ids, words, labels, config.pad_token_id,
                                                             backend=backend),
        params=[words, labels],
        sizes={"batch_size": ids.shape[0], "text_len": ids.shape[1], "num_labels": workload.num_labels,
               "hidden": hidden},
        bytes={"fwd": forward, "fwd+bwd": forward + backward},
    )


def _head_case(workload, config, dtype, device, generator, backend) -> OpCase:
    ids = _text_ids(workload, config.vocab_size, config.pad_token_id, generator, device)
    batch, num_labels, hidden = ids.shape[0], workload.num_labels, config.hidden_size
    states = torch.randn(batch, ids.shape[1] + num_labels, hidden, generator=generator)
    states = states.to(device, dtype).requires_grad_()
    weight = torch.randn(1, hidden, generator=generator).to(device, dtype).requires_grad_()
    bias = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
    label_states = label_head.label_states(states, num_labels)
    logits = torch.empty(batch, num_labels, device=device, dtype=dtype)
    forward = bytes_of(label_states, weight, bias, logits)  # only the label rows are read
    # backward: logits' gradient and the label rows in; the full hidden-state gradient (zeros outside the
    # label rows), dw and dbias out
    backward = bytes_of(logits, label_states, states, weight, bias)
    dropout_p = HEAD_DROPOUT
    return OpCase(
        call=lambda: label_head.label_head_logits(states, weight, bias, num_labels, dropout_p, True,
                                                  backend=backend),
        params=[states, weight, bias],
        sizes={"batch_size": batch, "text_len": ids.shape[1], "num_labels": num_labels, "hidden": hidden,
               "dropout_p": dropout_p},
        bytes={"fwd": forward, "fwd+bwd": forward + backward},
    )


def _attention_case(workload, config, dtype, device, generator, backend) -> OpCase:
    """A decoupled label pass's attention in one layer: label queries (one chunk: what a pass of W5 runs) over
    the text's keys and values and their own. The twin's dropout is the encoder's attention dropout, as in
    training."""
    ids = _text_ids(workload, config.vocab_size, config.pad_token_id, generator, device)
    batch, text_len = ids.shape
    num_labels = workload.ltc_options.get("label_chunk_size") or workload.num_labels
    heads = config.num_attention_heads
    head_size = config.hidden_size // heads

    def draw(rows):
        return torch.randn(batch, heads, rows, head_size, generator=generator).to(device, dtype).requires_grad_()

    tensors = [draw(num_labels), draw(text_len), draw(text_len), draw(num_labels), draw(num_labels)]
    key_padding = ids != config.pad_token_id
    dropout_p = config.attention_probs_dropout_prob
    out = torch.empty(batch, num_labels, heads, head_size, device=device, dtype=dtype)
    forward = bytes_of(*tensors, key_padding, out)  # every input once, the output once
    backward = bytes_of(out, *tensors, *tensors)  # dO and the inputs in, their five gradients out
    return OpCase(
        call=lambda: label_attention.labels_attend_text(*tensors, key_padding, head_size ** -0.5, dropout_p, True,
                                                        backend=backend),
        params=tensors,
        sizes={"batch_size": batch, "text_len": text_len, "num_labels": num_labels, "heads": heads,
               "head_size": head_size, "dropout_p": dropout_p,
               "attention_flops_fwd": 4 * batch * heads * num_labels * text_len * head_size},
        bytes={"fwd": forward, "fwd+bwd": forward + backward},
    )


OPS = {"label_embedding": _injection_case, "label_head": _head_case, "label_attention": _attention_case}


def _step(case: OpCase, mode: str, device):
    if mode == "fwd":
        def step():
            with torch.no_grad():
                for _ in range(CALLS_PER_ROUND):
                    case.call()
            synchronize(device)
        return step
    grad = torch.randn_like(case.call().detach())

    def step():
        for _ in range(CALLS_PER_ROUND):
            case.call().backward(grad)
            for param in case.params:
                param.grad = None
        synchronize(device)
    return step


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("workload_id", OP_WORKLOADS)
@pytest.mark.parametrize("op", list(OPS))
def test_op(benchmark, bench_session, op, workload_id, contender, mode):
    device = bench_session.device
    if contender == "triton":
        if not triton_available():
            pytest.skip("triton is not installed")
        if device.type != "cuda" and bench_session.real_sizes:
            pytest.skip("no GPU: Triton would run in its interpreter, whose timings mean nothing")
    workload = bench_session.workload(workload_id)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    generator = torch.Generator().manual_seed(int(workload_id[1:]))  # the same inputs for both contenders
    case = OPS[op](workload, bench_session.encoder_config(), dtype, device, generator, contender)
    step = _step(case, mode, device)
    benchmark.group = f"{op} {workload_id} {mode}"
    benchmark.pedantic(step, rounds=bench_session.rounds, warmup_rounds=1, iterations=1)
    if benchmark.disabled:
        return
    fields = {"op": op, "workload": workload_id, "mode": mode, "contender": contender, **case.sizes,
              "dtype": str(dtype).removeprefix("torch.")}
    bench_session.record_op(benchmark, fields, case.bytes[mode], CALLS_PER_ROUND)
