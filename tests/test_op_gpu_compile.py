"""Every Triton kernel of ltc_fast/ops compiles for a real GPU (sm_90; bf16 and fp32; every constexpr branch),
on any machine: Triton's interpreter, which the CPU tests run the kernels in, accepts code that its
compiler rejects (non-constexpr globals, type errors in loops). Compiling needs no GPU, but it must run without
TRITON_INTERPRET, so the check runs in a subprocess (this file as a script)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_triton

ROOT = Path(__file__).resolve().parents[1]


def _signature(kernel, constexprs, pointer_types):
    """Triton's compile signature: constexprs by name, pointers as given, floats p/scale, other scalars i32."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointer_types[name]
        else:
            signature[name] = "fp32" if name in ("p", "scale") else "i32"
    return signature


def _cases():
    """One variant per kernel and constexpr branch: bf16 with every option on, fp32 with every option off and
    the ints Triton turns into constexprs when they equal 1 (one sequence, one label)."""
    from ltc_fast.ops import label_embedding as emb
    from ltc_fast.ops import label_head as head

    for dtype, on, ones in (("bf16", True, {}), ("fp32", False, {"num_seqs": 1, "num_labels": 1})):
        yield emb._inject_forward_kernel, dict(PACKED=on, SEARCH_STEPS=3 if on else 0, BLOCK_ROWS=16,
                                               BLOCK_COLS=256, **ones), dict(
            text_ids_ptr="*i64", cu_seqlens_ptr="*i32", word_ptr=f"*{dtype}", label_ptr=f"*{dtype}",
            out_ptr=f"*{dtype}")
        yield emb._label_grad_kernel, dict(PACKED=on, BLOCK_LABELS=8, BLOCK_COLS=256, **ones), dict(
            grad_ptr=f"*{dtype}", cu_seqlens_ptr="*i32", out_ptr=f"*{dtype}")
        constexprs = dict(H=768, GIVEN_ROWS=on, DROPOUT=on, BLOCK_H=256, **ones)
        pointers = dict(hidden_ptr=f"*{dtype}", label_rows_ptr="*i64", weight_ptr="*fp32", bias_ptr="*fp32",
                        out_ptr=f"*{dtype}", grad_ptr=f"*{dtype}", grad_hidden_ptr=f"*{dtype}",
                        weight_partials_ptr="*fp32")
        constexprs.pop("num_seqs", None)
        yield head._head_forward_kernel, dict(constexprs, BLOCK_ITEMS=16), pointers
        yield head._head_backward_kernel, dict(constexprs, BLOCK_ITEMS=32), pointers
    yield head._keep_mask_kernel, dict(H=96, BLOCK_ITEMS=16, BLOCK_H=128), dict(out_ptr="*i8")


def compile_all() -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    count = 0
    for capability in (90,):  # H100 / H200
        for kernel, constexprs, pointer_types in _cases():
            source = ASTSource(fn=kernel, signature=_signature(kernel, constexprs, pointer_types),
                               constexprs=constexprs)
            compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32))
            assert compiled.asm["cubin"], kernel.__name__
            count += 1
    return count


@needs_triton
def test_every_kernel_compiles_for_cuda_targets(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a real compile each time, and no cache left behind
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    if "ptxas" in result.stderr and "not found" in result.stderr.lower():
        pytest.skip("this triton install has no ptxas to compile with")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "compiled" in result.stdout


if __name__ == "__main__":
    print(f"compiled {compile_all()} kernel variants")
