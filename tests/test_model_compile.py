"""`torch.compile(model, fullgraph=True)`: the whole forward traces as one graph (no graph break, no host sync),
padded and packed, so compiled and CUDA-graph execution can remove the launch overhead that dominates small
batches on a GPU (docs/benchmarks.md). `backend="aot_eager"` also traces the backward."""

import pytest
import torch

from tests.helpers import random_targets, reference_and_ltc, text_batch

LAYOUTS = {
    "padded": {"sequence_packing": "padded"},
    "packed": {"sequence_packing": "packed"},
    "shared positions": {"sequence_packing": "padded", "label_positions": "shared"},
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_inference_forward_is_one_graph(layout):
    _, model = reference_and_ltc("bert", 5, **LAYOUTS[layout])
    model.eval()
    ids, mask = text_batch(3, 9, pad_id=0)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_a_training_step_is_one_graph_forward_and_backward(layout):
    _, model = reference_and_ltc("bert", 5, **LAYOUTS[layout])
    model.eval()  # no dropout: the compiled and the eager step must draw nothing random (gradients still flow)
    ids, mask = text_batch(3, 9, pad_id=0)
    labels = random_targets("multi_label_classification", 3, 5)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss = compiled(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for got, want in zip(compiled_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_training_with_dropout_is_one_graph():
    _, model = reference_and_ltc("bert", 5, sequence_packing="padded", label_head_dropout=0.1)
    model.train()
    ids, mask = text_batch(3, 9, pad_id=0)
    labels = random_targets("multi_label_classification", 3, 5)
    loss = torch.compile(model, fullgraph=True, backend="aot_eager")(input_ids=ids, attention_mask=mask,
                                                                   labels=labels).loss
    loss.backward()
    assert loss.isfinite() and all(p.grad is not None for p in model.parameters() if p.requires_grad)
