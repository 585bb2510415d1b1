"""`torch.compile(model, fullgraph=True)`: the whole padded forward traces as one graph (no graph break, no host
sync), so compiled and CUDA-graph execution can remove the launch overhead that dominates small batches on a GPU
(docs/benchmarks.md). `backend="aot_eager"` also traces the backward. The packed layout is not one graph yet: it
reads the batch's offsets on the host (the xfail below fails, strictly, the day it becomes one)."""

import pytest
import torch

from ltc_fast import AutoModelForTokenSequenceClassification, LtcConfig
from tests.helpers import encoder_config, label_names, random_targets, text_batch

LAYOUTS = {
    "padded": {"sequence_packing": "padded"},
    "shared positions": {"sequence_packing": "padded", "label_positions": "shared"},
    # Not yet one graph: packing reads the batch's offsets back to the host (its one sync) and slices with them.
    "packed": pytest.param({"sequence_packing": "packed"}, marks=pytest.mark.xfail(
        strict=True, raises=torch._dynamo.exc.Unsupported, reason="packing reads its offsets on the host")),
}


def _model(**options):
    return AutoModelForTokenSequenceClassification(LtcConfig(encoder=encoder_config("bert"), label_names=label_names(5),
                                                             **options))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("options", list(LAYOUTS.values()), ids=list(LAYOUTS))
def test_the_inference_forward_is_one_graph(options):
    model = _model(**options)
    model.eval()
    ids, mask = text_batch(3, 9, pad_id=0)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=0)


@pytest.mark.slow
def test_a_training_step_is_one_graph_forward_and_backward():
    model = _model(sequence_packing="padded")
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
    model = _model(sequence_packing="padded", label_head_dropout=0.1)
    model.train()
    ids, mask = text_batch(3, 9, pad_id=0)
    labels = random_targets("multi_label_classification", 3, 5)
    loss = torch.compile(model, fullgraph=True, backend="aot_eager")(input_ids=ids, attention_mask=mask,
                                                                   labels=labels).loss
    loss.backward()
    assert loss.isfinite() and all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.slow
def test_auto_stays_padded_under_compile_where_it_would_pack(monkeypatch):
    """`sequence_packing="auto"` packs where a fused varlen kernel runs (on a GPU); the packed layout reads its
    offsets on the host, so under torch.compile auto runs padded and the forward stays one graph. The CPU here
    plays a GPU: a stand-in varlen kernel (per-sequence SDPA) that records its calls."""
    from ltc_fast import attention

    packed_calls = []

    def varlen_stand_in(q, k, v, cu_q, cu_k, max_q, max_k, scale):  # [total, heads, d]
        packed_calls.append(1)
        bounds = cu_q.tolist()
        return torch.cat([torch.nn.functional.scaled_dot_product_attention(
            *(t[a:b].transpose(0, 1) for t in (q, k, v)), scale=scale).transpose(0, 1)
            for a, b in zip(bounds[:-1], bounds[1:])])

    monkeypatch.setattr(attention, "fused_varlen_runs", lambda *args: True)
    monkeypatch.setattr(attention, "torch_varlen_attn", lambda: varlen_stand_in)
    model = _model(sequence_packing="auto")
    model.eval()
    ids, mask = text_batch(3, 9, pad_id=0)
    with torch.no_grad():
        eager = model(input_ids=ids, attention_mask=mask).logits
        assert packed_calls, "eager auto packs here"
        packed_calls.clear()
        compiled = torch.compile(model, fullgraph=True, backend="eager")(input_ids=ids, attention_mask=mask).logits
    assert not packed_calls
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
