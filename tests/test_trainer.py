"""Training with transformers.Trainer: it learns, and gradient accumulation equals one big batch."""


import pytest
import torch
from transformers import Trainer

from ltc_fast import AutoModelForTokenSequenceClassification as Model
from ltc_fast import LtcConfig
from ltc_fast import LabelTokenCollator
from tests.helpers import accumulated_and_big_batch_steps, encoder_config, trainer_args

NUM_LABELS = 4


def _examples(count, problem_type, signal=True):
    """Texts of random word ids; label i is on when word id 10 + i occurs (a learnable signal)."""
    examples = []
    for _ in range(count):
        ids = torch.randint(30, 100, (int(torch.randint(4, 9, ())),))
        present = torch.rand(NUM_LABELS) < 0.4
        if problem_type == "single_label_classification":
            present = torch.zeros(NUM_LABELS, dtype=torch.bool)
            present[int(torch.randint(0, NUM_LABELS, ()))] = True
        if signal:
            ids[: int(present.sum())] = 10 + present.nonzero().flatten()
        text = [2] + ids.tolist() + [3]
        labels = present.nonzero().flatten().tolist()
        examples.append({"input_ids": text, "labels": labels if problem_type.startswith("multi") else labels[0]})
    return examples


def _model(problem_type, dropout=0.1):
    config = encoder_config("bert", hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return Model(LtcConfig(encoder=config, num_labels=NUM_LABELS, problem_type=problem_type,
                           label_head_dropout=dropout))


def _mean_loss(model, collator, examples):
    model.eval()
    with torch.no_grad():
        return model(**collator(examples)).loss.item()


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "single_label_classification"])
def test_trainer_learns(problem_type, tmp_path, tiny_tokenizer):
    model = _model(problem_type, dropout=0.0)
    collator = LabelTokenCollator(tiny_tokenizer, NUM_LABELS, problem_type)
    train = _examples(64, problem_type)
    before = _mean_loss(model, collator, train)
    args = trainer_args(tmp_path, max_steps=150, per_device_train_batch_size=16, learning_rate=3e-3, warmup_steps=0)
    Trainer(model=model, args=args, train_dataset=train, data_collator=collator).train()
    after = _mean_loss(model, collator, train)
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("problem_type,labels_as", [
    ("multi_label_classification", "indices"),
    ("single_label_classification", "class_ids"),
    ("single_label_classification", "one_hot"),
])
def test_gradient_accumulation_equals_one_big_batch(problem_type, labels_as, tmp_path, tiny_tokenizer):
    """3 examples: micro-batches of 2 and 1 with gradient_accumulation_steps=2 must give the same loss and
    the same update (plain SGD, lr 1, no clipping, no dropout) as one batch of 3."""
    examples = _examples(3, problem_type)
    if labels_as == "one_hot":
        examples = [{**ex, "labels": torch.nn.functional.one_hot(torch.tensor(ex["labels"]), NUM_LABELS).float()}
                    for ex in examples]
    initial = _model(problem_type, dropout=0.0)
    collator = LabelTokenCollator(tiny_tokenizer, NUM_LABELS, problem_type)
    results = accumulated_and_big_batch_steps(
        initial, examples, collator, tmp_path,
        lambda before, after: {k: v - before.state_dict()[k] for k, v in after.state_dict().items()})

    (accumulated_loss, accumulated_step), (big_loss, big_step) = results
    assert big_loss == pytest.approx(_mean_loss(initial, collator, examples), rel=1e-5), "the plain mean loss"
    assert accumulated_loss == pytest.approx(big_loss, rel=1e-5)
    assert any(step.abs().max() > 0 for step in big_step.values())
    for name, step in big_step.items():
        # atol: float summation order differs between 2 + 1 and 3 rows; a wrong normalisation is off by ~30%.
        torch.testing.assert_close(accumulated_step[name], step, rtol=1e-4, atol=1e-6, msg=name)


def test_evaluate_reports_loss_and_calls_compute_metrics(tmp_path, tiny_tokenizer):
    """With default TrainingArguments, Trainer finds the model's target argument (`labels` only: no other
    forward argument may contain "label"), so evaluation computes the loss and hands compute_metrics the
    targets of every example."""
    model = _model("multi_label_classification")
    collator = LabelTokenCollator(tiny_tokenizer, NUM_LABELS, "multi_label_classification")
    dev = _examples(5, "multi_label_classification")
    seen = []

    def compute_metrics(prediction):
        seen.append(prediction)
        return {"rows": len(prediction.label_ids)}

    trainer = Trainer(model=model, args=trainer_args(tmp_path, per_device_eval_batch_size=2), eval_dataset=dev,
                      data_collator=collator, compute_metrics=compute_metrics)
    assert trainer.label_names == ["labels"]
    metrics = trainer.evaluate()
    assert metrics["eval_rows"] == 5 and metrics["eval_loss"] == pytest.approx(_mean_loss(model, collator, dev), rel=1e-5)
    assert torch.equal(torch.as_tensor(seen[0].label_ids), collator(dev)["labels"])
