"""The cardiac structures of CardiacUDA with their standard (SNOMED CT) terminology, names and colours.

They come from the shipped terminology file, the same one the module loads into Slicer's Terminologies
module at startup, so a segment made here and a segment picked by hand in the Segment Editor carry the
same codes. A segment entry is the terminology string Slicer stores on a segment: seven fields joined by
``~`` (context, category, type, type modifier, anatomic context, region, region modifier), each coded
field ``scheme^code^meaning``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtkmodules.vtkCommonCore import vtkStringArray

TERMINOLOGY_FILE = (
    Path(__file__).resolve().parent.parent
    / "Resources"
    / "Terminology"
    / "SegmentationCategoryTypeModifier-CardiacUDA.term.json"
)
_EMPTY_CODE = "^^"


@dataclass(frozen=True)
class CardiacStructure:
    """One structure: the short name the label maps use (``LV``), its meaning, colour and terminology."""

    abbreviation: str
    meaning: str
    code: str
    color: tuple[float, float, float]  # 0..1, as vtkSegment.SetColor wants
    terminology_entry: str

    def matches(self, text: str) -> bool:
        """True for its abbreviation, meaning or SNOMED code, in any letter case (``lv``, ``Left ventricle``)."""
        return text.strip().lower() in (self.abbreviation.lower(), self.meaning.lower(), self.code)


def _coded(item: dict) -> str:
    return f"{item['CodingSchemeDesignator']}^{item['CodeValue']}^{item['CodeMeaning']}"


@functools.cache
def _terminology_document(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@functools.cache
def cardiac_structures(path: Path = TERMINOLOGY_FILE) -> tuple[CardiacStructure, ...]:
    """Every structure of the terminology file, in file order."""
    document = _terminology_document(path)
    context = document["SegmentationCategoryTypeContextName"]
    structures = []
    for category in document["SegmentationCodes"]["Category"]:
        for item in category["Type"]:
            entry = "~".join(
                (context, _coded(category), _coded(item), _EMPTY_CODE, "", _EMPTY_CODE, _EMPTY_CODE)
            )
            structures.append(
                CardiacStructure(
                    abbreviation=item["cardiacUDAAbbreviation"],
                    meaning=item["CodeMeaning"],
                    code=item["CodeValue"],
                    color=tuple(channel / 255.0 for channel in item["recommendedDisplayRGBValue"]),
                    terminology_entry=entry,
                )
            )
    return tuple(structures)


def find_structure(*descriptions: str) -> CardiacStructure | None:
    """The structure that the first matching description names (a segment's name, ID or type code)."""
    for text in descriptions:
        for structure in cardiac_structures():
            if text and structure.matches(text):
                return structure
    return None


def terminology_type_code(entry: str) -> str:
    """The type code of a segment's terminology string (``87878005`` for the left ventricle), or ``""``."""
    fields = entry.split("~")
    return fields[2].split("^")[1] if len(fields) > 2 and fields[2].count("^") == 2 else ""


def terminology_context_name(path: Path = TERMINOLOGY_FILE) -> str:
    return _terminology_document(path)["SegmentationCategoryTypeContextName"]


def ensure_terminology_loaded(terminologies_logic: Any, path: Path = TERMINOLOGY_FILE) -> str:
    """Load the file's context into Slicer's Terminologies logic unless it is loaded; returns its name.

    ``terminologies_logic`` is a ``vtkSlicerTerminologiesModuleLogic`` (typed ``Any``: the class is not in
    every ``slicer`` build this package is imported with).
    """
    name = terminology_context_name(path)
    loaded = vtkStringArray()
    terminologies_logic.GetLoadedTerminologyNames(loaded)
    if name not in {loaded.GetValue(index) for index in range(loaded.GetNumberOfValues())}:
        terminologies_logic.LoadTerminologyFromFile(str(path))
    return name
