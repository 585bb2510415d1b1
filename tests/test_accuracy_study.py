"""`python -m bench.accuracy`: the accuracy study on a tiny random encoder (the real one is the committed run).
Every contender trains with the one schedule, a run's record holds what the summary needs, an interrupted
study resumes without repeating a run, and the summary renders tables, paired differences and plots."""

import json

import pytest

from bench import accuracy
from tests.helpers import save_tiny_encoder

TINY_PLAN = accuracy.Plan(train_size=12, dev_size=10, test_size=10, steps=2, batch_size=4, curve_points=2,
                          max_length=40, hidden_layer=1, seeds=(0, 1))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    encoder = save_tiny_encoder(root / "encoder")
    path = root / "study.jsonl"
    accuracy.run_study(TINY_PLAN, list(accuracy.TASKS), encoder, workers=1, path=path)
    return encoder, path


def test_every_planned_run_is_recorded_with_what_the_summary_needs(study):
    _, path = study
    records = accuracy.read_records(path)
    planned = accuracy.planned_runs(TINY_PLAN, list(accuracy.TASKS))
    assert sorted((r["task"], r["contender"], r["seed"]) for r in records) == sorted(planned)
    for record in records:
        assert record["plan_id"] == TINY_PLAN.fingerprint() and record["provenance"]["torch"]
        assert [point["step"] for point in record["curve"]] == TINY_PLAN.curve_steps() == [1, 2]
        assert set(accuracy.HEADLINE_METRICS[record["task"]]) <= record["test"].keys()
        assert len(record["test_per_label"]) == 28
        if record["task"] == "multi":
            assert len(record["dev_thresholds"]) == 28 and record["test_at_threshold_0.5"]
        assert record["train_seconds"] > 0 and record["parameters"] > 0


def test_a_restarted_study_skips_the_recorded_runs(study, monkeypatch):
    encoder, path = study
    before = path.read_text()
    monkeypatch.setattr(accuracy, "train_run", lambda *a, **k: pytest.fail("a recorded run was trained again"))
    accuracy.run_study(TINY_PLAN, list(accuracy.TASKS), encoder, workers=1, path=path)
    assert path.read_text() == before


def test_contenders_of_one_seed_see_the_same_data_in_the_same_order(study, monkeypatch):
    """Same seed -> the same batches for every contender (the paired comparison rests on it)."""
    encoder, _ = study
    seen = {}
    original = accuracy.LabelTokenCollator.__call__

    def spy(self, examples):
        if examples and "labels" in examples[0]:
            seen.setdefault(current, []).append([example["labels"] for example in examples])
        return original(self, examples)

    monkeypatch.setattr(accuracy.LabelTokenCollator, "__call__", spy)
    data = accuracy.load_task_data(TINY_PLAN, "multi")
    for current in ("cls-head", "ltc-random", "reference"):
        accuracy.train_run(TINY_PLAN, "multi", current, 0, encoder, data)
    assert seen["cls-head"] == seen["ltc-random"] == seen["reference"]


def test_only_the_classifier_layers_get_the_head_learning_rate(study):
    encoder, _ = study
    for contender in ("cls-head", "mean-pool", "reference", "ltc-random"):
        model, _, _ = accuracy.build_contender(contender, ["a", "b"], "multi", 0, TINY_PLAN, encoder)
        names = {id(p): n for n, p in model.named_parameters()}
        for group in accuracy.parameter_groups(model, TINY_PLAN):
            for parameter in group["params"]:
                is_head = names[id(parameter)].startswith("classifier.")
                assert group["lr"] == (TINY_PLAN.head_lr if is_head else TINY_PLAN.lr), names[id(parameter)]
        assert sum(len(g["params"]) for g in accuracy.parameter_groups(model, TINY_PLAN)) == len(names)


def test_the_summary_renders_tables_paired_differences_and_plots(study):
    _, path = study
    summary = accuracy.summarize(accuracy.read_records(path))
    figures = accuracy.plot(summary, path.with_suffix(""))
    assert all(p.stat().st_size > 0 for p in figures.values())
    text = accuracy.markdown(summary, "study.jsonl", {k: p.name for k, p in figures.items()})
    for contender in accuracy.CONTENDERS:
        assert f"| {contender} | 2 |" in text
    assert "**single-label task**" in text and "Per-label test F1" in text
    diff = accuracy.paired_difference(summary, "multi", "ltc-random", "macro_f1")
    base = {r["seed"]: r["test"]["macro_f1"] for r in summary.runs("multi", "cls-head")}
    mine = {r["seed"]: r["test"]["macro_f1"] for r in summary.runs("multi", "ltc-random")}
    assert diff["seeds"] == [0, 1]
    assert diff["mean"] == pytest.approx(sum(mine[s] - base[s] for s in (0, 1)) / 2)
    strongest = {r["seed"]: r["test"]["macro_f1"] for r in summary.runs("multi", "mean-pool")}
    against_mean_pool = accuracy.paired_difference(summary, "multi", "ltc-random", "macro_f1", "mean-pool")
    assert against_mean_pool["mean"] == pytest.approx(sum(mine[s] - strongest[s] for s in (0, 1)) / 2)
    assert "Δ macro-F1 vs mean-pool (paired)" in text


def test_records_of_another_plan_are_kept_apart(study, tmp_path):
    _, path = study
    other = tmp_path / "mixed.jsonl"
    records = accuracy.read_records(path)
    stray = dict(records[0], plan_id="another", test={k: -1.0 for k in records[0]["test"]})
    other.write_text("".join(json.dumps(r) + "\n" for r in [*records, stray]))
    summary = accuracy.summarize(accuracy.read_records(other))
    assert len(summary.records) == len(records)
    assert all(r["plan_id"] == TINY_PLAN.fingerprint() for r in summary.records)
