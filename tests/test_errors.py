"""Bad input gets a ValueError that names the argument, what was expected and what was given."""

import pytest
import torch
from transformers import GPT2Config

import ltc_fast
from ltc_fast import AutoModelForTokenSequenceClassification as Model
from ltc_fast import LtcConfig
from tests.helpers import VOCAB, encoder_config, reference_and_ltc, reference_format, text_batch


@pytest.fixture(scope="module")
def multi():
    return reference_and_ltc("bert", 4)[1]


@pytest.fixture(scope="module")
def single():
    return reference_and_ltc("bert", 4, "single_label_classification")[1]


def _batch(batch_size=3):
    return text_batch(batch_size, 6, pad_id=0)


def test_multi_label_targets_of_the_wrong_shape(multi):
    ids, mask = _batch()
    with pytest.raises(ValueError, match=r"labels for multi_label_classification must have shape .*\[3, 4\].*got shape \[3\]"):
        multi(ids, mask, labels=torch.tensor([0, 1, 2]))


def test_multi_label_targets_outside_zero_one(multi):
    ids, mask = _batch()
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got values from 0.0 to 2.0"):
        multi(ids, mask, labels=torch.tensor([[0, 1, 2, 0]] * 3, dtype=torch.float))


def test_single_label_float_class_ids(single):
    ids, mask = _batch()
    with pytest.raises(ValueError, match=r"must be integer class ids \(torch.long\), got dtype torch.float32"):
        single(ids, mask, labels=torch.tensor([0.0, 1.0, 2.0]))


def test_single_label_wrong_shape(single):
    ids, mask = _batch()
    with pytest.raises(ValueError, match=r"class ids of shape \[batch_size\] = \[3\].*got shape \[2\]"):
        single(ids, mask, labels=torch.tensor([0, 1]))


def test_class_id_out_of_range(single):
    ids, mask = _batch()
    with pytest.raises(ValueError, match=r"class id 4 at row 1; class ids must be in \[0, 3\]"):
        single(ids, mask, labels=torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"class id -1 at row 0"):
        single(ids, mask, labels=torch.tensor([-1, 0, 1]))


def test_rows_that_are_not_one_hot(single):
    ids, mask = _batch()
    two_ones = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.float)
    with pytest.raises(ValueError, match=r"labels row 1 is not one-hot.*got \[0.0, 1.0, 1.0, 0.0\]"):
        single(ids, mask, labels=two_ones)
    soft = torch.tensor([[0.5, 0.5, 0, 0]] * 3)
    with pytest.raises(ValueError, match=r"labels row 0 is not one-hot"):
        single(ids, mask, labels=soft)


def test_one_hot_rows_equal_class_ids(single):
    ids, mask = _batch()
    class_ids = torch.tensor([2, 0, 3])
    one_hot = torch.nn.functional.one_hot(class_ids, 4).float()
    # One-hot rows become class ids before the loss: the same computation, bit for bit.
    assert torch.equal(single(ids, mask, labels=one_hot).loss, single(ids, mask, labels=class_ids).loss)


def test_sequence_longer_than_the_positions():
    config = encoder_config("bert", max_position_embeddings=20)
    model = Model(LtcConfig(encoder=config, num_labels=6)).eval()
    ids, mask = text_batch(2, 15, pad_id=0)
    with pytest.raises(ValueError, match=r"6 label position\(s\) \+ input length \(15 tokens.*= 21 exceeds the encoder's "
                                         r"20 positions; tokenize with ltc_fast.tokenize_texts\(.*max_length=20, "
                                         r"label_positions='reference'"):
        model(ids, mask)
    model(ids[:, :14], mask[:, :14])  # 6 + 14 = 20 fits


@pytest.mark.parametrize("names,message", [
    ([], "label_names must hold at least one name, got an empty list"),
    (["a", ""], r"label_names\[1\] must be a non-empty string, got ''"),
    (["a", "b", "a"], "label_names must be unique: 'a' is at index 0 and at index 2"),
    ("abc", "label_names must be a list of strings"),
])
def test_bad_label_names(names, message):
    with pytest.raises(ValueError, match=message):
        LtcConfig(encoder=encoder_config("bert"), label_names=names)


def test_num_labels_disagreeing_with_label_names():
    with pytest.raises(ValueError, match="num_labels=3 disagrees with label_names, which holds 2 names"):
        LtcConfig(encoder=encoder_config("bert"), num_labels=3, label_names=["a", "b"])


def test_reference_ids_whose_label_block_is_out_of_order(multi):
    ids, mask = _batch()
    ref_ids, ref_mask = reference_format(ids, mask, 4)
    ref_ids[2, 1:5] = torch.tensor([VOCAB + 1, VOCAB, VOCAB + 2, VOCAB + 3])
    with pytest.raises(ValueError, match=r"input_ids row 2 holds label-token ids .* positions 1..4 must be the label "
                                         rf"ids {VOCAB}..{VOCAB + 3} in order"):
        multi(ref_ids, ref_mask)
    ref_ids, ref_mask = reference_format(ids, mask, 4)
    ref_ids[0, 6] = VOCAB  # a label id inside the text
    with pytest.raises(ValueError, match="input_ids row 0 holds label-token ids"):
        multi(ref_ids, ref_mask)


def test_unsupported_architecture_names_the_supported_ones():
    with pytest.raises(ValueError, match=r"'gpt2' is not supported by ltc_fast; supported model_type values are: "
                                         r"bert, deberta-v2, distilbert, electra, modernbert, roberta, xlm-roberta"):
        LtcConfig(encoder=GPT2Config(), num_labels=2)


@pytest.mark.parametrize("kwargs,message", [
    ({"problem_type": "regression"}, "problem_type must be one of"),
    ({"problem_type": "single_label_classification", "num_labels": 1}, "needs num_labels >= 2"),
    ({"label_init": "zeros"}, "label_init must be one of"),
    ({"label_head_dropout": 1.0}, r"label_head_dropout must be in \[0, 1\)"),
    ({"label_positions": "diagonal"}, "label_positions must be one of"),
    ({"num_labels": 0}, "num_labels must be an int >= 1, got 0"),
])
def test_bad_config_options(kwargs, message):
    kwargs = {"num_labels": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        LtcConfig(encoder=encoder_config("bert"), **kwargs)


def test_bad_input_tensors(multi):
    ids, mask = _batch()
    with pytest.raises(ValueError, match=r"input_ids must be an integer tensor of shape \[batch_size, seq_len\], "
                                         r"got \(3, 6\) torch.float32"):
        multi(ids.float(), mask)
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids \[3, 6\], got \[3, 5\]"):
        multi(ids, mask[:, :5])


def test_conversion_with_impossible_num_labels(multi):
    state = ltc_fast.to_reference_state_dict(multi)
    with pytest.raises(ValueError, match=r"num_labels must be an int in \[1, "):
        ltc_fast.from_reference_state_dict(state, 0)
