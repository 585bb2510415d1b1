"""Host synchronisations per forward: reading a device tensor's value on the host (`.item()`, `.tolist()`,
`bool()`, `int()`, `nonzero()`, boolean-mask indexing, ...) stalls the GPU stream until everything queued
before it has run, so the CPU cannot launch ahead. The counts are pinned here, on the CPU, by counting those
calls during a forward (and backward), so that they cannot creep back:

- padded training (forward + backward): none without input checks, one with them (all of input_ids' and
  labels' values read in one go);
- packed inference: one without input checks (the packing's offsets: the packed sizes and the longest
  sequence are data), one more with them;
- decoupled attention: none per label chunk.
On a GPU, the same is checked with CUDA's own sync detector (`torch.cuda.set_sync_debug_mode`).
"""

import collections
import contextlib
import traceback
import warnings

import pytest
import torch

import ltc_fast
from tests.helpers import encoder_config, label_names, random_targets, text_batch

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "unique", "masked_select")


@contextlib.contextmanager
def counting_host_reads():
    """Counter of the calls that read tensor values back to the host, keyed by (method, where)."""
    counts = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS + ("__getitem__",)}

    def caller():
        frame = traceback.extract_stack(limit=4)[0]
        return f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}"

    def counted(name):
        def read(self, *args, **kwargs):
            counts[name, caller()] += 1
            return originals[name](self, *args, **kwargs)
        return read

    def getitem(self, index):  # a boolean-mask index has a data-dependent size: a host read
        masks = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in masks):
            counts["bool-mask index", caller()] += 1
        return originals["__getitem__"](self, index)

    try:
        for name in READS:
            setattr(torch.Tensor, name, counted(name))
        torch.Tensor.__getitem__ = getitem
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _model(check_inputs, **options):
    config = ltc_fast.LtcConfig(encoder=encoder_config("bert"), label_names=label_names(5),
                                check_inputs=check_inputs, **options)
    return ltc_fast.AutoModelForTokenSequenceClassification(config)


def _count(step) -> collections.Counter:
    with counting_host_reads() as counts:
        step()
    return counts


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "single_label_classification"])
@pytest.mark.parametrize("check_inputs,expected", [(False, 0), (True, 1)])
def test_padded_training_step(check_inputs, expected, problem_type):
    model = _model(check_inputs, sequence_packing="padded", problem_type=problem_type).train()
    ids, mask = text_batch(3, 9, pad_id=0)
    labels = random_targets(problem_type, 3, 5)
    counts = _count(lambda: model(ids, mask, labels=labels).loss.backward())
    assert sum(counts.values()) == expected, counts


@pytest.mark.parametrize("check_inputs,expected", [(False, 1), (True, 2)])
def test_packed_inference(check_inputs, expected):
    model = _model(check_inputs, sequence_packing="packed").eval()
    ids, mask = text_batch(3, 9, pad_id=0)
    with torch.no_grad():
        counts = _count(lambda: model(ids, mask))
    assert sum(counts.values()) == expected, counts


def test_decoupled_label_chunks_read_nothing():
    ids, mask = text_batch(3, 9, pad_id=0)
    totals = []
    for chunk_size in (5, 2, 1):  # 1, 3 and 5 chunks
        model = _model(False, label_positions="shared", label_attention="decoupled",
                       label_chunk_size=chunk_size).eval()
        with torch.no_grad():
            totals.append(sum(_count(lambda: model(ids, mask)).values()))
    assert totals == [0, 0, 0]


def test_the_counter_sees_every_kind_of_read():
    """The counter itself: a test that cannot fail is no test."""
    x = torch.arange(4)
    counts = _count(lambda: (x.sum().item(), x.tolist(), bool(x.any()), x.nonzero(), x[x > 1], int(x[0])))
    assert {name for name, _ in counts} == {"item", "tolist", "__bool__", "nonzero", "bool-mask index", "__int__"}


def test_input_checks_still_catch_bad_values():
    model = _model(True).eval()
    ids, mask = text_batch(2, 6, pad_id=0)
    with pytest.raises(ValueError, match=r"input_ids must be token ids in \[0, 101\), got values from -3"):
        model(ids.index_fill(1, torch.tensor([2]), -3), mask)
    with pytest.raises(ValueError, match=r"labels for multi_label_classification must lie in \[0, 1\]"):
        model(ids, mask, labels=torch.full((2, 5), 2.0))


def test_without_input_checks_a_bad_id_is_not_read_but_still_fails_on_the_twin():
    model = _model(False, ops_backend="torch").eval()
    ids, mask = text_batch(2, 6, pad_id=0)
    with pytest.raises(IndexError):  # the CPU embedding refuses it; nothing was read back to check it first
        model(ids.index_fill(1, torch.tensor([2]), 500), mask)


@pytest.mark.gpu
@pytest.mark.parametrize("packing,expected", [("padded", 0), ("packed", 1)])
def test_cuda_sync_detector_agrees(packing, expected):
    model = _model(False, sequence_packing=packing).cuda().train()
    ids, mask = (t.cuda() for t in text_batch(3, 9, pad_id=0))
    labels = random_targets("multi_label_classification", 3, 5).cuda()
    model(ids, mask, labels=labels).loss.backward()  # warm-up: lazy initialisation may synchronise once
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            model(ids, mask, labels=labels).loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # Only torch's per-sync warning counts: the first call of set_sync_debug_mode also warns that the mode is a
    # prototype ("... does not yet detect all synchronizing operations"), which is not a sync.
    syncs = [w for w in caught if "called a synchronizing cuda operation" in str(w.message).lower()]
    assert len(syncs) == expected, [str(w.message) for w in syncs]
