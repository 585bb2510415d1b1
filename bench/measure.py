"""Measurements shared by the benches: peak memory, FLOPs of a step, the bf16 matmul peak."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory over a `with` block, in MiB: `torch.cuda.max_memory_allocated` on CUDA; on the CPU the
    peak resident set size above the level at entry, sampled every millisecond by a thread."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = 0.0

    @staticmethod
    def _rss_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        gc.collect()  # earlier benches' models must not count against this one
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            # Hand memory freed by earlier benches back to the OS, so RSS growth is this bench's own.
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            self._base = self._peak = self._rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._rss_bytes())
            peak -= self._base
        self.peak_mib = peak / 2**20
        return False


class LiveTensorBytes(TorchDispatchMode):
    """The peak of the bytes held by live tensor storages over a `with` block: a device-independent memory
    figure, the least a caching allocator (`torch.cuda.max_memory_allocated`) would report for the same ops,
    before its rounding and any kernel workspace. `tracked` tensors (the model's weights, the batch) count
    from the start; every op's outputs count from when they are made until their storage is freed. What a
    custom op allocates inside itself and frees before returning is not seen."""

    def __init__(self, tracked=()):
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}  # storage address -> (weak ref, bytes)
        self.current = self.peak = 0
        for tensor in tracked:
            self._add(tensor)

    def _add(self, tensor) -> None:
        # Fake tensors hold no memory: torch.compile's caches keep some alive, and a caller's `tracked` list
        # gathered from the garbage collector can hold them
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta" or is_fake(tensor):
            return
        storage = tensor.untyped_storage()
        size, address = storage.nbytes(), storage.data_ptr()
        known = self._live.get(address)
        if size == 0 or (known is not None and not known[0].expired()):
            return
        if known is not None:  # freed within the last op and its address reused
            self.current -= known[1]
        self._live[address] = (StorageWeakRef(storage), size)
        self.current += size
        self.peak = max(self.peak, self.current)

    def _drop_freed(self) -> None:
        for address, (ref, size) in list(self._live.items()):
            if ref.expired():
                del self._live[address]
                self.current -= size

    def __exit__(self, *exc):
        self._drop_freed()  # `current` is then what outlives the block
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._drop_freed()
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            self._add(tensor)
        return out


def count_flops(step) -> int:
    """Floating-point operations of one call of `step` (matmuls and attention, as PyTorch counts them)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def bf16_matmul_peak_flops(device: torch.device, size: int = 8192, repeats: int = 20) -> float | None:
    """The achieved bf16 matrix-multiply rate on this device, the denominator of MFU (GPU only)."""
    if device.type != "cuda":
        return None
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def copy_bandwidth_gbps(device: torch.device, megabytes: int = 512, repeats: int = 20) -> float:
    """Achieved bandwidth of a plain device-to-device copy (bytes read + written per second, in GB/s): the
    ceiling that memory-bound ops are measured against."""
    numel = megabytes * 2**20 // 4
    src = torch.empty(numel, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    synchronize(device)
    return 2 * src.numel() * src.element_size() * repeats / (time.perf_counter() - start) / 1e9


def bytes_of(*tensors: torch.Tensor) -> int:
    """Bytes held by `tensors`: an op's minimum memory traffic is the bytes it must read plus write."""
    return sum(t.numel() * t.element_size() for t in tensors)
