"""Fixtures of the Slicer-module tests: real MRML classes from the ``slicer-core`` wheel, no Slicer app.

Importing this module puts the module folder ``CardiacUDA/`` on ``sys.path`` (as Slicer does for a
module's folder), so ``import CardiacUDASlicerLib`` works as inside Slicer; test modules import it
first, followed by ``# isort: split``. Without slicer-core the importing test module is skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
MODULE_FOLDER = REPOSITORY / "CardiacUDA"
if str(MODULE_FOLDER) not in sys.path:
    sys.path.insert(0, str(MODULE_FOLDER))

slicer = pytest.importorskip(
    "slicer", reason="the slicer-core wheel is not installed (pip install -e '.[test]')"
)
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

from CardiacUDASlicerLib.mrml import MrmlContext, headless_context  # noqa: E402


@pytest.fixture(name="mrml")
def mrml_fixture() -> MrmlContext:
    """A fresh scene with the volume, segmentation and subject-hierarchy logics, cleared afterwards."""
    context = headless_context()
    yield context
    context.scene.Clear(True)
