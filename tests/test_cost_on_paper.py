"""`bench/cost_on_paper.py`: the machine-independent cost of a step (FLOPs, encoder rows, simulated memory)."""

import pytest
import torch
from transformers import RobertaConfig, RobertaModel

from bench.cost_on_paper import RowCounter, extrapolate, measure_step
from bench.measure import LiveTensorBytes
from bench.workloads import WORKLOADS

MIB = 2**20


def test_live_tensor_bytes_follow_allocations_and_frees():
    weights = torch.zeros(MIB // 4)  # 1 MiB, counted from the start
    with LiveTensorBytes([weights]) as memory:
        first = weights + 1  # 2 MiB live
        second = first * 2  # 3 MiB
        del first
        third = second - 1  # `first` freed first: 3 MiB again, not 4
        del second, third
    assert memory.peak == 3 * MIB
    assert memory.current == MIB  # what outlives the block: the weights


def test_live_tensor_bytes_see_the_backward_and_the_optimizer():
    layer = torch.nn.Linear(256, 256, bias=False)  # 256 KiB of weights
    optimizer = torch.optim.AdamW(layer.parameters())
    with LiveTensorBytes(list(layer.parameters())) as memory:
        layer(torch.ones(4, 256)).sum().backward()  # + the weight's gradient
        optimizer.step()  # + AdamW's two states
    assert memory.peak >= 4 * 256 * 256 * 4


@pytest.mark.slow
def test_the_packed_paths_flops_follow_its_tokens():
    """The cost a packed batch removes is the padding: its FLOP ratio to the padded batch equals the ratio of the
    rows its encoder computes (real tokens only) within 5% (attention's share grows with the square of each
    length, the rest linearly). One roberta-base layer, W1's texts (GoEmotions lengths, 28 labels)."""
    workload = WORKLOADS["W1"]
    lengths = workload.text_lengths(torch.Generator().manual_seed(1))
    padded, packed = (measure_step(contender, workload, "infer", 1, lengths, seed=1)
                      for contender in ("ltc_fast", "ltc_fast-packed"))
    assert packed["encoder_rows"] == sum(lengths) + workload.num_labels * len(lengths)  # no padding at all
    assert padded["encoder_rows"] == len(lengths) * (max(lengths) + workload.num_labels)
    rows_ratio = packed["encoder_rows"] / padded["encoder_rows"]
    assert packed["flops"] / padded["flops"] == pytest.approx(rows_ratio, rel=0.05)
    assert rows_ratio < 0.8  # GoEmotions' lengths vary: there is padding to remove


def test_row_counter_counts_every_call_of_the_first_layer():
    model = RobertaModel(RobertaConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=16)).eval()
    counter = RowCounter(model)
    with torch.no_grad():
        model(torch.ones(3, 5, dtype=torch.long))
        model(torch.ones(1, 4, dtype=torch.long))
    counter.remove()
    assert counter.rows == 3 * 5 + 4


def test_extrapolation_is_linear_in_layers():
    assert extrapolate({"flops": 10, "peak_bytes": 100}, {"flops": 16, "peak_bytes": 130}, 12) == {
        "flops": 10 + 11 * 6, "peak_bytes": 100 + 11 * 30}
