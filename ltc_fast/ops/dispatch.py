"""Which implementation of an op runs: its fast kernel or its plain-PyTorch twin.

Every op takes `backend=`: `"auto"` (the default) picks the op's fast kernel where it applies (e.g.
Triton on CUDA tensors, the C++ loss extension where it is built) and the twin otherwise; `"torch"` forces
the twin; the op's own fast name (e.g. `"triton"`, `"extension"`) forces the kernel and fails clearly when
it cannot run. The environment variable `LTC_FAST_BACKEND=torch` turns `"auto"` into `"torch"` everywhere,
for debugging and ablations, without touching code.
"""

from __future__ import annotations

import os

ENV_VAR = "LTC_FAST_BACKEND"
AUTO = "auto"
TORCH = "torch"


def environment_backend() -> str:
    """What `LTC_FAST_BACKEND` makes of "auto": "auto" (unset or empty) or "torch"."""
    forced = os.environ.get(ENV_VAR, AUTO).strip().lower() or AUTO
    if forced not in (AUTO, TORCH):
        raise ValueError(f"environment variable {ENV_VAR} must be {AUTO!r} or {TORCH!r}, got {forced!r}")
    return forced


def resolve_backend(op: str, requested: str | None, fast: str, fast_applies: bool, why_not: str = "") -> str:
    """Return `fast` or `"torch"` for one call of `op`.

    `fast_applies`: whether the fast kernel can run on these inputs here (device, dtype, availability);
    `why_not` says why not, for the error raised when the caller forces `fast` and it cannot run.
    """
    requested = AUTO if requested is None else requested
    if requested not in (AUTO, TORCH, fast):
        raise ValueError(f"{op}: backend must be one of {AUTO!r}, {TORCH!r}, {fast!r}; got {requested!r}")
    if requested == AUTO:
        requested = environment_backend()
    if requested == TORCH:
        return TORCH
    if requested == fast and not fast_applies:
        raise RuntimeError(f"{op}: backend={fast!r} was requested but cannot run here: {why_not}")
    return fast if fast_applies else TORCH
