"""Writing results: a command's output file or directory appears whole or not at all, and JSON never holds
NaN."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile

from .. import distributed


def check_output_dir(out: str, overwrite: bool) -> None:
    """Refuse an existing non-empty `out` unless `overwrite` (checked before any work starts)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ValueError(f"--out {out!r} exists and is not empty; pass --overwrite to replace it")


@contextlib.contextmanager
def staged_output_dir(out: str, overwrite: bool = False):
    """Yield a fresh sibling directory of `out` to write into; on success it replaces `out`, on any error
    it is removed, so `out` never holds a half-written result.

    Under torchrun every rank must see the same directory (the Trainer's checkpoints live there): its name
    comes from the launch, every rank creates it, and rank 0 alone moves it into place once all ranks are
    done with it."""
    check_output_dir(out, overwrite)
    out = os.path.abspath(out)
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    if distributed.world_size() > 1:
        staging = os.path.join(parent, f".{name}.partial-dist-{os.environ.get('MASTER_PORT', '0')}")
        os.makedirs(staging, exist_ok=True)
    else:
        staging = tempfile.mkdtemp(dir=parent, prefix=f".{name}.partial-")
        _give_default_mode(staging, 0o777)
    try:
        yield staging
        distributed.barrier()
        if distributed.is_main_process():
            if os.path.isdir(out):
                shutil.rmtree(out)
            os.replace(staging, out)
    finally:
        if distributed.is_main_process() and os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _give_default_mode(path: str, mode: int) -> None:
    """The mode a plain open()/mkdir() would give (mode less the umask): mkstemp's and mkdtemp's private
    mode would otherwise stick to the published file or directory."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def replacing(path: str):
    """Yield a sibling temporary path to write `path`'s new content to; on success it replaces `path` in
    one step (a reader sees the old file or the new one, never half of one), on any error it is removed."""
    directory, name = os.path.split(os.path.abspath(path))
    handle, partial = tempfile.mkstemp(dir=directory, prefix=f".{name}.partial-")
    os.close(handle)
    _give_default_mode(partial, 0o666)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def json_safe(value):
    """NaN and infinities (e.g. ROC-AUC without a positive example) become null: valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str, value) -> None:
    with replacing(path) as partial, open(partial, "w", encoding="utf-8") as f:
        json.dump(json_safe(value), f, indent=2, allow_nan=False)
        f.write("\n")
