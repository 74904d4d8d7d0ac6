"""The import rules of ARCHITECTURE.md, read from the source (ast) and from a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "CardiacUDALib"
ENGINE_MODULES = (
    "engine",
    "training",
    "run_settings",
    "pools",
    "memory",
    "inference",
    "evaluation",
    "stages",
)
METHOD_INTERFACE = {"__init__", "base", "registry"}  # what every method shares
TORCH_FREE = (
    "jobs",
    "events",
    "atomic",
    "cases",
    "errors",
    "runfolder",
    "typed_values",
    "arguments",
    "weights",
    "download",
    "json_files",
)
MAX_MODULE_LINES = 450


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (function-level imports included)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def method_files_imported(path: Path) -> set[str]:
    """The method files (``methods/<name>.py``, not the shared ``base`` / ``registry``) ``path`` imports."""
    method_files = {file.stem for file in (LIBRARY / "methods").glob("*.py")} - METHOD_INTERFACE
    found = set()
    for name in imported_modules(path):
        parts = name.split(".")
        if parts[:2] == ["CardiacUDALib", "methods"] and len(parts) > 2 and parts[2] in method_files:
            found.add(parts[2])
    return found


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_the_engine_imports_no_method_file(module):
    assert not method_files_imported(LIBRARY / f"{module}.py")


def test_the_data_layer_imports_nothing_from_methods():
    assert not [
        name for name in imported_modules(LIBRARY / "data.py") if name.startswith("CardiacUDALib.methods")
    ]


def test_the_check_sees_a_method_import():
    assert method_files_imported(LIBRARY / "methods" / "cmevae.py") >= {"varda"}


def test_the_library_never_imports_slicer_or_qt():
    gui = ("slicer", "qt", "vtk", "ctk", "PythonQt")
    for path in LIBRARY.rglob("*.py"):
        offending = {name for name in imported_modules(path) if name.split(".")[0] in gui}
        assert not offending, f"{path.relative_to(LIBRARY)} imports {offending}"


@pytest.mark.parametrize("module", TORCH_FREE)
def test_the_modules_the_slicer_process_uses_do_not_import_torch(module):
    code = f"import sys, CardiacUDALib.{module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_no_library_module_is_longer_than_a_reader_can_hold():
    long = {
        str(path.relative_to(LIBRARY)): lines
        for path in LIBRARY.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules (over {MAX_MODULE_LINES} lines): {long}"
