"""Test helpers shared by the test modules (import them from here, not from conftest): tiny random encoders of
every supported architecture, a tiny offline tokenizer, padded batches, the reference / ltc_fast pair on the
same weights, and the comparisons (relative closeness, the accuracy rule against an fp64 oracle)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (BertConfig, BertTokenizerFast, DebertaV2Config, DistilBertConfig, ElectraConfig,
                          RobertaConfig, XLMRobertaConfig)

import ltc_fast
from ltc_fast.reference import ReferenceLabelTokenModel

VOCAB = 101  # not a power of two
HIDDEN = 24  # not a power of two; 2 heads of 12

ENCODER_CONFIGS = {
    "bert": lambda: BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=3, num_attention_heads=2,
                               intermediate_size=37, pad_token_id=0),
    "roberta": lambda: RobertaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=3,
                                     num_attention_heads=2, intermediate_size=37, pad_token_id=1,
                                     max_position_embeddings=80),
    "xlm-roberta": lambda: XLMRobertaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=37, pad_token_id=1,
                                            type_vocab_size=1),
    "distilbert": lambda: DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=2, n_heads=2, hidden_dim=37,
                                           pad_token_id=0),
    # ELECTRA's embedding size differs from its hidden size: label rows live in the embedding space.
    "electra": lambda: ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=HIDDEN, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=37, pad_token_id=0),
    # DeBERTa-v3 style: relative attention, no absolute positions.
    "deberta-v2": lambda: DebertaV2Config(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=37, pad_token_id=0,
                                          relative_attention=True, position_biased_input=False,
                                          pos_att_type=["p2c", "c2p"], max_relative_positions=64, type_vocab_size=0),
}
ARCHITECTURES = list(ENCODER_CONFIGS)


def encoder_config(arch: str, **overrides):
    config = ENCODER_CONFIGS[arch]()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def label_names(num_labels: int) -> list[str]:
    return [f"label{i}" for i in range(num_labels)]


def reference_and_ltc(arch: str, num_labels: int, problem_type: str = "multi_label_classification", **cfg):
    """A random reference model and the ltc_fast model holding exactly the same weights (both eval)."""
    config = encoder_config(arch, **cfg)
    names = label_names(num_labels)
    reference = ReferenceLabelTokenModel.from_config(copy.deepcopy(config), names, problem_type).eval()
    with torch.no_grad():  # the reference's resize initialises label rows at the vocabulary mean: spread them
        reference.transformer.get_input_embeddings().weight[VOCAB:].normal_(0, 0.5)
    model = ltc_fast.AutoModelForTokenSequenceClassification(
        ltc_fast.LtcConfig(encoder=config, label_names=names, problem_type=problem_type)
    ).eval()
    model.load_state_dict(ltc_fast.from_reference_state_dict(reference.state_dict(), num_labels), strict=True)
    return reference, model


def text_batch(batch_size: int, max_len: int, pad_id: int, padded: bool = True):
    """Plain text ids `[CLS] t... [SEP] pad...` (ids 2/3 stand for CLS/SEP) and their mask; row 0 shortest."""
    ids = torch.randint(5, VOCAB, (batch_size, max_len))
    mask = torch.ones_like(ids)
    lengths = [max_len] * batch_size
    if padded and batch_size > 1:
        lengths[0] = max(3, max_len // 2)
    if padded and batch_size == 1:
        lengths[0] = max_len  # a single row is never padded by a collator
    for row, length in enumerate(lengths):
        ids[row, 0], ids[row, length - 1] = 2, 3
        ids[row, length:] = pad_id
        mask[row, length:] = 0
    return ids, mask


def reference_format(text_ids: torch.Tensor, mask: torch.Tensor, num_labels: int):
    """The reference's input for the same texts: label ids V..V+N-1 after [CLS]."""
    batch = text_ids.shape[0]
    block = torch.arange(VOCAB, VOCAB + num_labels).expand(batch, num_labels)
    ids = torch.cat([text_ids[:, :1], block, text_ids[:, 1:]], dim=1)
    ref_mask = torch.cat([mask[:, :1], torch.ones(batch, num_labels, dtype=mask.dtype), mask[:, 1:]], dim=1)
    return ids, ref_mask


def random_targets(problem_type: str, batch_size: int, num_labels: int):
    if problem_type == "multi_label_classification":
        return (torch.rand(batch_size, num_labels) < 0.3).float()
    return torch.randint(0, num_labels, (batch_size,))


# Kernel tests run on CUDA where there is one, else in Triton's CPU interpreter (the root conftest sets
# TRITON_INTERPRET=1 on machines without CUDA); they need triton installed (the `test` extra pulls it in).
OP_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not ltc_fast.ops.triton_support.triton_available(),
                                  reason="triton is not installed")


def assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "",
                          scale: torch.Tensor | float | None = None):
    """max |actual - expected| <= tol * scale, with scale = max |expected| by default: relative to the
    tensor as a whole, so tiny entries cannot break it. Pass the scale of a whole gradient set for
    tensors whose gradient is zero in exact arithmetic (key biases, the head bias under softmax)."""
    scale = expected.abs().max() if scale is None else scale
    error = (actual - expected).abs().max()
    assert error <= tol * scale, f"{what}: max abs error {error:.3e} > {tol} * {float(scale):.3e}"


def logit_scale(model, expected: torch.Tensor) -> torch.Tensor:
    """The scale for comparing a model's logits: the largest |w . h| + |bias| the head can give for a
    LayerNorm'd hidden state (|h| = sqrt(H) with unit gain; Cauchy-Schwarz), or max |expected| if larger.
    fp32 rounding in a logit is relative to the terms summed into it, not to its value: with B=1, N=1 the
    only logit can be near 0 while its terms are not."""
    head = model.classifier
    hidden = head.weight.shape[-1]
    bound = head.weight.detach().norm() * hidden ** 0.5 + head.bias.detach().abs().max()
    return torch.maximum(expected.abs().max(), bound)


def assert_error_at_most_twice_torchs(op, inputs, grad, dtype):
    """The GPU accuracy rule. `op(*inputs, backend="torch")` on the inputs in fp64 is the oracle; then the
    Triton and the torch path run on the inputs in `dtype`, and each Triton error against the oracle (output,
    then the gradients of `inputs` for the upstream `grad`) must be at most twice the torch path's own: its
    RMS error, and its max error give or take one unit of the output's last place (both paths round once at
    the end; a different, equally exact summation order may round the other way). An fp32 oracle would equal
    the fp32 torch path exactly and leave the kernel no rounding of its own."""
    def output_and_gradients(tensors, backend):
        out = op(*tensors, backend=backend)
        return (out, *torch.autograd.grad(out, tensors, grad.to(out.dtype)))

    exact_values = output_and_gradients([t.detach().double().requires_grad_() for t in inputs], "torch")
    low = [t.detach().to(dtype).requires_grad_() for t in inputs]
    results = {backend: output_and_gradients(low, backend) for backend in ("torch", "triton")}
    for index, exact_value in enumerate(exact_values):
        ours, theirs = ((results[backend][index].double() - exact_value).abs() for backend in ("triton", "torch"))
        last_place = torch.finfo(dtype).eps * exact_value.abs().max()
        assert ours.max() <= 2 * theirs.max() + last_place, (index, "max", ours.max().item(), theirs.max().item())
        rms = lambda error: error.square().mean().sqrt()  # noqa: E731
        assert rms(ours) <= 2 * rms(theirs), (index, "rms", rms(ours).item(), rms(theirs).item())


def make_tiny_tokenizer():
    """An offline WordPiece tokenizer whose vocabulary is exactly VOCAB tokens."""
    words = ["happy", "sad", "angry", "calm", "the", "a", "is", "not", "very", "day", "food", "good", "bad",
             "joy", "fear", "love", "##s", "##ly", "##ness", "label"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    vocab += [f"w{i}" for i in range(VOCAB - len(vocab))]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    assert len(tokenizer) == VOCAB
    return tokenizer


def save_tiny_encoder(directory, arch: str = "bert"):
    """A tiny random encoder and the tiny tokenizer saved like a pretrained encoder (`from_pretrained`
    loads the directory as a plain encoder)."""
    from transformers import AutoModel

    AutoModel.from_config(encoder_config(arch)).save_pretrained(directory)
    make_tiny_tokenizer().save_pretrained(directory)
    return str(directory)
