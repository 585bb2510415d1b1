"""Per-kernel registers, spills and stack frame from ptxas's verbose output (`nvcc -Xptxas -v` or `ptxas -v`
run directly, e.g. on the PTX Triton generates). Plain functions, no pytest: any test or script can use them.

A device function that was not inlined gets its own entry: its spills are its own (the calling kernel reports
0 for them), so a check for spills must see it. ptxas prints no register count for it ("registers": None);
the calling kernel's count covers it.
"""

from __future__ import annotations

import re
import shutil
import subprocess

# Each pattern is searched anywhere in a line, so it matches with and without nvcc's "ptxas info    : " prefix.
_ENTRY = re.compile(r"Compiling entry function '([^']+)'(?: for '(\w+)')?")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


def _demangle(names: list[str]) -> dict[str, str]:
    """{mangled: demangled} in one c++filt call; names unchanged when c++filt is missing or fails (Triton's
    kernel names are not mangled and come back as they are)."""
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None or not names:
        return {name: name for name in names}
    try:
        out = subprocess.run([cxxfilt], input="\n".join(names) + "\n", capture_output=True, text=True,
                             check=True, timeout=60).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {name: name for name in names}
    return dict(zip(names, out)) if len(out) == len(names) else {name: name for name in names}


def parse_ptxas_verbose(text: str) -> dict[str, dict]:
    """{function name (demangled when c++filt is available): {"registers", "spill_stores", "spill_loads",
    "stack_frame"}}, kernels and non-inlined device functions, in the order ptxas compiled them. When the text
    holds several architectures, each name gets " (sm_XX)" appended."""
    functions: dict[tuple, dict] = {}  # (mangled name, arch) -> stats
    arch, key = None, None  # the architecture of the last entry; the function that the next lines describe
    for line in text.splitlines():
        if match := _ENTRY.search(line):
            name, arch = match.groups()
            key, functions[name, arch] = (name, arch), _stats(registers=0)
        elif (match := _PROPERTIES.search(line)) and (match.group(1), arch) != key:
            # not the entry just compiled: a device function, whose block follows the entries that call it
            key, functions[match.group(1), arch] = (match.group(1), arch), _stats(registers=None)
        elif key is not None and (match := _FRAME.search(line)):
            functions[key].update(zip(("stack_frame", "spill_stores", "spill_loads"), map(int, match.groups())))
        elif key is not None and (match := _REGISTERS.search(line)):
            functions[key]["registers"] = int(match.group(1))
    names = _demangle(sorted({name for name, _ in functions}))
    several_archs = len({arch for _, arch in functions if arch}) > 1
    return {names[name] + (f" ({arch})" if several_archs and arch else ""): stats
            for (name, arch), stats in functions.items()}


def _stats(registers):
    return dict(registers=registers, spill_stores=0, spill_loads=0, stack_frame=0)


def format_table(report: dict, title: str) -> str:
    """A fixed-width table, one function a row ("-": no register count, a device function); the numbers come
    first so that long C++ names do not push them out of line."""
    columns = ("registers", "spill_stores", "spill_loads", "stack_frame")
    header = "  ".join(f"{column:>12}" for column in columns) + "  function"
    rows = ["  ".join(f"{'-' if stats[column] is None else stats[column]:>12}" for column in columns) + f"  {name}"
            for name, stats in sorted(report.items())]
    rule = "-" * len(header)
    return "\n".join([title, rule, header, rule, *(rows or ["(no functions)"]), rule])
