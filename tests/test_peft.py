"""PEFT / LoRA on ltc_fast models: LoRA on the encoder, the label table and the head trained whole
(modules_to_save); save, reload and merge keep the logits; Trainer, gradient accumulation and the large-label
modes; adapters the ops would skip are refused."""


import pytest
import torch
from transformers import Trainer

from ltc_fast import AutoModelForTokenSequenceClassification as Model
from ltc_fast import LabelTokenCollator, LtcConfig
from ltc_fast.peft_support import lora_config
from tests.helpers import (ARCHITECTURES, accumulated_and_big_batch_steps, encoder_config, label_names,
                           save_tiny_encoder, trainer_args)

peft = pytest.importorskip("peft")

NUM_LABELS = 6
MULTI = "multi_label_classification"
DECOUPLED = {"label_attention": "decoupled", "label_chunk_size": 4}  # two chunks of the 6 labels


def _model(arch="bert", **options):
    """A tiny random model without dropout (so training steps and logits are deterministic)."""
    config = encoder_config(arch)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if hasattr(config, name):
            setattr(config, name, 0.0)
    return Model(LtcConfig(encoder=config, label_names=label_names(NUM_LABELS), label_head_dropout=0.0, **options))


def _lora(model, **options):
    """LoRA with random (non-zero) B, so the adapter changes the logits from the start."""
    return peft.get_peft_model(model, lora_config(model, r=4, init_lora_weights=False, **options))


def _batch(batch_size=3, length=7):
    ids = torch.randint(5, 101, (batch_size, length))
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones_like(ids)
    ids[0, 4:], mask[0, 4:] = 0, 0  # row 0 padded
    ids[0, 3] = 3
    return {"input_ids": ids, "attention_mask": mask}


def _examples(count, rate=0.4):
    """Word-id texts; label i is on (with probability `rate`) when word 10 + i occurs (a learnable signal)."""
    examples = []
    for _ in range(count):
        on = (torch.rand(NUM_LABELS) < rate).nonzero().flatten()
        ids = torch.randint(30, 100, (8,))
        ids[: on.numel()] = 10 + on
        examples.append({"input_ids": [2, *ids.tolist(), 3], "labels": on.tolist()})
    return examples


def _trainable(peft_model) -> set[str]:
    return {name for name, p in peft_model.named_parameters() if p.requires_grad}


def _expected_trainable(peft_model, targets) -> set[str]:
    """LoRA's A and B on every target of every layer, and the trained copies of the label table and the head."""
    inner = peft_model.get_base_model()
    layers = [name for name, _ in inner.named_modules() if name.split(".")[-1] in targets]
    assert layers, targets
    lora = {f"base_model.model.{layer}.lora_{ab}.default.weight" for layer in layers for ab in "AB"}
    whole = {f"base_model.model.{name}.modules_to_save.default.{p}"
             for name, p in (("label_embeddings", "weight"), ("classifier", "weight"), ("classifier", "bias"))}
    return lora | whole


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lora_config_trains_lora_label_table_and_head_only(arch):
    model = _model(arch)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()}
    peft_model = _lora(model)
    targets = {"distilbert": ("q_lin", "v_lin"), "deberta-v2": ("query_proj", "value_proj"),
               "modernbert": ("Wqkv",)}.get(arch, ("query", "value"))
    assert _trainable(peft_model) == _expected_trainable(peft_model, targets)

    batch = _batch()
    peft_model.train()
    out = peft_model(**batch, labels=(torch.rand(3, NUM_LABELS) < 0.5).float())
    out.loss.backward()
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1).step()
    # the original weights stay as they were; the label table and the head train in their copies
    for name, p in peft_model.get_base_model().named_parameters():
        original = name.replace(".base_layer", "").replace(".original_module", "")
        if "lora_" not in name and "modules_to_save" not in name:
            assert torch.equal(p, frozen[original]), name
    assert not torch.equal(peft_model.get_base_model().label_embeddings.weight, frozen["label_embeddings.weight"])


def test_plain_lora_config_with_modules_to_save_works_too():
    """What lora_config builds is an ordinary LoraConfig: written by hand (no task_type) it gives the same model."""
    torch.manual_seed(1)
    helper = _lora(_model())
    torch.manual_seed(1)
    plain = peft.get_peft_model(_model(), peft.LoraConfig(r=4, init_lora_weights=False, target_modules=["query", "value"],
                                                          modules_to_save=["label_embeddings", "classifier"]))
    assert _trainable(plain) == _trainable(helper)
    batch = _batch()
    helper.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, helper(**batch).logits, rtol=0, atol=0)
        assert isinstance(helper(**batch, return_dict=False), tuple)


@pytest.mark.parametrize("options", [{}, DECOUPLED, {"sequence_packing": "packed"}],
                         ids=["full", "decoupled", "packed"])
def test_merge_and_unload_gives_the_same_logits(options):
    peft_model = _lora(_model(**options)).eval()
    with torch.no_grad():
        peft_model.get_base_model().label_embeddings.weight.normal_(0, 0.5)  # the trained copy, not the original
        batch = _batch()
        adapted = peft_model(**batch).logits
        with peft_model.disable_adapter():
            plain = peft_model(**batch).logits
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(**batch).logits
    assert type(merged_model) is Model
    assert not any("lora_" in name or "modules_to_save" in name for name, _ in merged_model.named_parameters())
    assert (adapted - plain).abs().max() > 1e-3, "the adapter and the trained label table change the logits"
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-6)


def test_save_and_reload_the_adapter(tmp_path, tiny_tokenizer):
    from safetensors.torch import load_file

    encoder_dir = save_tiny_encoder(tmp_path / "encoder")
    base = Model.from_pretrained(encoder_dir, label_names=label_names(NUM_LABELS), label_init="random")
    peft_model = _lora(base).eval()
    batch = _batch()
    with torch.no_grad():
        before = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("label_embeddings" in key for key in saved) and any("classifier" in key for key in saved)
    assert not any("word_embeddings" in key or ".key." in key for key in saved), "the frozen encoder is not saved"

    torch.manual_seed(123)  # another random label table and head: the adapter's copies must replace them
    fresh = Model.from_pretrained(encoder_dir, label_names=label_names(NUM_LABELS), label_init="random").eval()
    with torch.no_grad():
        assert (fresh(**batch).logits - before).abs().max() > 1e-3
        reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
        torch.testing.assert_close(reloaded(**batch).logits, before, rtol=1e-5, atol=1e-6)
        texts = ["happy day", "sad food is not good"]
        predicted = reloaded.predict(texts, tokenizer=tiny_tokenizer, top_k=3)  # model.predict, through peft
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(merged(**batch).logits, before, rtol=1e-5, atol=1e-6)
    expected = merged.predict(texts, tokenizer=tiny_tokenizer, top_k=3)
    assert [[e["label"] for e in row] for row in predicted] == [[e["label"] for e in row] for row in expected]
    assert [e["score"] for row in predicted for e in row] == pytest.approx([e["score"] for row in expected
                                                                              for e in row], abs=1e-6)
    merged.save_pretrained(tmp_path / "merged")  # an ordinary ltc_fast checkpoint
    with torch.no_grad():
        torch.testing.assert_close(Model.from_pretrained(tmp_path / "merged").eval()(**batch).logits, before,
                                   rtol=1e-5, atol=1e-6)


def test_trainer_trains_the_adapter(tmp_path, tiny_tokenizer):
    """Trainer updates LoRA, the label table and the head, and nothing else; the loss falls. (15 steps learn the
    labels' rarity, from a random head's ~0.69 towards ~0.4, not yet the signal: tests/test_trainer.py has that.)"""
    peft_model = _lora(_model(), lora_alpha=8)
    start = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    collator = LabelTokenCollator(tiny_tokenizer, NUM_LABELS, MULTI)
    train = _examples(48, rate=0.15)

    def mean_loss():
        peft_model.eval()
        with torch.no_grad():
            return peft_model(**collator(train)).loss.item()

    before = mean_loss()
    args = trainer_args(tmp_path, max_steps=15, per_device_train_batch_size=16, learning_rate=3e-2, warmup_steps=0)
    trainer = Trainer(model=peft_model, args=args, train_dataset=train, data_collator=collator)
    assert trainer.model_accepts_loss_kwargs and trainer.label_names == ["labels"]
    trainer.train()
    assert mean_loss() < before - 0.1
    for name, p in peft_model.named_parameters():
        assert torch.equal(p, start[name]) != p.requires_grad, name


@pytest.mark.parametrize("options", [{}, DECOUPLED], ids=["full", "decoupled"])
def test_gradient_accumulation_equals_one_big_batch(options, tmp_path, tiny_tokenizer):
    """Micro-batches of 2 and 1 with gradient_accumulation_steps=2 give the same loss and the same update of
    LoRA, the label table and the head (plain SGD, lr 1, no clipping) as one batch of 3."""
    examples = _examples(3)
    initial = _lora(_model(**options))
    start = {name: p.detach().clone() for name, p in initial.named_parameters() if p.requires_grad}
    collator = LabelTokenCollator(tiny_tokenizer, NUM_LABELS, MULTI)
    results = accumulated_and_big_batch_steps(
        initial, examples, collator, tmp_path,
        lambda _, trained: {name: p.detach() - start[name] for name, p in trained.named_parameters()
                            if p.requires_grad})

    (accumulated_loss, accumulated_step), (big_loss, big_step) = results
    assert accumulated_loss == pytest.approx(big_loss, rel=1e-5)
    assert set(big_step) == set(start)
    assert all(step.abs().max() > 0 for step in big_step.values())
    for name, step in big_step.items():
        torch.testing.assert_close(accumulated_step[name], step, rtol=1e-4, atol=1e-6, msg=name)


def test_sampled_negatives_train_the_scored_label_rows(tmp_path, tiny_tokenizer):
    """Decoupled attention, chunks and sampled negatives: the label table's trained copy gets gradient in exactly
    the rows scored (the positives and the sampled negatives), and a Trainer step runs."""
    peft_model = _lora(_model(**DECOUPLED, sampled_negatives=1)).train()
    targets = torch.zeros(3, NUM_LABELS)
    targets[0, 1] = targets[2, 4] = 1
    out = peft_model(**_batch(), labels=targets)
    assert out.label_ids.numel() == 3 and {1, 4} <= set(out.label_ids.tolist())
    out.loss.backward()
    table = peft_model.get_base_model().label_embeddings.modules_to_save["default"].weight
    assert table.grad.abs().sum(1).nonzero().flatten().tolist() == sorted(out.label_ids.tolist())

    args = trainer_args(tmp_path, max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2)
    Trainer(model=peft_model, args=args, train_dataset=_examples(8),
            data_collator=LabelTokenCollator(tiny_tokenizer, NUM_LABELS, MULTI)).train()


@pytest.mark.parametrize("target", ["classifier", "label_embeddings", "word_embeddings"])
def test_adapters_the_ops_would_skip_are_refused(target):
    """LoRA on a module whose weights the ops read directly: lora_config refuses the target, and a model wrapped
    with a hand-written LoraConfig refuses to run rather than silently skip the adapter."""
    with pytest.raises(ValueError, match=rf"{target}.*'dense', 'key', 'query', 'value'"):
        lora_config(_model(), target_modules=[target])
    peft_model = peft.get_peft_model(_model(), peft.LoraConfig(target_modules=[target]))
    with pytest.raises(ValueError, match="read its weights directly.*modules_to_save"):
        peft_model(**_batch())


def test_all_linear_covers_the_encoder_only():
    peft_model = _lora(_model(), target_modules="all-linear")
    assert sorted(peft_model.peft_config["default"].target_modules) == ["dense", "key", "query", "value"]
    assert _trainable(peft_model) == _expected_trainable(peft_model, ("dense", "key", "query", "value"))
    # peft's own "all-linear" (no task_type) would put LoRA on the head too: refused at the forward
    peft_model = peft.get_peft_model(_model(), peft.LoraConfig(target_modules="all-linear"))
    with pytest.raises(ValueError, match="on classifier"):
        peft_model(**_batch())


def test_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match=r"nothing.*matches no module.*\['dense', 'key', 'query', 'value'\]"):
        lora_config(model, target_modules=["nothing"])
    with pytest.raises(ValueError, match="list of module names"):
        lora_config(model, target_modules="query")
    with pytest.raises(TypeError, match="before peft wraps it; got PeftModelForSequenceClassification"):
        lora_config(_lora(model))
    with pytest.raises(ValueError, match="inputs_embeds is not supported"):
        _model()(**_batch(), inputs_embeds=torch.zeros(3, 7, 24))
