"""Test helpers shared by the test modules (import them from here, not from conftest): tiny random encoders of
every supported architecture, a tiny offline tokenizer, padded batches, the reference / ltc_fast pair on the
same weights, and the comparisons (relative closeness, the accuracy rule against an fp64 oracle)."""

from __future__ import annotations

import copy
import os
import zlib

import numpy as np
import pytest
import torch
from transformers import (BertConfig, BertTokenizerFast, DebertaV2Config, DistilBertConfig, ElectraConfig,
                          ModernBertConfig, RobertaConfig, XLMRobertaConfig)

import ltc_fast
from ltc_fast import encoders
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
    # Rotary positions; global attention in layers 0 and 2, local in layer 1 with a window of 3 positions either
    # side (local_attention=6), narrower than the test batches, so the window decides what a token sees.
    "modernbert": lambda: ModernBertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=3,
                                           num_attention_heads=2, intermediate_size=37, pad_token_id=0,
                                           global_attn_every_n_layers=2, local_attention=6,
                                           max_position_embeddings=128, cls_token_id=2, sep_token_id=3,
                                           bos_token_id=2, eos_token_id=3),
}
ARCHITECTURES = list(ENCODER_CONFIGS)


def encoder_config(arch: str, **overrides):
    config = ENCODER_CONFIGS[arch]()
    for key, value in overrides.items():
        if key == "num_hidden_layers":
            encoders.set_num_layers(config, value)  # ModernBERT's per-layer attention types follow
        else:
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


# ------------------------------------------------------------------------------------------ the accuracy rule
# The one numeric comparison of a path under test with its reference, on the CPU and the GPU alike. Measured on
# the parity cases (tests/test_parity.py, many seeds): ltc_fast's fp32 error is the reference's own, per value
# kind, to within a few percent in RMS; what breaks "twice" is chance, when a comparison holds a handful of
# values (a lone logit, a scalar loss, a max decided by three products): two equally exact paths, one value
# each, fail "twice" about one time in four. So tests pool a comparison over draws of fresh inputs until it
# holds at least RULE_VALUES values, and compare a model's gradients as the one vector they form (where some
# are 0 in exact arithmetic: attention key biases, the head bias under softmax), over GRADIENT_DRAWS draws.
RULE_VALUES = 64
GRADIENT_DRAWS = 4

# For a path in fp64 torch has no more precise dtype: its oracle is computed in numpy's extended precision
# (np.longdouble: 64 significant bits on x86-64 Linux, 113 on aarch64 Linux; where it is plain double, the rule
# tests of fp64 paths skip). Torch's fp64 result is then the plain path.
EXTENDED = np.finfo(np.longdouble).eps < torch.finfo(torch.float64).eps
FLOAT_DTYPES = [pytest.param(torch.float64, marks=pytest.mark.skipif(
    not EXTENDED, reason="np.longdouble is no wider than float64 here: no oracle for fp64")), torch.float32]


def assert_within_accuracy_rule(actual: torch.Tensor, plain: torch.Tensor, exact: torch.Tensor, what: str = "",
                                dtype: torch.dtype | None = None):
    """The accuracy rule. `exact` is the oracle: the reference computation in fp64 on the same inputs and
    weights (for an fp64 path, in extended precision, rounded to fp64). `plain` is the plain-PyTorch reference
    path at the precision of `actual`, the path under test. Against the oracle, the error of `actual` may be at
    most twice that of `plain`, plus one unit in the last place, in both statistics:

        max |actual - exact|  <=  2 max |plain - exact|  +  (eps + eps64) max |exact|
        rms(actual - exact)   <=  2 rms(plain - exact)   +  (eps + eps64) rms(exact)

    eps is `torch.finfo(dtype).eps` (`dtype`: `actual.dtype` unless given); eps64, fp64's, is the oracle's own
    last place (it is an fp64 tensor): nothing beside eps for a path in fp32 or lower, as much as eps for one
    in fp64.

    No tolerance is chosen by hand: a path may lose what plain PyTorch loses on the same problem, so a value that
    cancels (a lone logit near 0, a `p - y` gradient, one that is 0 in exact arithmetic) is judged by the
    rounding of the terms summed into it, as plain PyTorch rounds them. The last-place term is there because
    both paths round at least once at the end and an equally exact order may round the other way: where the
    plain path happens to be exact (an elementwise op on exact inputs) twice 0 would leave the path no rounding
    of its own. For the RMS it is the RMS of each value's own last place (a final rounding moves a value by at
    most eps |value|): eps max |exact| would drown the RMS of values that span orders of magnitude (a model's
    gradient, largest in the head). The RMS catches a path that is worse everywhere while its worst value
    still passes.

    Where the oracle is not finite (an infinite logit), `actual` must give the same value (NaN for NaN); the
    errors are over the finite entries, where `plain` must be finite too (an infinite plain error is a bound
    that cannot fail). Compare enough values for a max to mean something: see RULE_VALUES.
    """
    dtype = actual.dtype if dtype is None else dtype
    label = what or "value"
    actual, plain, exact = (t.detach().to(torch.float64) for t in (actual, plain, exact))
    assert actual.shape == plain.shape == exact.shape, \
        f"{label}: shapes differ: actual {tuple(actual.shape)}, plain {tuple(plain.shape)}, exact {tuple(exact.shape)}"
    finite = torch.isfinite(exact)
    if not finite.all():
        same = torch.isclose(actual[~finite], exact[~finite], rtol=0, atol=0, equal_nan=True)
        assert same.all(), \
            f"{label}: where the fp64 oracle gives {exact[~finite].tolist()}, the path gives {actual[~finite].tolist()}"
        actual, plain, exact = actual[finite], plain[finite], exact[finite]
    if exact.numel() == 0:
        return
    assert torch.isfinite(plain).all(), f"{label}: the plain path is not finite where the fp64 oracle is"
    eps = torch.finfo(dtype).eps + torch.finfo(torch.float64).eps
    ours, theirs = actual - exact, plain - exact
    for statistic, summary in (("max", lambda v: v.abs().max()), ("rms", lambda v: v.square().mean().sqrt())):
        error, plain_error, last_place = summary(ours), summary(theirs), eps * summary(exact)
        bound = 2 * plain_error + last_place
        assert error <= bound, (
            f"{label}: {statistic} error against fp64 {float(error):.4g} > bound {float(bound):.4g} "
            f"(2 x the plain path's {float(plain_error):.4g} + {dtype} and fp64 last places {float(last_place):.4g}; "
            f"{exact.numel()} values)")


def extended(tensor: torch.Tensor) -> np.ndarray:
    """`tensor` in np.longdouble (exact: every float64 is one)."""
    return tensor.detach().double().cpu().numpy().astype(np.longdouble)


def from_extended(array) -> torch.Tensor:
    """An np.longdouble result rounded to an fp64 tensor (half a unit in its last place: the rule's eps64)."""
    return torch.from_numpy(np.asarray(array, dtype=np.float64))


def draws_for(values_per_draw: int, at_least: int = 1) -> int:
    """How many draws of a comparison of `values_per_draw` values pool RULE_VALUES values (at least `at_least`)."""
    return max(at_least, -(-RULE_VALUES // max(values_per_draw, 1)))


class AccuracyRuleSamples:
    """Triples (actual, plain, exact) gathered under a name over draws (and over the tensors of a gradient),
    then held to the rule pooled, one comparison per name: `add(what, actual, plain, exact, part=...)`, then
    `check()`. A failure also names the part whose max error is the largest multiple of its plain path's."""

    def __init__(self):
        self.samples: dict[str, list] = {}

    def add(self, what: str, actual: torch.Tensor, plain: torch.Tensor, exact: torch.Tensor, part: str = ""):
        assert actual.shape == plain.shape == exact.shape, \
            f"{what} {part}: shapes {tuple(actual.shape)}, {tuple(plain.shape)}, {tuple(exact.shape)}"
        self.samples.setdefault(what, []).append((part, *(t.detach().flatten() for t in (actual, plain, exact))))

    def check(self, dtype: torch.dtype | None = None):
        assert self.samples, "nothing was compared"
        for what, triples in self.samples.items():
            actual, plain, exact = (torch.cat(column) for column in list(zip(*triples))[1:])
            try:
                assert_within_accuracy_rule(actual, plain, exact, what, dtype)
            except AssertionError as failure:
                raise AssertionError(f"{failure}; worst part: {self._worst(triples)}") from None

    @staticmethod
    def _worst(triples) -> str:
        def max_errors(triple):
            actual, plain, exact = (t.double() for t in triple[1:])
            finite = torch.isfinite(exact)
            if not finite.any():
                return 0.0, 0.0
            return (float((actual - exact)[finite].abs().max()), float((plain - exact)[finite].abs().max()))

        def excess(triple):
            ours, theirs = max_errors(triple)
            return ours / (2 * theirs) if theirs else float("inf") if ours else 0.0

        worst = max(triples, key=excess)
        ours, theirs = max_errors(worst)
        return f"{worst[0] or '(unnamed)'}: max error {ours:.4g}, the plain path's {theirs:.4g}"


def fp64_copy(module: torch.nn.Module) -> torch.nn.Module:
    """The oracle: a float64 copy of a module, its weights those of `module` exactly."""
    return copy.deepcopy(module).double()


def reference_outputs_fp64(oracle: ReferenceLabelTokenModel, input_ids, attention_mask=None, labels=None) -> dict:
    """The reference's outputs in fp64 from its fp64 copy. The loss is the reference's, computed from the fp64
    logits here: its forward casts the targets with `labels.float()`, and BCE of fp64 logits against fp32
    targets is computed, and rounded, in fp32."""
    out = oracle(input_ids, attention_mask)
    if labels is not None:
        if oracle.problem_type == "multi_label_classification":
            out["loss"] = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], labels.double())
        else:
            out["loss"] = torch.nn.functional.cross_entropy(out["logits"], labels)
    return out


def check_over_draws(values_per_draw: int, draw, at_least: int = 1):
    """The accuracy rule on what `draw(samples)` adds to an AccuracyRuleSamples (fresh inputs each call), over
    enough draws to pool RULE_VALUES values."""
    samples = AccuracyRuleSamples()
    for _ in range(draws_for(values_per_draw, at_least)):
        draw(samples)
    samples.check()


def assert_logits_follow_the_rule(model, reference, batch_size: int = 3, max_len: int = 8):
    """ltc_fast `model` against the `reference` model on the same weights, eval, over draws of padded text
    batches (the reference gets its own format): the accuracy rule on the logits, the reference in fp64 the
    oracle and in fp32 the plain path. On the models' device."""
    oracle = fp64_copy(reference)
    num_labels = model.num_labels
    device = next(model.parameters()).device

    def draw(samples):
        text_ids, mask = text_batch(batch_size, max_len, pad_id=model.config.encoder.pad_token_id)
        ref_ids, ref_mask = reference_format(text_ids, mask, num_labels)
        text_ids, mask, ref_ids, ref_mask = (t.to(device) for t in (text_ids, mask, ref_ids, ref_mask))
        with torch.no_grad():
            samples.add("logits", model(text_ids, mask).logits, reference(ref_ids, ref_mask)["logits"],
                        oracle(ref_ids, ref_mask)["logits"])

    check_over_draws(batch_size * num_labels, draw)


def assert_error_at_most_twice_torchs(op, inputs, grad, dtype):
    """The accuracy rule (`assert_within_accuracy_rule`) for an op: `op(*inputs, backend="torch")` on the inputs
    in fp64 is the oracle; then the Triton and the torch path run on the inputs in `dtype`, and each Triton
    result (output, then the gradients of `inputs` for the upstream `grad`) is held to the rule with the torch
    path's as the plain one. An fp32 oracle would equal the fp32 torch path exactly and leave the kernel no
    rounding of its own."""
    def output_and_gradients(tensors, backend):
        out = op(*tensors, backend=backend)
        return (out, *torch.autograd.grad(out, tensors, grad.to(out.dtype)))

    exact_values = output_and_gradients([t.detach().double().requires_grad_() for t in inputs], "torch")
    low = [t.detach().to(dtype).requires_grad_() for t in inputs]
    results = {backend: output_and_gradients(low, backend) for backend in ("torch", "triton")}
    names = ["output"] + [f"gradient of input {i}" for i in range(len(inputs))]
    for name, ours, theirs, exact_value in zip(names, results["triton"], results["torch"], exact_values):
        assert_within_accuracy_rule(ours, theirs, exact_value, f"triton {name}", dtype=dtype)


def chosen_seed(test_id: str) -> int:
    """The seed conftest's `fresh_seed` gives a test (fixed: a hash of its id; LTC_FAST_TEST_SEED=random draws a
    fresh one, LTC_FAST_TEST_SEED=<int> replays one), for what seeds itself outside a test (a module fixture)."""
    chosen = os.environ.get("LTC_FAST_TEST_SEED", "").strip()
    if chosen == "random":
        return int.from_bytes(os.urandom(4), "little")
    return int(chosen) if chosen else zlib.crc32(test_id.encode())


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


def trainer_args(output_dir, **overrides):
    """`TrainingArguments` for the tests' tiny Trainer runs: CPU, seed 0, no saving, a log every step."""
    from transformers import TrainingArguments

    base = dict(output_dir=str(output_dir), report_to=[], save_strategy="no", use_cpu=True, seed=0,
                disable_tqdm=True, logging_steps=1, remove_unused_columns=False)
    return TrainingArguments(**{**base, **overrides})


def accumulated_and_big_batch_steps(initial, examples, collator, tmp_path, update_of) -> list[tuple]:
    """One optimiser step of copies of `initial` on 3 examples, two ways: micro-batches of 2 and 1 with
    gradient_accumulation_steps=2, then one batch of 3 (plain SGD, lr 1, no clipping, so the update is the
    gradient). Returns `[(logged loss, update_of(initial, trained)), ...]`, the accumulated run first."""
    from transformers import Trainer

    results = []
    for batch_size, accumulation in ((2, 2), (3, 1)):
        model = copy.deepcopy(initial)
        args = trainer_args(tmp_path / f"b{batch_size}", max_steps=1, per_device_train_batch_size=batch_size,
                            gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=1.0,
                            lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0)
        trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator)
        trainer.train()
        loss = next(log["loss"] for log in trainer.state.log_history if "loss" in log)
        results.append((loss, update_of(initial, model)))
    return results
