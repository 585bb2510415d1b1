"""Shared by `tests/` and `bench/`: without a GPU, Triton kernels run in Triton's CPU interpreter.

`TRITON_INTERPRET=1` must be in the environment before triton is imported (ltc_fast imports it, when installed,
and defines its kernels at import), so it is set here, in the root conftest that pytest loads before any
test module. It changes nothing but Triton kernels, which only run when a test asks for `backend="triton"`.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
