"""label_attention="decoupled": the text attends only the text, each label the text and itself.

The reference is the same encoder run once over `[text; labels]` with an explicit `(T + N)^2` attention mask
(eager attention): the decoupled implementation never builds that mask. Comparisons follow the accuracy rule
(tests/helpers.py): that reference in fp64 is the oracle, in fp32 the plain path."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.helpers import (GRADIENT_DRAWS, AccuracyRuleSamples, assert_within_accuracy_rule, check_over_draws,
                           encoder_config, fp64_copy, label_names, random_targets, text_batch)
from transformers import AutoModel

import ltc_fast
from ltc_fast import encoders, layout
from ltc_fast.encoders import modes_supported

Model = ltc_fast.AutoModelForTokenSequenceClassification


def decoupled_model(arch, num_labels, problem_type="multi_label_classification", **options):
    config = ltc_fast.LtcConfig(encoder=encoder_config(arch, **options.pop("encoder", {})),
                                label_names=label_names(num_labels), problem_type=problem_type,
                                label_attention="decoupled", **options)
    return Model(config).eval()


def masked_oracle(model, dtype=torch.float32):
    """A copy of `model` in `dtype` whose encoder runs eager attention, for `masked_oracle_logits`."""
    oracle = copy.deepcopy(model).to(dtype)
    oracle.transformer.set_attn_implementation("eager")
    return oracle


def masked_oracle_logits(oracle, ids, mask):
    """Logits from one eager pass of `oracle` (see `masked_oracle`) over [text; labels] with the decoupled
    pattern as an explicit mask (and, for an encoder with local layers, that pattern within the window of
    position ids in those layers)."""
    spec = encoders.encoder_spec(oracle.config.encoder)
    pad = oracle.config.encoder.pad_token_id
    batch, text_len = ids.shape
    num_labels = oracle.num_labels
    encoder = oracle.transformer
    words = encoder.get_input_embeddings()(ids)
    labels = oracle.label_embeddings.weight.unsqueeze(0).expand(batch, -1, -1)
    label_positions = layout.label_position_ids(torch.arange(num_labels), oracle.config.label_positions,
                                                spec.position_scheme, pad)
    positions = torch.cat([layout.text_position_ids(ids, spec.position_scheme, pad),
                           label_positions.expand(batch, -1)], dim=1)
    size = text_len + num_labels
    allowed = torch.zeros(batch, size, size, dtype=torch.bool)
    allowed[:, :, :text_len] = mask.bool()[:, None, :]  # everyone sees the real text tokens
    allowed[:, :text_len, text_len:] = False  # the text never sees a label
    label_self = torch.arange(text_len, size)
    allowed[:, label_self, label_self] = True  # each label sees itself
    dtype = words.dtype

    def additive(allowed):
        return torch.zeros(batch, 1, size, size, dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)

    attention_mask = additive(allowed)
    window = encoders.sliding_window(oracle.config.encoder)
    if window is not None:
        local = allowed & ((positions[:, :, None] - positions[:, None, :]).abs() <= window)
        local |= ~local.any(dim=-1, keepdim=True)  # a padding query out of reach of every key: unread, not NaN
        attention_mask = {"full_attention": attention_mask, "sliding_attention": additive(local)}
    inputs = {"inputs_embeds": torch.cat([words, labels], dim=1), "position_ids": positions,
              "attention_mask": attention_mask}
    if spec.takes_token_type_ids:
        inputs["token_type_ids"] = torch.zeros(batch, size, dtype=torch.long)
    states = encoder(**inputs).last_hidden_state[:, text_len:]
    return (states @ oracle.classifier.weight.T + oracle.classifier.bias).squeeze(-1)


@pytest.mark.parametrize("arch", modes_supported())
@pytest.mark.parametrize("label_positions", ["reference", "shared"])
@pytest.mark.parametrize("batch_size,num_labels", [(1, 1), (3, 6)])
def test_decoupled_equals_the_explicitly_masked_encoder(arch, label_positions, batch_size, num_labels):
    model = decoupled_model(arch, num_labels, label_positions=label_positions)
    plain, exact = masked_oracle(model), masked_oracle(model, torch.float64)

    def draw(samples):
        ids, mask = text_batch(batch_size, 9, model.config.encoder.pad_token_id)
        with torch.no_grad():
            samples.add("logits", model(ids, mask).logits, masked_oracle_logits(plain, ids, mask),
                        masked_oracle_logits(exact, ids, mask))

    check_over_draws(batch_size * num_labels, draw)


def test_decoupled_gradients_equal_the_masked_oracle():
    """Every parameter's gradient, as one vector, over GRADIENT_DRAWS draws."""
    model = decoupled_model("roberta", 5, label_positions="shared")
    plain, exact = masked_oracle(model), masked_oracle(model, torch.float64)
    samples = AccuracyRuleSamples()
    for _ in range(GRADIENT_DRAWS):
        ids, mask = text_batch(3, 8, model.config.encoder.pad_token_id)
        weights = torch.randn(3, 5)
        for module in (model, plain, exact):
            module.zero_grad(set_to_none=True)
        (model(ids, mask).logits * weights).sum().backward()
        (masked_oracle_logits(plain, ids, mask) * weights).sum().backward()
        (masked_oracle_logits(exact, ids, mask) * weights.double()).sum().backward()
        plain_parameters, exact_parameters = dict(plain.named_parameters()), dict(exact.named_parameters())
        for name, param in model.named_parameters():
            expected = plain_parameters[name].grad
            assert (param.grad is None) == (expected is None), name
            if expected is not None:
                samples.add("gradient", param.grad, expected, exact_parameters[name].grad, part=name)
    samples.check()


@pytest.mark.parametrize("arch", ["bert", "roberta", "electra", "modernbert"])
def test_the_text_is_encoded_exactly_as_by_the_plain_encoder(arch):
    model = decoupled_model(arch, 4)
    ids, mask = text_batch(3, 10, model.config.encoder.pad_token_id)
    plain = AutoModel.from_config(copy.deepcopy(model.config.encoder), **(
        {"add_pooling_layer": False} if encoders.encoder_spec(model.config.encoder).has_pooler else {}))
    plain.load_state_dict(model.transformer.state_dict())
    plain.eval().set_attn_implementation("sdpa")
    oracle = fp64_copy(plain)
    with torch.no_grad():
        want = plain(input_ids=ids, attention_mask=mask).last_hidden_state
        exact = oracle(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(ids, mask, output_hidden_states=True).hidden_states[-1]
    real = mask.bool()
    assert_within_accuracy_rule(got[real], want[real], exact[real], "text states")


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_labels_equal_one_pass(chunk):
    model = decoupled_model("bert", 7)
    chunked = copy.deepcopy(model)
    chunked.config.label_chunk_size = chunk
    oracle = fp64_copy(model)

    def draw(samples):  # the one-pass model in fp64 the oracle, in fp32 plain
        ids, mask = text_batch(3, 9, 0)
        with torch.no_grad():
            samples.add("chunked logits", chunked(ids, mask).logits, model(ids, mask).logits, oracle(ids, mask).logits)

    check_over_draws(3 * 7, draw)


def test_a_subset_of_labels_scores_as_in_the_full_pass():
    model = decoupled_model("xlm-roberta", 12, label_positions="shared")
    subset = torch.randperm(12)[:5]
    oracle = fp64_copy(model)

    def draw(samples):  # the full pass's columns in fp64 the oracle, in fp32 plain
        ids, mask = text_batch(2, 8, model.config.encoder.pad_token_id)
        with torch.no_grad():
            out = model(ids, mask, subset=subset)
            assert out.label_ids.tolist() == subset.tolist()
            samples.add("subset logits", out.logits, model(ids, mask).logits[:, subset],
                        oracle(ids, mask).logits[:, subset])

    check_over_draws(2 * 5, draw)


def test_sampled_training_step_uses_positives_and_k_negatives():
    model = decoupled_model("bert", 40, label_positions="shared", sampled_negatives=5).train()
    ids, mask = text_batch(3, 8, 0)
    targets = torch.zeros(3, 40)
    targets[0, [1, 7]] = 1
    targets[2, 30] = 1
    out = model(ids, mask, labels=targets)
    chosen = out.label_ids.tolist()
    assert len(chosen) == 8 and {1, 7, 30} <= set(chosen) and chosen == sorted(chosen)
    assert out.logits.shape == (3, 8)
    model.eval()
    oracle = fp64_copy(model)

    def draw(samples):  # no dropout: the sampled labels' loss is the loss over those columns of a full pass
        ids, mask = text_batch(3, 8, 0)
        with torch.no_grad():
            out = model(ids, mask, labels=targets, subset=torch.tensor(chosen))
            plain, exact = (torch.nn.functional.binary_cross_entropy_with_logits(
                m(ids, mask).logits[:, chosen], targets[:, chosen].to(dtype))
                for m, dtype in ((model, torch.float32), (oracle, torch.float64)))
        samples.add("sampled loss", out.loss, plain, exact)

    check_over_draws(1, draw)  # the same sampled labels, on fresh texts


def test_negatives_follow_the_given_scores():
    model = decoupled_model("bert", 30, sampled_negatives=3, negative_sampling="score").train()
    ids, mask = text_batch(2, 6, 0)
    targets = torch.zeros(2, 30)
    targets[0, 0] = 1
    with pytest.raises(ValueError, match="set_negative_sampling_scores"):
        model(ids, mask, labels=targets)
    scores = torch.zeros(30)
    scores[[4, 9, 11, 20]] = 1.0
    model.set_negative_sampling_scores(scores)
    for _ in range(5):
        chosen = set(model(ids, mask, labels=targets).label_ids.tolist())
        assert 0 in chosen and len(chosen) == 4 and chosen - {0} <= {4, 9, 11, 20}
    with pytest.raises(ValueError, match="scores must be 30 finite values >= 0"):
        model.set_negative_sampling_scores(torch.ones(29))


def test_single_label_sampling_remaps_the_classes():
    model = decoupled_model("bert", 20, "single_label_classification", sampled_negatives=4).train()
    ids, mask = text_batch(3, 6, 0)
    targets = torch.tensor([3, 17, 3])
    out = model(ids, mask, labels=targets)
    assert {3, 17} <= set(out.label_ids.tolist()) and out.logits.shape == (3, 6)
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match=r"subset must include every row's class.*\[17\]"):
        model(ids, mask, labels=targets, subset=torch.tensor([3, 5]))


def test_label_sampling_trains_a_tiny_model():
    model = decoupled_model("bert", 60, label_positions="shared", sampled_negatives=8).train()
    ids, mask = text_batch(6, 8, 0)
    targets = random_targets("multi_label_classification", 6, 60) * 0
    for row in range(6):
        targets[row, row * 7] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def full_loss():
        model.eval()
        with torch.no_grad():
            loss = model(ids, mask, labels=targets).loss.item()
        model.train()
        return loss

    before = full_loss()
    for _ in range(25):
        model(ids, mask, labels=targets).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert full_loss() < 0.7 * before


def test_subset_is_validated():
    model = decoupled_model("bert", 5)
    ids, mask = text_batch(2, 6, 0)
    for bad, message in [(torch.tensor([0, 5]), r"subset must lie in \[0, 4\]"),
                         (torch.tensor([1, 1]), "must not repeat"),
                         (torch.tensor([[0, 1]]), "non-empty 1-D tensor")]:
        with pytest.raises(ValueError, match=message):
            model(ids, mask, subset=bad)
    full = Model(ltc_fast.LtcConfig(encoder=encoder_config("bert"), num_labels=5)).eval()
    with pytest.raises(ValueError, match=r"subset \(scoring some of the labels\) needs label_attention='decoupled'"):
        full(ids, mask, subset=torch.tensor([0]))


def test_decoupled_options_need_decoupled_attention():
    with pytest.raises(ValueError, match="label_chunk_size and sampled_negatives need label_attention='decoupled'"):
        ltc_fast.LtcConfig(encoder=encoder_config("bert"), num_labels=3, sampled_negatives=2)
    with pytest.raises(ValueError, match="label_attention='decoupled'.*'deberta-v2' uses relative positions"):
        ltc_fast.LtcConfig(encoder=encoder_config("deberta-v2"), num_labels=3, label_attention="decoupled")


def test_decoupled_needs_the_ltc_attention_implementation():
    model = decoupled_model("bert", 3)
    model.set_attn_implementation("eager")
    ids, mask = text_batch(2, 6, 0)
    with pytest.raises(ValueError, match="label_attention='decoupled' runs on the encoder attention implementation"):
        model(ids, mask)


def test_decoupled_survives_save_and_reload(tmp_path):
    model = decoupled_model("roberta", 6, label_positions="shared", label_chunk_size=4)
    model.save_pretrained(tmp_path)
    loaded = Model.from_pretrained(tmp_path)
    assert (loaded.config.label_attention, loaded.config.label_chunk_size) == ("decoupled", 4)
    ids, mask = text_batch(2, 7, model.config.encoder.pad_token_id)
    torch.testing.assert_close(loaded(ids, mask).logits, model(ids, mask).logits, rtol=0, atol=0)
    rechunked = Model.from_pretrained(tmp_path, label_chunk_size=2, hidden_dropout_prob=0.0)
    assert rechunked.config.label_chunk_size == 2 and rechunked.config.encoder.hidden_dropout_prob == 0.0
    oracle = fp64_copy(model)

    def draw(samples):  # the saved model in fp64 the oracle, in fp32 plain
        ids, mask = text_batch(2, 7, model.config.encoder.pad_token_id)
        with torch.no_grad():
            samples.add("rechunked logits", rechunked(ids, mask).logits, model(ids, mask).logits,
                        oracle(ids, mask).logits)

    check_over_draws(2 * 6, draw)
    with pytest.raises(ValueError, match="label_chunk_size must be None or an int >= 1"):
        Model.from_pretrained(tmp_path, label_chunk_size=0)


def test_trainer_trains_and_evaluates_with_sampled_labels(tmp_path):
    from transformers import Trainer, TrainingArguments

    from ltc_fast import LabelTokenCollator

    model = decoupled_model("bert", 30, label_positions="shared", sampled_negatives=4, label_chunk_size=8)
    examples = [{"input_ids": [2, 10 + i % 5, 40, 3], "labels": [i % 5]} for i in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3,
                             report_to=[], use_cpu=True, logging_strategy="no", save_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=examples, eval_dataset=examples[:6],
                      data_collator=LabelTokenCollator(_tiny_pad_tokenizer(), 30))
    trainer.train()
    predictions = trainer.predict(examples[:6])
    logits = predictions.predictions[0] if isinstance(predictions.predictions, tuple) else predictions.predictions
    assert logits.shape == (6, 30)  # evaluation scores every label, in chunks
    assert predictions.metrics["test_loss"] > 0


def _tiny_pad_tokenizer():
    from transformers import BertTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{f"w{i}": i for i in range(4, 101)}}
    return BertTokenizerFast(vocab=vocab)
