"""Loading the compiled loss extension (`csrc/`): the module built by `setup.py`, else a JIT build with ninja
on first use, else none (a warning, once, and the plain-PyTorch path).

Importing the compiled module registers the `torch.ops.ltc_fast_ext` ops (schemas and CPU kernels; CUDA kernels
when it was built with nvcc). `extension_status()` says which path this process uses, e.g. `"prebuilt CPU"`,
`"jit CPU+CUDA"` or `"unavailable: <reason>"`. Set `LTC_FAST_NO_EXTENSION_BUILD=1` to skip the JIT build (the
prebuilt module is still used when present); `LTC_FAST_BACKEND=torch` ignores the extension altogether;
`LTC_FAST_REQUIRE_EXTENSION=prebuilt` makes a failed `setup.py` build an error (CI, `make gpu-check`).
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

NO_BUILD_ENV_VAR = "LTC_FAST_NO_EXTENSION_BUILD"
REQUIRE_ENV_VAR = "LTC_FAST_REQUIRE_EXTENSION"  # "prebuilt" (CI, gpu-check): setup.py must build it
PREBUILT_MODULE = "ltc_fast._loss_ext"
JIT_MODULE_NAME = "ltc_fast_loss_ext"
OPS_NAMESPACE = "ltc_fast_ext"
CPU_SOURCE, CUDA_SOURCE = "label_loss.cpp", "label_loss_cuda.cu"
CUDA_FLAGS = ["-O3"]


def build_skipped() -> bool:
    """`LTC_FAST_NO_EXTENSION_BUILD=1`: neither setup.py nor the JIT build compiles the extension."""
    return os.environ.get(NO_BUILD_ENV_VAR, "").strip() not in ("", "0")


def required() -> str:
    """`LTC_FAST_REQUIRE_EXTENSION`: "" when not set (a failed build falls back to the JIT build or the PyTorch
    path), else its value; then setup.py fails on a failed compile (CPU or CUDA) instead of warning."""
    value = os.environ.get(REQUIRE_ENV_VAR, "").strip()
    return "" if value == "0" else value


def builds_cuda(cuda_home) -> bool:
    """The CUDA kernels are compiled when torch has CUDA and nvcc is found (`cuda_home`)."""
    return torch.version.cuda is not None and cuda_home is not None


@dataclass(frozen=True)
class ExtensionState:
    loaded: bool
    how: str  # "prebuilt" | "jit" | the reason it is unavailable
    cuda: bool = False

    def status(self) -> str:
        if not self.loaded:
            return f"unavailable: {self.how}"
        return f"{self.how} {'CPU+CUDA' if self.cuda else 'CPU'}"


logger = logging.getLogger(__name__)
_state: ExtensionState | None = None
_lock = threading.Lock()


def source_dir() -> Path | None:
    """The C++/CUDA sources: shipped inside the package (`ltc_fast/_csrc`, copied there by setup.py) or, in a
    source checkout / editable install, the repository's `csrc/`."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "_csrc", package.parent / "csrc"):
        if (candidate / CPU_SOURCE).is_file():
            return candidate
    return None


def vector_isa_flags() -> list[str]:
    """Compiler flags for the CPU kernels' vector instructions: AVX2 + FMA (+ F16C for half conversions) on an
    x86-64 CPU that torch itself runs with AVX2 or better, else none (ATen's portable vectors: same contracts,
    slower). The module is built for the CPU that builds it, as `pip install --no-build-isolation` / the JIT
    build do."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return []
    return ["-mavx2", "-mfma", "-mf16c"]


def openmp_flags() -> list[str]:
    """-fopenmp where torch's own thread pool is OpenMP: without it at::parallel_for, an inline header, compiles
    to a serial loop in the extension. The module then shares torch's libgomp (and torch.set_num_threads)."""
    return ["-fopenmp"] if torch.backends.openmp.is_available() else []


def cpu_build_flags() -> tuple[list[str], list[str]]:
    """(compile, link) flags of the C++ kernels, for the JIT build here and for setup.py."""
    return ["-O3", *openmp_flags(), *vector_isa_flags()], openmp_flags()


def _has_cuda_kernels() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{OPS_NAMESPACE}::multi_label_forward", "CUDA")


def _jit_build() -> None:
    from torch.utils import cpp_extension  # imported lazily: it is only needed to compile

    sources = source_dir()
    if sources is None:
        raise RuntimeError("the csrc/ sources are not installed with this copy of ltc_fast")
    files = [str(sources / CPU_SOURCE)]
    with_cuda = builds_cuda(cpp_extension.CUDA_HOME)
    if with_cuda:
        files.append(str(sources / CUDA_SOURCE))
    logger.info("ltc_fast: JIT-compiling the C++ loss extension (%s; once, then cached)",
                "CPU+CUDA" if with_cuda else "CPU")
    # Compiled into torch's extension cache (TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions);
    # torch rebuilds it when the sources change.
    compile_flags, link_flags = cpu_build_flags()
    cpp_extension.load(name=JIT_MODULE_NAME, sources=files, extra_cflags=compile_flags, extra_ldflags=link_flags,
                       extra_cuda_cflags=CUDA_FLAGS if with_cuda else None, verbose=False)


def _load() -> ExtensionState:
    try:
        importlib.import_module(PREBUILT_MODULE)
        return ExtensionState(True, "prebuilt", _has_cuda_kernels())
    except ImportError as prebuilt_error:
        missing = f"no prebuilt {PREBUILT_MODULE} ({prebuilt_error})"
    if build_skipped():
        return ExtensionState(False, f"{missing}, and {NO_BUILD_ENV_VAR} is set")
    try:
        _jit_build()
    except Exception as error:  # any compiler / ninja / toolchain failure means: use the torch path
        return ExtensionState(False, f"{missing}, and the JIT build failed: {type(error).__name__}: {error}")
    return ExtensionState(True, "jit", _has_cuda_kernels())


def load() -> ExtensionState:
    """Load the extension once per process (thread-safe); warn once when it cannot be had."""
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                state = _load()
                if not state.loaded:
                    warnings.warn(f"ltc_fast: the C++ loss extension is {state.status()}; using the PyTorch "
                                  "loss path (same results, slower)", RuntimeWarning, stacklevel=3)
                _state = state
    return _state


def extension_status() -> str:
    """Which loss path this process uses: `"prebuilt CPU"`, `"jit CPU+CUDA"`, `"unavailable: <reason>"`..."""
    return load().status()


def runs_on(device: torch.device) -> bool:
    """Whether the extension is loaded and has kernels for tensors on `device`."""
    state = load()
    return state.loaded and (device.type == "cpu" or (device.type == "cuda" and state.cuda))
