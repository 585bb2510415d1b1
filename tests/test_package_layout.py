"""The library (`ltc_fast`, `ltc_fast.ops`) stands apart from the application (`ltc_fast.app`): it never imports
it, so `import ltc_fast` and the model work without the command line's dependencies and code."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ltc_fast"
# __main__.py is `python -m ltc_fast`: the command's entry point, which is the application's.
LIBRARY_FILES = sorted(path for path in PACKAGE.rglob("*.py")
                       if "app" not in path.relative_to(PACKAGE).parts and path.name != "__main__.py")


def _package_of(path: Path) -> str:
    return ".".join(("ltc_fast", *path.relative_to(PACKAGE).parent.parts))


def _imported_modules(source: str, package: str) -> set[str]:
    """Modules `source` (a file of `package`) imports, relative ones resolved against the package."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import app`
    return names


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_the_library_does_not_import_the_application(path):
    imported = _imported_modules(path.read_text(), _package_of(path))
    offending = sorted(name for name in imported if name == "ltc_fast.app"
                       or name.startswith("ltc_fast.app."))
    assert not offending, f"{path.relative_to(PACKAGE.parent)} imports {offending}"


def test_the_check_catches_relative_imports_of_the_application():
    """The check above can fail: a library file importing `.app` (or `..app` from ops/) is caught."""
    assert "ltc_fast.app.cli" in _imported_modules("from .app import cli\n", "ltc_fast")
    assert "ltc_fast.app" in _imported_modules("from ..app import x\n", "ltc_fast.ops")
    assert "ltc_fast.app.evaluation" in _imported_modules("import ltc_fast.app.evaluation\n", "ltc_fast")


def test_importing_the_library_loads_nothing_of_the_application():
    code = "import sys, ltc_fast; print(sorted(m for m in sys.modules if m.startswith('ltc_fast.app')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
