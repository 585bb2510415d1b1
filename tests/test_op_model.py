"""The model on the Triton kernels (what `ops_backend="auto"` picks on CUDA; here forced onto them, in Triton's
interpreter on the CPU) equals the model on the plain-PyTorch twins: logits, loss and every gradient. And the
package works without triton."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import (OP_DEVICE, AccuracyRuleSamples, assert_relative_close, draws_for, encoder_config, fp64_copy,
                           label_names, logit_scale, needs_triton, random_targets, reference_and_ltc, text_batch)
from ltc_fast import AutoModelForTokenSequenceClassification, LtcConfig
from ltc_fast.ops import label_attention, label_embedding, label_head

ROOT = Path(__file__).resolve().parents[1]


def _run(model, text_ids, mask, targets):
    model.zero_grad(set_to_none=True)
    out = model(text_ids, attention_mask=mask, labels=targets)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@needs_triton
@pytest.mark.parametrize("arch", ["bert", "roberta"])  # padding_idx 0 and 1
def test_model_on_the_kernels_equals_the_model_on_the_twins(arch, monkeypatch, kernel_calls):
    model = reference_and_ltc(arch, 5)[1].to(OP_DEVICE)
    text_ids, mask = text_batch(3, 9, pad_id=model.config.encoder.pad_token_id)
    targets = random_targets("multi_label_classification", 3, 5)
    text_ids, mask, targets = (t.to(OP_DEVICE) for t in (text_ids, mask, targets))
    # The twin run is forced onto the plain-PyTorch ops: on CUDA "auto" would already take the kernels and
    # compare them with themselves.
    model.config.ops_backend = "torch"
    twin_logits, twin_grads = _run(model, text_ids, mask, targets)
    model.config.ops_backend = "auto"

    assert {"inject_label_embeddings_torch", "label_head_logits_torch"} <= set(kernel_calls)
    kernel_calls.clear()
    for module in (label_embedding, label_head):
        # "auto" (the model's default) takes the kernels as it does on CUDA
        monkeypatch.setattr(module, "triton_applies", lambda requested, *tensors: (True, ""))
    kernel_logits, kernel_grads = _run(model, text_ids, mask, targets)

    # the Triton ops, forward then backward, and neither of their twins
    assert [call for call in kernel_calls if call.startswith("ltc_fast::")] == [
        "ltc_fast::inject_label_embeddings", "ltc_fast::label_head",
        "ltc_fast::label_head_backward", "ltc_fast::inject_label_embeddings_label_grad"]
    assert not {"inject_label_embeddings_torch", "label_head_logits_torch"} & set(kernel_calls)
    assert_relative_close(kernel_logits, twin_logits, 1e-5, "logits", scale=logit_scale(model, twin_logits))
    assert set(kernel_grads) == set(twin_grads)
    scale = max(g.abs().max() for g in twin_grads.values())
    for name, grad in kernel_grads.items():
        expected = twin_grads[name]
        assert_relative_close(grad, expected, 1e-5, name, scale=torch.maximum(expected.abs().max(), scale * 1e-2))


@needs_triton
@pytest.mark.parametrize("arch", ["bert", "modernbert"])  # ModernBERT's local layers keep the twin (a window)
def test_decoupled_model_on_the_attention_kernel_follows_the_rule(arch, monkeypatch, kernel_calls):
    """label_attention='decoupled': every layer's label pass on the fused attention kernel (with the other two
    kernels), against the same model on the twins in fp32 and the twins in fp64 (the oracle): logits and every
    parameter's gradient under the accuracy rule."""
    config = LtcConfig(encoder=encoder_config(arch), label_names=label_names(5), label_attention="decoupled",
                       label_chunk_size=3)
    model = AutoModelForTokenSequenceClassification(config).eval().to(OP_DEVICE)
    for module in (label_embedding, label_head, label_attention):  # "auto" takes the kernels, as on CUDA
        monkeypatch.setattr(module, "triton_applies", lambda requested, *tensors: (True, ""))
    oracle = fp64_copy(model)
    oracle.config.ops_backend = model.config.ops_backend = "torch"
    samples = AccuracyRuleSamples()
    for _ in range(draws_for(3 * 5)):  # logits per draw
        text_ids, mask = text_batch(3, 9, pad_id=model.config.encoder.pad_token_id)
        targets = random_targets("multi_label_classification", 3, 5)
        text_ids, mask, targets = (t.to(OP_DEVICE) for t in (text_ids, mask, targets))
        model.config.ops_backend = "torch"
        twin = _run(model, text_ids, mask, targets)
        exact = _run(oracle, text_ids, mask, targets.double())
        model.config.ops_backend = "auto"
        kernel_calls.clear()
        kernel = _run(model, text_ids, mask, targets)
        samples.add("logits", kernel[0], twin[0], exact[0])
        for name, grad in kernel[1].items():
            samples.add("gradients", grad, twin[1][name], exact[1][name], part=name)
    samples.check(torch.float32)

    label_passes = 2 * model.config.encoder.num_hidden_layers  # two chunks of labels
    if arch == "modernbert":  # its local layers run the twin
        label_passes -= 2 * sum(kind == "sliding_attention" for kind in model.config.encoder.layer_types)
    assert kernel_calls.count("ltc_fast::label_attention") == label_passes > 0
    assert kernel_calls.count("ltc_fast::label_attention_backward") == label_passes
    assert "labels_attend_text_torch" not in kernel_calls or arch == "modernbert"


def test_the_package_works_without_triton():
    """triton is optional: with it unimportable, `import ltc_fast` works and the model runs on the twins."""
    script = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch, ltc_fast\n"
        "from ltc_fast.ops.triton_support import triton_available\n"
        "assert not triton_available()\n"
        "words, labels = torch.randn(10, 8), torch.randn(2, 8)\n"
        "out = ltc_fast.ops.inject_label_embeddings(torch.randint(0, 10, (2, 4)), words, labels)\n"
        "logits = ltc_fast.ops.label_head_logits(out, torch.randn(1, 8), torch.randn(1), 2)\n"
        "print(tuple(logits.shape))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "(2, 2)"
