"""Tokenization keeps the reference's budget; the collator pads and stacks labels; bundled data loads."""

import pytest
import torch

from ltc_fast import LabelTokenCollator, tokenize_texts
from ltc_fast.app.goemotions import goemotions_label_names, load_goemotions
from ltc_fast.reference import add_label_tokens, reference_tokenize
from tests.helpers import VOCAB

TEXTS = ["happy day", "the food is not very good and the day is bad, sad sad sad sad sad", "joy", "calmness"]


@pytest.mark.parametrize("num_labels,max_length", [(1, 512), (5, 12), (28, 36)])
def test_plain_tokens_are_the_reference_input_without_the_label_block(tiny_tokenizer, num_labels, max_length):
    names = [f"l{i}" for i in range(num_labels)]
    ours = tokenize_texts(tiny_tokenizer, TEXTS, num_labels, max_length=max_length, padding=True,
                          return_tensors="pt")
    reference_tokenizer = type(tiny_tokenizer)(vocab=tiny_tokenizer.get_vocab())
    label_ids = add_label_tokens(reference_tokenizer, names)
    assert label_ids == list(range(VOCAB, VOCAB + num_labels))
    theirs = reference_tokenize(reference_tokenizer, TEXTS, names, max_length=max_length)
    assert theirs["input_ids"].shape[1] <= max_length
    block = slice(1, 1 + num_labels)
    assert torch.equal(theirs["input_ids"][:, block], torch.tensor(label_ids).expand(len(TEXTS), -1))
    without_block = torch.cat([theirs["input_ids"][:, :1], theirs["input_ids"][:, block.stop:]], dim=1)
    assert torch.equal(ours["input_ids"], without_block)


def test_no_room_for_text_is_a_clear_error(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"max_length=10 leaves no room for text: 8 labels \(8 positions\) and 2 special tokens"):
        tokenize_texts(tiny_tokenizer, ["happy"], num_labels=8, max_length=10)


def test_collator_multi_label_from_indices_and_vectors(tiny_tokenizer):
    collator = LabelTokenCollator(tiny_tokenizer, num_labels=5)
    examples = [{"input_ids": [2, 7, 3], "labels": [0, 3]},
                {"input_ids": [2, 7, 8, 9, 3], "labels": []},
                {"input_ids": [2, 3], "labels": [0.0, 1.0, 0.0, 0.0, 0.5]}]
    batch = collator(examples)
    assert batch["input_ids"].shape == (3, 5)
    assert batch["attention_mask"].tolist()[0] == [1, 1, 1, 0, 0]
    assert batch["labels"].tolist() == [[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0.5]]
    with pytest.raises(ValueError, match=r"label index out of range \[0, 4\]: \[5\]"):
        collator([{"input_ids": [2, 3], "labels": [5]}])


def test_collator_single_label(tiny_tokenizer):
    batch = LabelTokenCollator(tiny_tokenizer, 3, "single")([{"input_ids": [2, 3], "labels": 2},
                                                            {"input_ids": [2, 5, 3], "labels": 0}])
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [2, 0]


def test_bundled_goemotions():
    names = goemotions_label_names()
    assert len(names) == 28 and names[0] == "admiration" and names[-1] == "neutral"
    texts, labels = load_goemotions("dev")
    assert len(texts) == len(labels) == 5426
    assert all(labels) and all(0 <= i < 28 for row in labels for i in row)
    assert load_goemotions("train", limit=10)[0] == load_goemotions("train")[0][:10]
    with pytest.raises(ValueError, match="split must be one of"):
        load_goemotions("validation")
