"""End-to-end benches W1-W5: train step (forward, backward, AdamW) and inference, for the reference
(eager and SDPA attention), a [CLS]-head AutoModelForSequenceClassification and ltc_fast; and inference of the
reference (SDPA) and ltc_fast under torch.compile (CUDA graphs on a GPU)."""

from __future__ import annotations

import pytest
import torch

from ltc_fast.encoders import max_sequence_length

from .contenders import COMPILED_PEERS, CONTENDERS, build_model, compile_for_bench, make_batch, step_function
from .measure import PeakMemory, count_flops
from .workloads import WORKLOADS


@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("workload_id", list(WORKLOADS))
def test_end_to_end(benchmark, bench_session, workload_id, contender, mode):
    workload = bench_session.workload(workload_id)
    config = bench_session.encoder_config()
    generator = torch.Generator().manual_seed(int(workload_id[1:]))  # the same data for every contender
    lengths = workload.text_lengths(generator)
    if contender in COMPILED_PEERS and mode == "train":
        pytest.skip("compiled contenders are measured in inference (launch-free prediction)")
    if contender == "ltc_fast-decoupled" and workload.ltc_options.get("label_attention") == "decoupled":
        pytest.skip(f"{workload_id}: the ltc_fast contender runs decoupled already (the same model)")
    positions = max_sequence_length(config)
    if contender.startswith("reference-") and not workload.reference_fits(lengths, positions):
        pytest.skip(f"{workload_id}: the reference cannot hold {workload.num_labels} label tokens + {max(lengths)} "
                    f"text tokens in {positions} positions")
    device = bench_session.device
    with PeakMemory(device) as memory:
        model = build_model(contender, config, workload.num_labels, workload.ltc_options).to(device)
        if contender in COMPILED_PEERS:
            model = compile_for_bench(model, device, bench_session.real_sizes)
        batch = make_batch(contender, lengths, workload.num_labels, config.vocab_size, config.pad_token_id,
                           generator, device)
        step = step_function(model, batch, mode, device, bench_session.autocast_dtype)
        flops = count_flops(step) if bench_session.real_sizes and device.type == "cuda" else None
        benchmark.group = f"{workload_id} {mode}"
        benchmark.pedantic(step, rounds=bench_session.rounds, warmup_rounds=1, iterations=1)
    if benchmark.disabled:
        return
    stats = benchmark.stats.stats
    record = {
        "workload": workload_id, "num_labels": workload.num_labels, "batch_size": workload.batch_size,
        "text_tokens": batch.text_tokens, "mode": mode, "contender": contender,
        "median_s": stats.median, "iqr_s": stats.iqr, "min_s": stats.min, "max_s": stats.max,
        "rounds": stats.rounds, "examples_per_s": workload.batch_size / stats.median,
        "text_tokens_per_s": batch.text_tokens / stats.median, "peak_mib": memory.peak_mib,
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else
                            "CPU RSS growth over the bench (model, optimizer, activations)",
        "flops": flops,
        "mfu": flops / stats.median / bench_session.peak_flops if flops and bench_session.peak_flops else None,
    }
    benchmark.extra_info.update(record)
    bench_session.records.append(record)
