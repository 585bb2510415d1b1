"""Distributed training on the CPU: 2 processes, gloo, launched with torchrun (`tests/distributed_worker.py`).

One launch runs every job (the processes' start-up, importing torch and transformers, is most of the cost);
each test below checks one job's results against a single-process run in this process:

* DDP, `find_unused_parameters=False`, in the three label modes (full attention, shared positions,
  decoupled with label sampling): the parameters after 3 AdamW steps equal one process on the global batch
  (the accuracy rule on the update: one process in fp64 the oracle, in fp32 the plain path);
* FSDP (`fully_shard` on the encoder layers): the same, and the checkpoint it saves reloads on one process
  with the logits the sharded model computes;
* label sampling: each rank scores its own positives and draws its own negatives, reproducibly;
* `transformers.Trainer` under torchrun: DDP without unused parameters, and `compute_metrics` sees every dev
  example exactly once (no duplicates from the distributed sampler's padding).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tests.helpers import (AccuracyRuleSamples, assert_within_accuracy_rule, chosen_seed, encoder_config,
                           fp64_copy, label_names, make_tiny_tokenizer)

import ltc_fast
from ltc_fast import AutoModelForTokenSequenceClassification as Model
from ltc_fast import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
WORLD = 2
STEPS = 3
ADAMW = {"lr": 1e-2, "eps": 1e-3, "weight_decay": 0.01}  # eps near the gradients: the update depends on their scale
NUM_LABELS = 24
# label mode -> LtcConfig options; dropout is off so that one process can reproduce the update exactly
MODES = {
    "full": {},
    "shared": {"label_positions": "shared"},
    "decoupled-sampled": {"label_positions": "shared", "label_attention": "decoupled", "sampled_negatives": 3},
}
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _model(mode: str, num_labels: int = NUM_LABELS, **encoder_overrides) -> Model:
    config = ltc_fast.LtcConfig(encoder=encoder_config("bert", **{**NO_DROPOUT, **encoder_overrides}),
                                label_names=label_names(num_labels), label_head_dropout=0.0, **MODES[mode])
    return Model(config)


def _global_batch(batch_size: int, num_labels: int) -> dict:
    """Padded text ids (row lengths differ) and multi-label targets with at least one positive per row."""
    lengths = [5, 9, 7, 9][:batch_size]
    ids = torch.zeros(batch_size, max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.cat([torch.tensor([2]), torch.randint(5, 101, (length - 2,)), torch.tensor([3])])
        mask[row, :length] = 1
    labels = (torch.rand(batch_size, num_labels) < 0.05).float()
    labels[torch.arange(batch_size), torch.randint(0, num_labels, (batch_size,))] = 1.0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _half(batch: dict, rank: int) -> dict:
    size = batch["input_ids"].shape[0] // WORLD
    return {name: value[rank * size:(rank + 1) * size] for name, value in batch.items()}


def _dev_examples(count: int, num_labels: int) -> list[dict]:
    """Each example's label set is the binary digits of its index + 1: a row of targets names its example."""
    return [{"input_ids": [2] + torch.randint(5, 101, (3 + i % 4,)).tolist() + [3],
             "labels": [bit for bit in range(num_labels) if (i + 1) >> bit & 1]} for i in range(count)]


def _example_index(target_row) -> int:
    return int(sum(int(v) << bit for bit, v in enumerate(target_row))) - 1


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Write every job's inputs, run the 2-process torchrun launch once, return the work folder."""
    seed = chosen_seed("tests/test_distributed.py::launched")
    print(f"torch seed of the distributed jobs' inputs: {seed}")
    torch.manual_seed(seed)
    workdir = tmp_path_factory.mktemp("distributed")
    plan = []

    def job(folder: str, model: Model, batch, **spec):
        os.makedirs(workdir / folder)
        model.save_pretrained(workdir / folder / "initial")
        if batch is not None:
            torch.save(batch, workdir / folder / "batch.pt")
        plan.append({"folder": folder, "seed": seed, **spec})

    for mode in MODES:
        job(f"ddp-{mode}", _model(mode), _global_batch(4, NUM_LABELS), kind="steps", wrap="ddp", steps=STEPS,
            adamw=ADAMW)
    for mode in ("full", "decoupled-sampled"):
        job(f"fsdp-{mode}", _model(mode), _global_batch(4, NUM_LABELS), kind="steps", wrap="fsdp", steps=STEPS,
            adamw=ADAMW)
    sampling_batch = _global_batch(2, 40)
    job("sampling", _model("decoupled-sampled", num_labels=40), sampling_batch, kind="sampling")
    job("trainer", _model("decoupled-sampled", num_labels=4), None, kind="trainer", steps=2)
    torch.save({"train": _dev_examples(8, 4), "dev": _dev_examples(7, 4)}, workdir / "trainer" / "examples.pt")
    make_tiny_tokenizer().save_pretrained(workdir / "trainer" / "tokenizer")
    with open(workdir / "plan.json", "w") as f:
        json.dump(plan, f)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               WORKER, str(workdir)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    return workdir


def _single_process_steps(folder, scored_label_ids, dtype=torch.float32) -> Model:
    """The reference: one process, the global batch, the same AdamW, in `dtype` (fp64: the oracle). With label
    sampling, each rank's half is scored on the labels that rank scored; the loss is the mean of the halves'
    losses (what DDP's gradient averaging computes). Without sampling, one forward over the whole batch."""
    model = Model.from_pretrained(folder / "initial").to(dtype).train()
    batch = torch.load(folder / "batch.pt")
    batch["labels"] = batch["labels"].to(dtype)
    optimizer = torch.optim.AdamW(model.parameters(), **ADAMW)
    for step in range(STEPS):
        if scored_label_ids[0][step] is None:
            loss = model(**batch).loss
        else:
            loss = sum(model(**_half(batch, rank), subset=torch.tensor(scored_label_ids[rank][step])).loss
                       for rank in range(WORLD)) / WORLD
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def _assert_same_update(folder, saved: Model, scored_label_ids, what: str):
    """The accuracy rule on the update (the parameters after the steps minus before, every parameter as one
    vector): one process in fp64 the oracle, in fp32 the plain path. Buffers do not move."""
    initial = Model.from_pretrained(folder / "initial")
    plain, exact = (_single_process_steps(folder, scored_label_ids, dtype) for dtype in (torch.float32, torch.float64))
    assert saved.state_dict().keys() == plain.state_dict().keys()
    for name, buffer in saved.named_buffers():
        assert torch.equal(buffer, dict(initial.named_buffers())[name]), f"{what}: buffer {name}"
    samples = AccuracyRuleSamples()
    plain_parameters, exact_parameters = dict(plain.named_parameters()), dict(exact.named_parameters())
    for name, before in initial.named_parameters():
        after = dict(saved.named_parameters())[name]
        samples.add(f"{what}: update", after.detach() - before.detach(),
                    plain_parameters[name].detach() - before.detach(),
                    exact_parameters[name].detach() - before.detach().double(), part=name)
    samples.check()


@pytest.mark.parametrize("mode", list(MODES))
def test_every_parameter_gets_a_gradient(mode):
    """What DDP's find_unused_parameters=False needs: no pooler, every parameter used in every step."""
    model = _model(mode).train()
    batch = _global_batch(3 if mode != "decoupled-sampled" else 2, NUM_LABELS)
    out = model(**batch)
    out.loss.backward()
    if mode == "decoupled-sampled":
        assert out.logits.shape[1] < NUM_LABELS, "the step scored a sample of the labels"
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("mode", list(MODES))
def test_ddp_steps_equal_one_process_on_the_global_batch(launched, mode):
    folder = launched / f"ddp-{mode}"
    results = torch.load(folder / "ddp-results.pt")
    initial = Model.from_pretrained(folder / "initial")
    saved = Model.from_pretrained(folder / "ddp-saved")
    moved = max((p - q).abs().max() for p, q in zip(saved.parameters(), initial.parameters()))
    assert moved > 1e-3, "the steps changed the parameters"
    _assert_same_update(folder, saved, results["label_ids"], f"DDP {mode}")


def test_sampled_labels_under_ddp_are_each_ranks_own(launched):
    """Each rank scores its own half's positives plus negatives of its own."""
    folder = launched / "ddp-decoupled-sampled"
    batch = torch.load(folder / "batch.pt")
    scored = torch.load(folder / "ddp-results.pt")["label_ids"]
    for rank in range(WORLD):
        positives = set(_half(batch, rank)["labels"].gt(0).any(0).nonzero().flatten().tolist())
        for step in range(STEPS):
            chosen = set(scored[rank][step])
            assert positives <= chosen and len(chosen - positives) == MODES["decoupled-sampled"]["sampled_negatives"]


def test_each_rank_draws_its_own_negatives_reproducibly(launched):
    """Trainer seeds every rank alike; the ranks must still draw different negatives (independent samples,
    like successive micro-batches), and the same seed must give the same draw on a rank."""
    draws = torch.load(launched / "sampling" / "sampling.pt")  # [rank][repeat]
    for rank in range(WORLD):
        assert draws[rank][0] == draws[rank][1], "the same seed draws the same labels"
    assert draws[0][0] != draws[1][0], "the ranks drew the same negatives"
    # Rank 0 draws what a single process (rank 0 of 1) draws from the same seed.
    folder = launched / "sampling"
    seed = json.loads((launched / "plan.json").read_text())[0]["seed"]
    model = Model.from_pretrained(folder / "initial").train()
    torch.manual_seed(seed)
    assert model(**torch.load(folder / "batch.pt")).label_ids.tolist() == draws[0][0]


@pytest.mark.parametrize("mode", ["full", "decoupled-sampled"])
def test_fsdp_steps_and_checkpoint(launched, mode):
    """fully_shard on the encoder layers: same update as one process, and the checkpoint gathered on rank 0
    reloads on one process with the sharded model's logits."""
    folder = launched / f"fsdp-{mode}"
    results = torch.load(folder / "fsdp-results.pt")
    # Full attention: one FSDP unit per encoder layer; decoupled: the whole model is one unit (see
    # fully_shard_model). Either way the label table is sharded: rank 0 holds half of its rows.
    assert results["layer_units"] == [mode == "full"] * 3
    assert results["label_table_rows_here"] == NUM_LABELS // WORLD
    saved = Model.from_pretrained(folder / "fsdp-saved")
    assert saved.config.architectures == ["AutoModelForTokenSequenceClassification"]
    _assert_same_update(folder, saved, results["label_ids"], f"FSDP {mode}")
    batch = torch.load(folder / "batch.pt")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():  # the accuracy rule: the reloaded model in fp64 the oracle, in fp32 the plain path
        logits = saved.eval()(**inputs).logits
        exact = fp64_copy(saved)(**inputs).logits
    assert logits.shape == (4, NUM_LABELS)
    assert_within_accuracy_rule(results["logits"], logits, exact, f"FSDP {mode} logits")


def test_trainer_under_torchrun(launched):
    folder = launched / "trainer"
    reports = torch.load(folder / "trainer-results.pt")
    dev = torch.load(folder / "examples.pt")["dev"]
    for report in reports:
        assert report["wrapped"] == "DistributedDataParallel" and report["find_unused_parameters"] is False
        assert report["world_size"] == WORLD
        assert report["metrics"]["eval_rows"] == len(dev)
        (seen,) = report["seen"]
        order = [_example_index(row) for row in seen["targets"].round().long().tolist()]
        assert sorted(order) == list(range(len(dev))), f"compute_metrics saw examples {order}"
    # The gathered predictions are the trained model's, row for row.
    model = Model.from_pretrained(folder / "trainer-saved")
    collator = ltc_fast.LabelTokenCollator(_tokenizer(folder), model.num_labels, model.config.problem_type)
    seen = reports[0]["seen"][0]
    order = [_example_index(row) for row in seen["targets"].round().long().tolist()]
    inputs = {k: v for k, v in collator([dev[i] for i in order]).items() if k != "labels"}
    with torch.no_grad():  # the accuracy rule: the model in fp64 the oracle, on one batch in fp32 the plain path
        logits = model.eval()(**inputs).logits
        exact = fp64_copy(model)(**inputs).logits
    assert_within_accuracy_rule(seen["logits"].float(), logits, exact, "gathered logits")


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder / "tokenizer")


def test_single_process_helpers(tmp_path):
    """Outside a launch: rank 0 of 1, the main process; save_pretrained is the plain one."""
    assert distributed.rank() == int(os.environ.get("RANK", 0)) == 0
    assert distributed.world_size() == 1 and distributed.is_main_process()
    model = _model("full").eval()
    distributed.save_pretrained(model, tmp_path / "saved")
    batch = _global_batch(2, NUM_LABELS)
    with torch.no_grad():
        torch.testing.assert_close(Model.from_pretrained(tmp_path / "saved")(batch["input_ids"]).logits,
                                   model(batch["input_ids"]).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="fully_shard_model takes an ltc_fast AutoModelForTokenSequenceClassification, got Linear"):
        distributed.fully_shard_model(torch.nn.Linear(2, 2))


def test_the_command_trains_under_torchrun(tmp_path):
    """`torchrun -m ltc_fast train`: the ranks share one staging directory, rank 0 alone writes the model
    directory, and nothing half-written is left beside it."""
    from tests.helpers import save_tiny_encoder

    encoder = save_tiny_encoder(tmp_path / "encoder")
    words = ["happy", "sad", "calm", "day", "food", "good"]
    rows = [{"text": f"{words[i % 6]} {words[(i * 5) % 6]} day", "labels": [["joy"], ["fear"], []][i % 3]}
            for i in range(12)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "model"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               "-m", "ltc_fast", "train", "--model", encoder, "--train", str(data), "--dev", str(data),
               "--max-steps", "2", "--eval-steps", "1", "--batch-size", "2", "--max-length", "16",
               "--label-init", "random", "--out", str(out)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "metrics.json", "labels.txt"}
    assert not (out / "checkpoints").exists()
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert [entry["step"] for entry in metrics["evaluations"]] == [1, 2]
    assert Model.from_pretrained(out).config.label_names == ["fear", "joy"]
