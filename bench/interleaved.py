"""Interleaved A/B timing of two contenders on one workload: their train steps alternate, so drift of a
shared or throttled machine (the CPU runners) hits both alike. Medians of forward, backward, optimizer.

    python -m bench.interleaved W3 --layers 4 --rounds 4     # reference-sdpa vs ltc_fast
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ltc_fast.app.provenance import provenance

from .contenders import BASELINE, build_model, make_batch
from .workloads import WORKLOADS, roberta_base_config


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--contenders", nargs=2, default=[BASELINE, "ltc_fast"])
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (roberta-base has 12)")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    config = roberta_base_config()
    config.num_hidden_layers = args.layers
    workload = WORKLOADS[args.workload]
    lengths = workload.text_lengths(torch.Generator().manual_seed(int(workload.id[1:])))
    setups = {}
    for contender in args.contenders:
        model = build_model(contender, config, workload.num_labels).train()
        batch = make_batch(contender, lengths, workload.num_labels, config.vocab_size, config.pad_token_id,
                           torch.Generator().manual_seed(0), "cpu")
        setups[contender] = (model, batch, torch.optim.AdamW(model.parameters(), lr=1e-5))

    def step(contender):
        model, batch, optimizer = setups[contender]
        t0 = time.perf_counter()
        loss = model(**batch.inputs)["loss"]
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": time.perf_counter() - t2}

    for contender in setups:  # warm-up
        step(contender)
    times = {contender: [] for contender in setups}
    for _ in range(args.rounds):
        for contender in setups:
            times[contender].append(step(contender))
    medians = {c: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for c, rows in times.items()}
    for contender, parts in medians.items():
        print(f"{contender:16} " + "  ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    return {"provenance": provenance(), "workload": args.workload, "layers": args.layers, "medians": medians}


if __name__ == "__main__":
    print(json.dumps(main()["provenance"]))
