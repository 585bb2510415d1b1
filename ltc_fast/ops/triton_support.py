"""Triton as an optional dependency: the guarded import and when an op's Triton kernel may run.

`import ltc_fast` works without triton; kernels are then simply unavailable and every op runs its
plain-PyTorch twin. Triton kernels run on CUDA tensors, and on CPU tensors only under Triton's interpreter
(`TRITON_INTERPRET=1`, set before triton is imported), which the tests use to check the kernels on the CPU.
"""

from __future__ import annotations

import contextlib

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the package works without it: every op falls back to its twin
    triton = None
    tl = None

TRITON = "triton"  # the fast backend of the ops whose kernels are Triton (their FAST_BACKEND)


def triton_available() -> bool:
    return triton is not None


# Read once, at import: `triton.jit` decided then, when ltc_fast's kernels were defined, whether they are
# interpreted (and torch.compile cannot trace triton's own environment lookup).
_INTERPRETING = triton is not None and bool(triton.knobs.runtime.interpret)


def interpreting() -> bool:
    """Whether ltc_fast's Triton kernels run in Triton's CPU interpreter."""
    return _INTERPRETING


def _interpreter_iterates_runtime_ints() -> None:
    """Let `for i in range(0, n, BLOCK)` over a runtime int `n` run in Triton's interpreter with numpy >= 2.4.

    The interpreter holds a scalar argument as a one-element array and converts it with `int(array)`, which
    numpy 2.4 refuses for arrays of one dimension. Compiled kernels want exactly such loops: Triton pipelines
    `for` loops (their loads issued stages ahead), not `while` loops. The interpreter's conversion is wrapped to
    read the one element; nothing else changes, and a Triton whose interpreter lacks the hook is left alone.
    """
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "ltc_fast_wrapped", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor.ltc_fast_wrapped = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if _INTERPRETING:
    _interpreter_iterates_runtime_ints()


_SEED_BOUND = 2**31 - 1  # seeds stay int32 so Triton passes them as plain scalars


def draw_dropout_seed() -> torch.Tensor:
    """A kernel's dropout seed, drawn from torch's default generator (a CPU int64 scalar tensor), so that
    `torch.manual_seed` reproduces a run."""
    return torch.randint(_SEED_BOUND, (), dtype=torch.int64)


def triton_applies(requested: str | None, *tensors: torch.Tensor) -> tuple[bool, str]:
    """`(applies, why_not)` for `dispatch.resolve_backend`: Triton applies to CUDA tensors when triton is
    installed; CPU tensors go to the interpreter only when the caller asked for `backend="triton"`, so
    `"auto"` keeps the twin on the CPU."""
    if triton is None:
        return False, "triton is not installed (pip install 'ltc-fast[triton]')"
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"}:
        return True, ""
    if devices == {"cpu"} and interpreting() and requested == TRITON:
        return True, ""
    if devices == {"cpu"}:
        return False, "the tensors are on the CPU; Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 " \
                      "set before triton is imported, to run them in Triton's interpreter)"
    return False, f"the tensors are on devices {sorted(devices)}; Triton kernels need them all on one CUDA device"


def launch_guard(tensor: torch.Tensor):
    """The context to launch a kernel on `tensor`'s inputs in: Triton launches on the *current* CUDA device, so
    that must be the tensors' own (a model on a second GPU of the process); nothing for CPU tensors."""
    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()
