"""Every Triton kernel of ltc_fast/ops compiles for a real GPU (sm_90; bf16 and fp32; every constexpr branch;
the tiles and warps the launchers use), on any machine: Triton's interpreter, which the CPU tests run the kernels in,
accepts code that its compiler rejects (non-constexpr globals, type errors in loops). ptxas's registers and
spills are reported per kernel, and a kernel that spills fails. And a training loop's launches, whose seed and
batch geometry change every step, share one compiled variant (Triton specialises plain ints == 1 and % 16; a
new variant is a JIT of seconds inside a step).

Compiling needs no GPU, but it must run without TRITON_INTERPRET, so the checks run in a subprocess (this file
as a script), which prints its findings as JSON.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import needs_triton

ROOT = Path(__file__).resolve().parents[1]
H = 768  # roberta-base's hidden size; the tiles follow from it as in a real launch
NUM_LABELS = 28


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
    """(name, kernel, constexprs, pointer types, warps): one variant per kernel and constexpr branch, bf16 with every
    option on and fp32 with every option off and the specialised ints Triton turns into constexprs when they
    equal 1 (one label)."""
    from ltc_fast.ops import label_embedding as emb
    from ltc_fast.ops import label_head as head

    for dtype, on in (("bf16", True), ("fp32", False)):
        ones = {} if on else {"num_labels": 1}  # specialised in the embedding kernels (fixed per model)
        yield f"inject_forward {dtype}", emb._inject_forward_kernel, dict(
            PACKED=on, SEARCH_STEPS=3 if on else 0, **emb.forward_blocks(H), **ones), dict(
            text_ids_ptr="*i64", cu_seqlens_ptr="*i32", word_ptr=f"*{dtype}", label_ptr=f"*{dtype}",
            out_ptr=f"*{dtype}"), 4
        yield f"label_grad {dtype}", emb._label_grad_kernel, dict(
            PACKED=on, **emb.label_grad_blocks(NUM_LABELS, H), **ones), dict(
            grad_ptr=f"*{dtype}", cu_seqlens_ptr="*i32", out_ptr=f"*{dtype}"), 4
        constexprs = dict(H=H, GIVEN_ROWS=on, DROPOUT=on, **head.head_blocks(H))
        pointers = dict(hidden_ptr=f"*{dtype}", label_rows_ptr="*i64", weight_ptr="*fp32", bias_ptr="*fp32",
                        out_ptr=f"*{dtype}", grad_ptr=f"*{dtype}", grad_hidden_ptr=f"*{dtype}",
                        weight_partials_ptr="*fp32")
        yield f"head_forward {dtype}", head._head_forward_kernel, constexprs, pointers, 4
        yield f"head_backward {dtype}", head._head_backward_kernel, constexprs, pointers, 4
    yield "keep_mask", head._keep_mask_kernel, dict(H=96, **head.head_blocks(96)), dict(out_ptr="*i8"), 4
    yield from _attention_cases()


def _attention_cases():
    """The decoupled label attention's kernels at each dtype's widest head the kernels take and at roberta-base's
    (64), 16-bit with dropout and fp32 without, with their launchers' tiles and warps."""
    import torch

    from ltc_fast.ops import label_attention as attention

    for dtype, on, head_size in (("bf16", True, 64), ("bf16", True, 128), ("fp32", True, 64), ("fp32", False, 64)):
        launch = attention.attention_blocks(head_size, getattr(torch, {"bf16": "bfloat16", "fp32": "float32"}[dtype]))
        warps = launch.pop("num_warps")
        constexprs = dict(HEAD=head_size, DROPOUT=on, **launch)
        pointers = {name: f"*{dtype}" for name in ("q_ptr", "k_ptr", "v_ptr", "sk_ptr", "sv_ptr", "out_ptr",
                                                   "grad_out_ptr", "grad_q_ptr", "grad_k_ptr", "grad_v_ptr",
                                                   "grad_sk_ptr", "grad_sv_ptr")}
        pointers.update(pad_ptr="*u8", stats_ptr="*fp32", delta_ptr="*fp32")
        for name, kernel in (("forward", attention._forward_kernel),
                             ("label_rows_backward", attention._label_rows_backward_kernel),
                             ("text_rows_backward", attention._text_rows_backward_kernel)):
            yield f"attention_{name} {dtype} d={head_size}{' dropout' if on else ''}", kernel, constexprs, pointers, \
                warps
    yield "attention_keep_mask", attention._keep_mask_kernel, attention.KEEP_MASK_BLOCKS, dict(out_ptr="*i8"), 4


def compile_all() -> dict:
    """{case: ptxas stats} for every case, compiled for sm_90 at its launcher's warps."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    from tests.ptxas_report import parse_ptxas_verbose

    ptxas = get_ptxas(90).path
    report = {}
    for name, kernel, constexprs, pointer_types, warps in _cases():
        source = ASTSource(fn=kernel, signature=_signature(kernel, constexprs, pointer_types), constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        assert compiled.asm["cubin"], name
        with tempfile.TemporaryDirectory() as tmp:  # ptxas again, verbose: Triton's own run keeps its report
            ptx = Path(tmp, "kernel.ptx")
            ptx.write_text(compiled.asm["ptx"])
            verbose = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", str(ptx), "-o", str(ptx.with_suffix(".o"))],
                                     capture_output=True, text=True, check=True).stderr
        functions = parse_ptxas_verbose(verbose)
        report[name] = {"registers": max(f["registers"] or 0 for f in functions.values()),
                        "spill_stores": sum(f["spill_stores"] for f in functions.values()),
                        "spill_loads": sum(f["spill_loads"] for f in functions.values())}
    return report


def launch_specializations() -> dict:
    """{kernel: number of distinct compiled variants} over launches like successive training steps: different
    dropout seeds, batch sizes, sequence lengths and label counts (decoupled chunks, sampled labels). The
    launchers run on CPU tensors with the kernels' `run` replaced by a recorder; Triton's own binder, built
    for sm_90, says which variant each launch would compile."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    from ltc_fast.ops import label_attention as attention
    from ltc_fast.ops import label_embedding as emb
    from ltc_fast.ops import label_head as head

    kernels = {"inject_forward": emb._inject_forward_kernel, "label_grad": emb._label_grad_kernel,
               "head_forward": head._head_forward_kernel, "head_backward": head._head_backward_kernel,
               "attention_forward": attention._forward_kernel,
               "attention_label_rows_backward": attention._label_rows_backward_kernel,
               "attention_text_rows_backward": attention._text_rows_backward_kernel}
    backend = make_backend(GPUTarget("cuda", 90, 32))
    variants = {name: set() for name in kernels}
    for name, kernel in kernels.items():
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)

        def record(*args, grid, warmup, binder=binder, name=name, **kwargs):
            _, specialization, _ = binder(*args, **kwargs)
            variants[name].add(repr(specialization))

        kernel.run = record
    generator = torch.Generator().manual_seed(0)
    words, labels, weight, bias = torch.randn(50, 96), torch.randn(40, 96), torch.randn(1, 96), torch.zeros(1)
    for batch, text_len, num_labels in ((32, 47, 40), (17, 64, 32), (1, 9, 1), (8, 33, 3)):
        text_ids = torch.randint(0, 50, (batch, text_len), generator=generator)
        embedded = emb.inject_forward_triton(text_ids, None, words, labels)  # N is fixed per model here
        emb.label_grad_triton(embedded, None, labels.shape[0])
        hidden = embedded.float()
        for seed in range(3):  # the head scores N labels of [CLS] + 40 label slots + text
            head.head_forward_triton(hidden, weight, bias, None, num_labels, 0.1, torch.tensor(1000 + seed * 7))
            head.head_backward_triton(torch.ones(batch, num_labels), hidden, weight, bias, None, num_labels, 0.1,
                                      torch.tensor(1000 + seed * 7))
    # decoupled label passes: text lengths, label chunks and batch sizes change from step to step
    for batch, heads, num_labels, text_len in ((8, 12, 40, 47), (3, 12, 16, 128), (1, 12, 1, 9), (5, 12, 33, 64)):
        tensors = [torch.randn(batch, heads, rows, 64, generator=generator)
                   for rows in (num_labels, text_len, text_len, num_labels, num_labels)]
        padding = torch.ones(batch, text_len, dtype=torch.bool)
        for seed in range(2):
            out, stats = attention.attention_forward_triton(*tensors, padding, 0.125, 0.1, torch.tensor(100 + seed))
            attention.attention_backward_triton(torch.ones_like(out), torch.zeros(batch, heads, num_labels, 2),
                                                *tensors, padding, 0.125, 0.1, torch.tensor(100 + seed))
    return {name: len(found) for name, found in variants.items()}


def _run_script(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a real compile each time, and no cache left behind
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    if "ptxas" in result.stderr and "not found" in result.stderr.lower():
        pytest.skip("this triton install has no ptxas to compile with")
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def findings(tmp_path_factory):
    return _run_script(tmp_path_factory.mktemp("triton-cache"))


@needs_triton
def test_every_kernel_compiles_for_sm90_without_spilling(findings):
    from tests.ptxas_report import format_table

    report = findings["registers"]
    print(format_table({name: {**stats, "stack_frame": 0} for name, stats in report.items()},
                       "Triton kernels on sm_90, the launchers' warps (ptxas -v)"))
    assert len(report) == 9 + 4 * 3 + 1
    spilling = {name: stats for name, stats in report.items() if stats["spill_stores"] or stats["spill_loads"]}
    assert not spilling, spilling


@needs_triton
def test_a_training_loop_compiles_each_kernel_once(findings):
    """Seeds and batch geometry vary per step, and so does the head's label count (decoupled chunks, sampled
    labels), and the label attention's text length, label count and strides; the embedding kernels' label count
    is fixed per model."""
    assert findings["variants"] == dict.fromkeys(
        ("inject_forward", "label_grad", "head_forward", "head_backward", "attention_forward",
         "attention_label_rows_backward", "attention_text_rows_backward"), 1)


if __name__ == "__main__":
    print(json.dumps({"registers": compile_all(), "variants": launch_specializations()}))
