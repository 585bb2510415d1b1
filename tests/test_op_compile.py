"""Both Triton ops are `torch.library` custom ops: `torch.compile(fullgraph=True)` traces a function that calls
them (forward and backward) without a graph break, and the compiled function computes what eager does."""

import pytest
import torch

from tests.helpers import OP_DEVICE, assert_relative_close, needs_triton
from ltc_fast.ops import inject_label_embeddings, label_head_logits

VOCAB, NUM_LABELS, WIDTH = 23, 3, 40


def _embed_then_project(text_ids, words, labels, weight, bias, dropout_p):
    """The model's use of the two ops around a stand-in encoder."""
    embedded = inject_label_embeddings(text_ids, words, labels, 0, backend="triton")
    encoded = torch.tanh(embedded)
    return label_head_logits(encoded, weight, bias, NUM_LABELS, dropout_p, dropout_p > 0, backend="triton")


def _parameters(device):
    shapes = [(VOCAB, WIDTH), (NUM_LABELS, WIDTH), (1, WIDTH), (1,)]
    return [torch.randn(shape, device=device, requires_grad=True) for shape in shapes]


def _compare_compiled_with_eager(compile_backend, device, dropout_p, seed):
    params = _parameters(device)
    text_ids = torch.randint(0, VOCAB, (3, 7), device=device)
    compiled = torch.compile(_embed_then_project, fullgraph=True, backend=compile_backend)
    results = []
    for function in (_embed_then_project, compiled):
        torch.manual_seed(seed)  # the same dropout seed for both
        logits = function(text_ids, *params, dropout_p)
        results.append((logits, *torch.autograd.grad(logits.square().sum(), params)))
    for what, eager, traced in zip(("logits", "words", "labels", "weight", "bias"), *results):
        assert_relative_close(traced, eager, 1e-5, what)


@needs_triton
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_both_ops_compile_without_graph_breaks(dropout_p, fresh_seed):
    torch._dynamo.reset()
    _compare_compiled_with_eager("aot_eager", OP_DEVICE, dropout_p, fresh_seed)


@pytest.mark.gpu
@needs_triton
def test_both_ops_compile_with_inductor_on_cuda(fresh_seed):
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    # Inductor's own RNG would draw another dropout seed than eager; fall back to torch's to compare.
    with inductor_config.patch(fallback_random=True):
        _compare_compiled_with_eager("inductor", "cuda", 0.1, fresh_seed)
