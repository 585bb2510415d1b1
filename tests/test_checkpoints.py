"""Conversion to and from the reference's state dict, save/load, and loading reference checkpoints."""

import pytest
import torch
from safetensors.torch import save_file

import ltc_fast
from ltc_fast import AutoModelForTokenSequenceClassification as Model
from tests.helpers import (ARCHITECTURES, VOCAB, assert_logits_follow_the_rule, check_over_draws, fp64_copy,
                           reference_and_ltc, text_batch)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reference_to_ltc_to_reference_is_exact(arch):
    reference, model = reference_and_ltc(arch, 7)
    original = reference.state_dict()
    converted = ltc_fast.from_reference_state_dict(original, 7)
    assert converted["label_embeddings.weight"].shape[0] == 7
    assert not any(k.startswith("transformer.pooler.") for k in converted), "the unused pooler is dropped"
    back = ltc_fast.to_reference_state_dict(converted)
    expected = {k: v for k, v in original.items() if not k.startswith("transformer.pooler.")}
    assert set(back) == set(expected)
    for key, value in expected.items():
        assert torch.equal(back[key], value), key
    assert set(ltc_fast.to_reference_state_dict(model)) == set(expected), "a model converts like its state dict"


@pytest.mark.parametrize("arch", ["bert", "electra", "deberta-v2"])
def test_save_and_load_round_trip_is_exact(arch, tmp_path):
    _, model = reference_and_ltc(arch, 5, "single_label_classification")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = Model.from_pretrained(tmp_path)
    assert loaded.config.label_names == model.config.label_names
    assert loaded.config.problem_type == "single_label_classification"
    assert set(loaded.state_dict()) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    text_ids, mask = text_batch(3, 8, pad_id=model.config.encoder.pad_token_id)
    assert torch.equal(loaded(text_ids, mask).logits, model(text_ids, mask).logits)


def test_loading_a_checkpoint_checks_the_labels(tmp_path):
    _, model = reference_and_ltc("bert", 3)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=4 disagrees"):
        Model.from_pretrained(tmp_path, num_labels=4)
    with pytest.raises(ValueError, match="label_names disagree"):
        Model.from_pretrained(tmp_path, label_names=["x", "y", "z"])


@pytest.mark.parametrize("weights_format", ["pytorch_model.bin", "model.safetensors"])
@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "modernbert"])
def test_loads_a_saved_reference_checkpoint(arch, weights_format, tmp_path):
    reference, _ = reference_and_ltc(arch, 6, "single_label_classification")
    reference.label_names = [f"name{i}" for i in range(6)]
    reference.save_pretrained(tmp_path)
    if weights_format == "model.safetensors":
        state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
        (tmp_path / "pytorch_model.bin").unlink()
        save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    model = Model.from_pretrained(tmp_path)
    assert model.config.label_names == reference.label_names
    assert model.config.problem_type == "single_label_classification"
    assert model.transformer.get_input_embeddings().num_embeddings == VOCAB
    assert_logits_follow_the_rule(model.eval(), reference.eval())


def test_hidden_layer_survives_save_and_load(tmp_path):
    reference, _ = reference_and_ltc("bert", 4)
    reference.save_pretrained(tmp_path / "ref")
    model = Model.from_pretrained(tmp_path / "ref", hidden_layer=2)
    model.save_pretrained(tmp_path / "ltc")
    loaded = Model.from_pretrained(tmp_path / "ltc")
    assert len(loaded.transformer.encoder.layer) == 2
    text_ids, mask = text_batch(2, 6, pad_id=0)
    assert torch.equal(loaded(text_ids, mask).logits, model(text_ids, mask).logits)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attention_implementation_can_be_chosen(attn_implementation, tmp_path):
    reference, model = reference_and_ltc("roberta", 3)
    reference.save_pretrained(tmp_path / "ref")
    model.save_pretrained(tmp_path / "ltc")
    oracle = fp64_copy(model)
    for path in (tmp_path / "ref", tmp_path / "ltc"):
        loaded = Model.from_pretrained(path, attn_implementation=attn_implementation).eval()
        assert loaded.transformer.config._attn_implementation == attn_implementation

        def draw(samples, loaded=loaded, path=path):  # the chosen attention against the model's own, fp64 oracle
            text_ids, mask = text_batch(3, 8, pad_id=1)
            with torch.no_grad():
                samples.add(f"logits ({path.name})", loaded(text_ids, mask).logits, model(text_ids, mask).logits,
                            oracle(text_ids, mask).logits)

        check_over_draws(3 * 3, draw)


def test_from_config_builds_a_random_model():
    from tests.helpers import encoder_config
    model = Model.from_config(encoder_config("electra"), label_names=["a", "b"], hidden_layer=1)
    assert model.config.label_names == ["a", "b"] and len(model.transformer.encoder.layer) == 1
    assert model.label_embeddings.weight.shape == (2, 16)  # ELECTRA's embedding size, not its hidden size
    again = Model.from_config(model.config)
    assert again.config.label_names == ["a", "b"]
    with pytest.raises(ValueError, match=r"options \['num_labels'\] go into the LtcConfig"):
        Model.from_config(model.config, num_labels=3)


# ------------------------------------------------------------------ built from the encoder's own config
NAMES = ["joy", "anger", "fear", "love", "grief"]


def _classifier_config(arch="bert", problem_type="single_label_classification"):
    """An encoder config as transformers' classifiers (and the reference) take it: labels on it."""
    from tests.helpers import encoder_config
    return encoder_config(arch, id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)},
                          problem_type=problem_type)


@pytest.mark.parametrize("build", ["constructor", "from_config"])
def test_the_encoders_config_gives_the_labels_and_problem_type(build):
    config = _classifier_config()
    model = Model(config) if build == "constructor" else Model.from_config(config)
    assert model.config.label_names == NAMES
    assert model.config.problem_type == "single_label_classification"
    assert model.label_embeddings.weight.shape[0] == 5
    options = Model.from_config(config, problem_type="multi_label_classification")  # options still win
    assert options.config.problem_type == "multi_label_classification" and options.config.label_names == NAMES


def test_from_pretrained_honours_config_as_the_references_training_script_passes_it(tmp_path):
    """config = AutoConfig.from_pretrained(path, num_labels=N, problem_type=...); from_pretrained(path, config=...)."""
    from transformers import AutoConfig
    from tests.helpers import save_tiny_encoder

    path = save_tiny_encoder(tmp_path / "encoder")
    config = AutoConfig.from_pretrained(path, num_labels=4, problem_type="single_label_classification")
    model = Model.from_pretrained(path, config=config)
    assert model.config.num_labels == 4 and model.config.problem_type == "single_label_classification"
    named = Model.from_pretrained(path, config=_classifier_config(problem_type="multi_label_classification"))
    assert named.config.label_names == NAMES and named.config.problem_type == "multi_label_classification"


def test_a_plain_encoder_directory_that_carries_labels(tmp_path):
    from transformers import AutoModel
    from tests.helpers import save_tiny_encoder

    AutoModel.from_config(_classifier_config()).save_pretrained(tmp_path / "with-labels")
    model = Model.from_pretrained(tmp_path / "with-labels")
    assert model.config.label_names == NAMES and model.config.problem_type == "single_label_classification"
    with pytest.raises(ValueError, match="give num_labels"):  # transformers' default two placeholders say nothing
        Model.from_pretrained(save_tiny_encoder(tmp_path / "without"))


def test_a_reference_checkpoint_with_the_training_scripts_config_keeps_its_labels(tmp_path):
    from transformers import AutoConfig

    reference, _ = reference_and_ltc("bert", 6, "single_label_classification")
    reference.label_names = [f"name{i}" for i in range(6)]
    reference.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path, num_labels=6, problem_type="single_label_classification")
    model = Model.from_pretrained(tmp_path, config=config)
    assert model.config.label_names == reference.label_names
    assert_logits_follow_the_rule(model.eval(), reference.eval())
