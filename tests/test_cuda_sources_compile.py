"""Every csrc/*.cu compiles for a real GPU (sm_90) wherever nvcc is installed, GPU and CUDA torch or not: CI
machines have no GPU, so the CUDA kernels are otherwise never compiled there (setup.py builds them only with
a CUDA torch). ptxas's registers and spills are printed per kernel (`pytest -s`, or the junit output), and
written as JSON to $LTC_FAST_CUDA_REPORT when set; a kernel that spills fails the test.

No nvcc: skipped, unless LTC_FAST_REQUIRE_NVCC=1 (.ci/run sets it), then failed.

Flags: those of torch's CUDAExtension / JIT build (cpp_extension's COMMON_NVCC_FLAGS, -fPIC, the extension-name
and extension-header defines, the C++ standard it appends) plus the extension's own (loss_extension.CUDA_FLAGS);
headers from the installed torch, which may be the CPU wheel.

Header stand-ins: the CPU wheel lacks one header the sources need, c10/cuda/impl/cuda_cmake_macros.h (CMake
generates it for CUDA builds; c10/cuda/CUDAMacros.h includes it). The real one defines C10_CUDA_BUILD_SHARED_LIBS
(libc10_cuda is a shared library; it only matters on Windows, for dllexport) and, in newer torch,
TORCH_CUDA_VERSION_MAJOR/MINOR/PATCH/BUILD, which no header of the wheel reads. The stand-in defines the first
only. No other header is missing (torch 2.13.0+cpu, nvcc 13.0).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.ptxas_report import format_table, parse_ptxas_verbose

CSRC = Path(__file__).resolve().parents[1] / "csrc"
ARCH_FLAGS = ["-gencode", "arch=compute_90,code=sm_90"]
# What torch 2.13's cpp_extension appends when the flags name no standard (ours name none).
DEFAULT_STD = "-std=c++20"
STAND_IN_HEADERS = {"c10/cuda/impl/cuda_cmake_macros.h": "#define C10_CUDA_BUILD_SHARED_LIBS\n"}
REQUIRE_ENV, REPORT_ENV = "LTC_FAST_REQUIRE_NVCC", "LTC_FAST_CUDA_REPORT"
_LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\s*\([^)]*\)")  # may stand before or after `void`
_KERNEL = re.compile(r"__global__[\w\s]*?\bvoid\s+(\w+)\s*\(")


def find_nvcc() -> str | None:
    """nvcc as torch's cpp_extension finds it: $CUDA_HOME (or $CUDA_PATH)/bin, then PATH, then /usr/local/cuda.
    (cpp_extension.CUDA_HOME itself is None under a CPU torch.)"""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [Path(home, "bin", "nvcc")] if home else [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    return next((str(c) for c in candidates if c and os.access(c, os.X_OK)), None)


def nvcc_command(nvcc: str, source: Path, output: Path, stand_in_dir: Path) -> list[str]:
    from torch.utils import cpp_extension

    from ltc_fast.ops import loss_extension  # the extension's flags and module name, as setup.py builds it

    extension_flags = list(loss_extension.CUDA_FLAGS)
    if not any(flag.startswith("-std=") for flag in extension_flags):
        extension_flags.append(DEFAULT_STD)
    includes = ["-I", str(stand_in_dir)] + [arg for path in cpp_extension.include_paths() for arg in ("-isystem", path)]
    defines = [f"-DTORCH_EXTENSION_NAME={loss_extension.PREBUILT_MODULE.rsplit('.', 1)[-1]}",
               "-DTORCH_API_INCLUDE_EXTENSION_H",
               f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]  # older torch passed it
    return [nvcc, "-c", str(source), "-o", str(output), *ARCH_FLAGS, "-Xptxas", "-v", *includes, *defines,
            *cpp_extension.COMMON_NVCC_FLAGS, "--compiler-options", "-fPIC", *extension_flags]


def compile_cuda_source(source: Path, workdir: Path, nvcc: str) -> subprocess.CompletedProcess:
    """nvcc -c `source` into `workdir` (its stand-in headers too); ptxas's -v report is in the output."""
    stand_ins = workdir / "stand_in_include"
    for name, text in STAND_IN_HEADERS.items():
        (stand_ins / name).parent.mkdir(parents=True, exist_ok=True)
        (stand_ins / name).write_text(text)
    command = nvcc_command(nvcc, source, workdir / f"{source.stem}.o", stand_ins)
    return subprocess.run(command, capture_output=True, text=True, timeout=1800)


def kernel_names(source: Path) -> list[str]:
    """The __global__ functions `source` defines; each needs at least one compiled instantiation."""
    return sorted(set(_KERNEL.findall(_LAUNCH_BOUNDS.sub("", source.read_text()))))


@pytest.mark.slow
def test_cuda_sources_compile_for_sm90_without_spills(tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        message = "nvcc not found (CUDA_HOME, CUDA_PATH, PATH, /usr/local/cuda)"
        if os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0"):
            pytest.fail(f"{message}, and {REQUIRE_ENV} is set")
        pytest.skip(message)
    sources = sorted(CSRC.glob("*.cu"))
    assert sources, f"no .cu file in {CSRC}"
    reports, problems = {}, []
    for source in sources:
        start = time.perf_counter()
        result = compile_cuda_source(source, tmp_path, nvcc)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            problems.append(f"{source.name}: nvcc exited {result.returncode}:\n{result.stderr[-4000:]}")
            continue
        report = reports[source.name] = parse_ptxas_verbose(result.stdout + result.stderr)
        print(format_table(report, f"\n{source.name}: sm_90, ptxas -v (compiled in {seconds:.0f} s)"))
        expected = kernel_names(source)
        if not expected:  # every .cu here holds kernels: finding none means _KERNEL missed them
            problems.append(f"{source.name}: no __global__ function found in the source")
        problems += [f"{source.name}: ptxas compiled no {name}" for name in expected
                     if not any(name in function for function in report)]
        problems += [f"{source.name}: {name} spills ({stats['spill_stores']} bytes stored, "
                     f"{stats['spill_loads']} loaded)" for name, stats in report.items()
                     if stats["spill_stores"] or stats["spill_loads"]]
    if os.environ.get(REPORT_ENV):
        Path(os.environ[REPORT_ENV]).write_text(json.dumps(reports, indent=2) + "\n")
    assert not problems, "\n".join(problems)
