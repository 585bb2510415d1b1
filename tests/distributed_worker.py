"""The process that `tests/test_distributed.py` launches twice with `torchrun --nproc_per_node 2` (gloo, CPU).

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py WORKDIR

`WORKDIR/plan.json` lists jobs; each job's folder holds its inputs (written by the test) and receives its
results (written by rank 0). Jobs:

* `steps`: DDP (`find_unused_parameters=False`) or FSDP (`fully_shard` on the encoder layers) AdamW steps,
  rank r on its half of the global batch; the model is saved with `ltc_fast.distributed.save_pretrained`,
  and the labels each rank scored per step (label sampling) are recorded. FSDP also records its eval
  logits on the global batch, to compare with the reloaded checkpoint.
* `sampling`: both ranks seeded alike score the same batch; records which labels each rank sampled.
* `trainer`: `transformers.Trainer` under this launch (DDP), a few steps, then `evaluate` with a
  `compute_metrics` that records what it sees.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from ltc_fast import AutoModelForTokenSequenceClassification as Model
from ltc_fast import distributed, encoders


def _half(batch: dict, rank: int, world: int) -> dict:
    """Rank r's contiguous share of the global batch (the global batch size divides by the world size)."""
    size = batch["input_ids"].shape[0] // world
    return {name: value[rank * size:(rank + 1) * size] for name, value in batch.items()}


def _gather(obj):
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def run_steps(job: dict, folder: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(job["seed"])  # the same on every rank, as Trainer / set_seed do
    model = Model.from_pretrained(os.path.join(folder, "initial")).train()
    if job["wrap"] == "ddp":
        wrapped = DistributedDataParallel(model, find_unused_parameters=False)
    else:
        wrapped = distributed.fully_shard_model(model)
    optimizer = torch.optim.AdamW(wrapped.parameters(), **job["adamw"])
    batch = torch.load(os.path.join(folder, "batch.pt"))
    mine = _half(batch, rank, world)
    scored = []
    for _ in range(job["steps"]):
        out = wrapped(**mine)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scored.append(None if out.label_ids is None else out.label_ids.tolist())
    scored = _gather(scored)  # [rank][step]
    distributed.save_pretrained(wrapped, os.path.join(folder, f"{job['wrap']}-saved"))
    results = {"label_ids": scored}
    if job["wrap"] == "fsdp":
        results["layer_units"] = [isinstance(layer, FSDPModule) for layer in encoders.encoder_layers(model.transformer)]
        results["label_table_rows_here"] = model.label_embeddings.weight.to_local().shape[0]
        wrapped.eval()
        with torch.no_grad():  # every rank runs the same input: FSDP's forward is collective
            results["logits"] = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if distributed.is_main_process():
        torch.save(results, os.path.join(folder, f"{job['wrap']}-results.pt"))


def run_sampling(job: dict, folder: str) -> None:
    model = Model.from_pretrained(os.path.join(folder, "initial")).train()
    batch = torch.load(os.path.join(folder, "batch.pt"))
    draws = []
    for _ in range(2):  # the same seed twice: the draws repeat on each rank
        torch.manual_seed(job["seed"])
        draws.append(model(**batch).label_ids.tolist())
    gathered = _gather(draws)
    if distributed.is_main_process():
        torch.save(gathered, os.path.join(folder, "sampling.pt"))


def run_trainer(job: dict, folder: str) -> None:
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from ltc_fast import LabelTokenCollator

    model = Model.from_pretrained(os.path.join(folder, "initial"))
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    collator = LabelTokenCollator(tokenizer, model.num_labels, model.config.problem_type)
    examples = torch.load(os.path.join(folder, "examples.pt"))
    seen = []

    def compute_metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        seen.append({"logits": torch.as_tensor(logits), "targets": torch.as_tensor(prediction.label_ids)})
        return {"rows": float(len(prediction.label_ids))}

    args = TrainingArguments(
        output_dir=os.path.join(folder, "out"), use_cpu=True, ddp_backend="gloo", ddp_find_unused_parameters=False,
        max_steps=job["steps"], per_device_train_batch_size=2, per_device_eval_batch_size=2, learning_rate=1e-3,
        seed=job["seed"], report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
        remove_unused_columns=False, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples["train"], eval_dataset=examples["dev"],
                      data_collator=collator, compute_metrics=compute_metrics)
    trainer.train()
    metrics = trainer.evaluate()
    distributed.save_pretrained(trainer.model, os.path.join(folder, "trainer-saved"))
    report = {"wrapped": type(trainer.model_wrapped).__name__,
              "find_unused_parameters": getattr(trainer.model_wrapped, "find_unused_parameters", None),
              "world_size": trainer.args.world_size, "metrics": metrics, "seen": seen}
    gathered = _gather(report)
    if distributed.is_main_process():
        torch.save(gathered, os.path.join(folder, "trainer-results.pt"))


JOBS = {"steps": run_steps, "sampling": run_sampling, "trainer": run_trainer}


def main(workdir: str) -> None:
    dist.init_process_group("gloo")
    with open(os.path.join(workdir, "plan.json")) as f:
        plan = json.load(f)
    for job in plan:
        JOBS[job["kind"]](job, os.path.join(workdir, job["folder"]))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Every result is on disk. Leave without the interpreter's teardown: a fresh-clone CI run once saw a worker
    # abort there ("terminate called without an active exception", exit -6) after finishing its jobs.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
