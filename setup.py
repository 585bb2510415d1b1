"""Build script. The metadata lives in pyproject.toml; this file exists for the optional C++/CUDA loss
extension (csrc/), which a later release builds here when a compiler is available. Without it the
package installs as pure Python and uses its PyTorch paths."""

from setuptools import setup

setup()
