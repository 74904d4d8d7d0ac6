"""Static checks of the Slicer extension: CMake lists every shipped file, catalog entry, icon, imports."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPOSITORY = Path(__file__).resolve().parent.parent
MODULE = REPOSITORY / "CardiacUDA"
LIBRARY = REPOSITORY / "CardiacUDALib"
SHIPPED_SUFFIXES = (".py", ".ui", ".png", ".json", ".txt")
CATALOG_PROPERTIES = {  # Slicer/ExtensionsIndex catalog entry schema: name -> type (additionalProperties: false)
    "$schema": str,
    "category": str,
    "scm_url": str,
    "scm_revision": str,
    "scm_type": str,
    "build_dependencies": list,
    "build_subdirectory": str,
    "enabled": bool,
    "tier": int,
    "dicom_support_rule": str,
}


def cmake_list(path: Path, variable: str) -> set[str]:
    """The entries of ``set(VARIABLE ...)`` in a CMake file."""
    match = re.search(rf"set\({variable}\s+(.*?)\)", path.read_text(), re.S)
    assert match, f"{path} has no set({variable} ...)"
    return set(match.group(1).split())


def cmake_variable(text: str, name: str) -> str:
    match = re.search(rf'set\({name}\s+"([^"]*)"\)', text)
    assert match, f"the top-level CMakeLists.txt does not set {name}"
    return match.group(1)


def shipped_module_files() -> set[str]:
    """Every file of the module folder that the extension package needs (its tests are not shipped)."""
    return {
        str(path.relative_to(MODULE))
        for path in MODULE.rglob("*")
        if path.is_file()
        and path.suffix in SHIPPED_SUFFIXES
        and path.name != "CMakeLists.txt"
        and "__pycache__" not in path.parts
        and path.relative_to(MODULE).parts[0] != "Testing"
    }


def test_the_module_cmake_lists_every_shipped_file():
    listed = cmake_list(MODULE / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS") | cmake_list(
        MODULE / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES"
    )
    assert shipped_module_files() - listed == set(), "add these files to CardiacUDA/CMakeLists.txt"
    assert listed - shipped_module_files() == set(), (
        "these files listed in CardiacUDA/CMakeLists.txt do not exist"
    )
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text


def test_the_library_cmake_installs_every_library_file_next_to_the_module():
    listed = cmake_list(LIBRARY / "CMakeLists.txt", "LIBRARY_PYTHON_SCRIPTS")
    present = {
        str(path.relative_to(REPOSITORY)) for path in LIBRARY.rglob("*.py") if "__pycache__" not in path.parts
    }
    assert present - listed == set(), "add these library files to CardiacUDALib/CMakeLists.txt"
    assert listed - present == set(), "these files listed in CardiacUDALib/CMakeLists.txt do not exist"
    text = (LIBRARY / "CMakeLists.txt").read_text()
    for argument in ("ctkMacroCompilePythonScript", "Slicer_QTSCRIPTEDMODULES_LIB_DIR", "NO_INSTALL_SUBDIR"):
        assert argument in text


def test_top_level_cmake_metadata_matches_the_catalog_entry():
    text = (REPOSITORY / "CMakeLists.txt").read_text()
    project = re.search(r"project\((\w+)", text).group(1)  # the ExtensionsIndex check's rule: first project()
    catalog_path = REPOSITORY / f"{project}.json"
    assert catalog_path.is_file(), f"the catalog entry must be named after project({project})"
    assert cmake_variable(text, "EXTENSION_CATEGORY") == "Segmentation"
    assert cmake_variable(text, "EXTENSION_DEPENDS") == "PyTorch"
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION"):
        assert cmake_variable(text, name)
    for url in [
        cmake_variable(text, "EXTENSION_ICONURL"),
        *cmake_variable(text, "EXTENSION_SCREENSHOTURLS").split(),
    ]:
        assert url.startswith("https://raw.githubusercontent.com/")
        assert (REPOSITORY / url.split("/main/", 1)[1]).is_file(), (
            f"{url} points to no file of this repository"
        )
    for directory in ("CardiacUDALib", "CardiacUDA"):
        assert f"add_subdirectory({directory})" in text
    raw = catalog_path.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n"), "the ExtensionsIndex wants LF line endings"
    catalog = json.loads(raw)
    assert {"$schema", "category", "scm_url"} <= set(catalog) <= set(CATALOG_PROPERTIES)
    assert all(isinstance(catalog[key], CATALOG_PROPERTIES[key]) for key in catalog)
    assert catalog["build_dependencies"] == cmake_variable(text, "EXTENSION_DEPENDS").split()
    assert catalog["category"] == cmake_variable(text, "EXTENSION_CATEGORY")
    assert 1 <= catalog["tier"] <= 5 and catalog["scm_url"].startswith("https://")


@pytest.mark.parametrize("icon", ["Resources/CardiacUDA.png", "CardiacUDA/Resources/Icons/CardiacUDA.png"])
def test_icons_are_128_pixel_pngs(icon):
    with Image.open(REPOSITORY / icon) as image:
        assert (image.format, image.size) == ("PNG", (128, 128))


def top_level_imports(path: Path) -> set[str]:
    """Top-level packages imported at file scope (not inside functions)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_module_file_imports_neither_torch_nor_the_library_at_file_scope():
    """Only the helpers' bare package (its ``__init__`` puts a source checkout's library on sys.path, with
    the standard library alone), never a helper module, the library, torch or numpy."""
    imports = top_level_imports(MODULE / "CardiacUDA.py")
    assert not imports & {"torch", "CardiacUDALib", "numpy", "SimpleITK"}
    helper_imports = [
        node
        for node in ast.parse((MODULE / "CardiacUDA.py").read_text()).body
        if isinstance(node, ast.Import | ast.ImportFrom) and "CardiacUDASlicerLib" in ast.unparse(node)
    ]
    assert [ast.unparse(node) for node in helper_imports] in ([], ["import CardiacUDASlicerLib"])
    assert top_level_imports(MODULE / "CardiacUDASlicerLib" / "__init__.py") <= {
        "importlib",
        "sys",
        "pathlib",
    }
    classes = {
        node.name
        for node in ast.parse((MODULE / "CardiacUDA.py").read_text()).body
        if isinstance(node, ast.ClassDef)
    }
    assert {
        "CardiacUDA",
        "CardiacUDAWidget",
        "CardiacUDALogic",
        "CardiacUDATest",
        "CardiacUDAParameterNode",
    } <= classes


def test_the_slicer_helpers_never_import_qt_or_torch_at_file_scope():
    for path in (MODULE / "CardiacUDASlicerLib").glob("*.py"):
        everywhere = {
            alias.name.split(".")[0]
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (
                [ast.alias(node.module)] if isinstance(node, ast.ImportFrom) and node.module else node.names
            )
        }
        assert not everywhere & {"qt", "ctk", "PythonQt"}, path.name
        assert "torch" not in top_level_imports(path), path.name


def test_requirements_are_library_dependencies_and_leave_slicers_own_packages_alone():
    pytest.importorskip("slicer_fixtures")  # slicer-core, and CardiacUDA/ on sys.path
    from CardiacUDASlicerLib.dependencies import TORCH_REQUIREMENT, read_requirements

    pyproject = (REPOSITORY / "pyproject.toml").read_text()
    requirements = read_requirements()
    assert requirements
    for requirement in [*requirements, TORCH_REQUIREMENT]:
        assert f'"{requirement}"' in pyproject, (
            f"{requirement} differs from the library's pyproject dependency"
        )
    assert not {r.split(">")[0].lower() for r in requirements} & {"numpy", "simpleitk", "torch"}


def test_a_source_checkout_finds_its_library_from_the_module_folder_alone(tmp_path):
    """Slicer's *Additional module paths* puts only ``<repo>/CardiacUDA`` on sys.path (no recursive scan,
    only the folder of each module file): importing the module's package must make the library importable.
    ``-S`` leaves out site-packages, where the editable install would find it anyway."""
    probe = (
        f"import sys; sys.path.insert(0, {str(MODULE)!r}); import importlib.util, CardiacUDASlicerLib; "
        "print(importlib.util.find_spec('CardiacUDALib').origin)"
    )
    found = subprocess.run(
        [sys.executable, "-S", "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert Path(found.strip()) == LIBRARY / "__init__.py"
