"""Build script. The metadata lives in pyproject.toml; this file builds the optional C++/CUDA loss extension
(`csrc/`) as `ltc_fast._loss_ext`:
- when torch is importable in the build environment (`pip install --no-build-isolation`, as `make install`
  does; pyproject's build requirements deliberately leave torch out, so an isolated build never downloads it)
  and a C++ compiler works; the CUDA kernels too when torch has CUDA and nvcc is found (CUDA_HOME);
- otherwise, or with LTC_FAST_NO_EXTENSION_BUILD=1, no extension: the package installs as pure Python and
  ltc_fast JIT-compiles the shipped sources on first use, or falls back to its PyTorch loss path.
"""

import shutil
import warnings
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CSRC = "csrc"  # relative: setuptools wants source paths relative to this file


class BuildPyWithSources(build_py):
    """Also copy csrc/ into the package (`ltc_fast/_csrc`), so an install without the prebuilt module can still
    JIT-compile it (an editable install finds the repository's csrc/ directly)."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "ltc_fast" / "_csrc"
        target.mkdir(parents=True, exist_ok=True)
        for source in Path(__file__).resolve().parent.joinpath(CSRC).iterdir():
            if source.suffix in (".cpp", ".cu", ".h"):
                shutil.copy2(source, target / source.name)


def _build_settings():
    """ltc_fast/ops/loss_extension.py, which holds the build settings the JIT build uses too (module name,
    sources, flags, the opt-out variable). Loaded by path: importing the ltc_fast package would pull in its
    dependencies. It imports torch, so call it only once torch is known to be importable."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent / "ltc_fast" / "ops" / "loss_extension.py"
    spec = importlib.util.spec_from_file_location("_ltc_fast_loss_extension_build", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def loss_extension():
    """([Extension], cmdclass) for the loss extension, or ([], cmdclass) when it cannot be built here."""
    cmdclass = {"build_py": BuildPyWithSources}
    try:
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        return [], cmdclass
    settings = _build_settings()
    if settings.build_skipped():
        return [], cmdclass

    class OptionalBuildExtension(BuildExtension):
        """A failed compile leaves a working pure-Python install (JIT or the torch path at run time), unless
        LTC_FAST_REQUIRE_EXTENSION is set: then it fails the build, nvcc's errors included."""

        def run(self):
            try:
                super().run()
            except Exception as error:  # compiler missing or broken: warn, do not fail the install
                if settings.required():
                    raise RuntimeError(f"ltc_fast: building the loss extension failed and {settings.REQUIRE_ENV_VAR}="
                                       f"{settings.required()} requires it: {type(error).__name__}: {error}") from error
                warnings.warn(f"ltc_fast: not building the C++ loss extension ({type(error).__name__}: {error}); "
                              "ltc_fast will JIT-compile it on first use or use its PyTorch path")

    cxx_flags, link_flags = settings.cpu_build_flags()
    sources = [f"{CSRC}/{settings.CPU_SOURCE}"]
    if settings.builds_cuda(CUDA_HOME):
        extension = CUDAExtension(settings.PREBUILT_MODULE, sources + [f"{CSRC}/{settings.CUDA_SOURCE}"],
                                  extra_compile_args={"cxx": cxx_flags, "nvcc": settings.CUDA_FLAGS},
                                  extra_link_args=link_flags)
    else:
        extension = CppExtension(settings.PREBUILT_MODULE, sources, extra_compile_args={"cxx": cxx_flags},
                                 extra_link_args=link_flags)
    cmdclass["build_ext"] = OptionalBuildExtension
    return [extension], cmdclass


ext_modules, cmdclass = loss_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
