"""The scene and module logics this package works with: Slicer's own, or a headless set from ``slicer-core``.

Outside the Slicer application (plain-Python batch runs and the tests) there is no ``slicer.mrmlScene``
and no ``slicer.modules``; :func:`headless_context` builds the same objects from the compiled classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import slicer


@dataclass
class MrmlContext:
    scene: slicer.vtkMRMLScene
    segmentations_logic: slicer.vtkSlicerSegmentationsModuleLogic
    application_logic: slicer.vtkSlicerApplicationLogic | None = None  # headless: keeps the logics alive


def headless_context() -> MrmlContext:
    """A scene with application, colour, volume, segmentation and subject-hierarchy logics, and no views."""
    scene = slicer.vtkMRMLScene()
    application_logic = slicer.vtkSlicerApplicationLogic()
    application_logic.SetMRMLScene(scene)
    color_logic = application_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()  # display nodes look their colour tables up
    application_logic.SetModuleLogic("Colors", color_logic)
    logics = {
        "Volumes": slicer.vtkSlicerVolumesLogic(),
        "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),  # also registers the converter rules
        "SubjectHierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic(),
    }
    for name, logic in logics.items():
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(application_logic)
        application_logic.SetModuleLogic(name, logic)
    return MrmlContext(scene, logics["Segmentations"], application_logic)


def application_context() -> MrmlContext:
    """Slicer's scene and logic inside the application, a headless set anywhere else."""
    if hasattr(slicer, "mrmlScene") and hasattr(slicer, "modules"):
        return MrmlContext(slicer.mrmlScene, slicer.modules.segmentations.logic())
    return headless_context()
