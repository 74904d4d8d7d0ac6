"""Cases: an image file with an optional label map, and how they are found in folders.

Two naming conventions are recognised, so that both our phantom and the public data sets load
without renaming anything:

* ``<case>_image.<ext>`` with ``<case>_label.<ext>`` (the phantom layout);
* ``<case>.<ext>`` with ``<case>_manual.<ext>`` (MS-CMRSeg, as released with VarDA).

``<ext>`` is one of ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``.

A case's name is the one rule for every file written for it: ``<case>_seg<ext>`` (segmentation) and
``<case>_translated<ext>`` (translation), in the input's own format (see :func:`output_path`), so the
name must be a plain file name and unique among the cases of a job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from CardiacUDALib.atomic import full_suffix
from CardiacUDALib.errors import InputDataError

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
SEGMENTATION_TAG = "_seg"
TRANSLATION_TAG = "_translated"
_LABEL_TAGS = ("_label", "_manual")
_IMAGE_TAG = "_image"
_NOT_IN_FILE_NAMES = re.compile(r"[/\\\x00-\x1f]")
# Outputs keep the input's format, which keeps its geometry (NRRD stores any direction matrix, NIfTI
# only what its qform/sform can); MHD becomes the single-file MHA, a DICOM folder NRRD.
_OUTPUT_EXTENSION = {".mhd": ".mha"}
_DICOM_OUTPUT_EXTENSION = ".nrrd"


def stem_of(path: Path) -> str:
    """The name without its image extension (a name without one, e.g. a DICOM folder's, stays whole)."""
    extension = next((e for e in IMAGE_EXTENSIONS if path.name.lower().endswith(e)), "")
    return path.name[: len(path.name) - len(extension)]


def case_name_of(image: Path) -> str:
    """``case000_image.nii.gz`` -> ``case000``, ``p.1.nii.gz`` -> ``p.1``, a DICOM folder -> its name."""
    return stem_of(image).removesuffix(_IMAGE_TAG)


def check_utf8(text: str) -> str:
    """``text`` if it is valid Unicode: a file name that is not UTF-8 reaches Python with stand-ins
    for its bytes, and the image libraries abort the process on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise InputDataError(
            f"{shown!r} is not valid UTF-8 (its bad bytes shown as '\ufffd'): rename the file or folder"
        ) from None
    return text


@dataclass(frozen=True)
class VolumeCase:
    """One volume: a name (a plain file name, see the module docstring), its image and its label map."""

    name: str
    image: Path
    label: Path | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name in (".", "..") or _NOT_IN_FILE_NAMES.search(self.name):
            raise InputDataError(
                f"case name {self.name!r} (of {self.image}) cannot name output files: use a plain file name "
                "without '/', '\\' or control characters"
            )
        for text in (str(self.image), "" if self.label is None else str(self.label), self.name):
            check_utf8(text)

    def to_dict(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "image": str(self.image),
            "label": None if self.label is None else str(self.label),
        }

    @classmethod
    def from_dict(cls, item: Any, what: str) -> VolumeCase:
        """A case of a job file: ``{"image"}`` with optional ``"name"`` (else :func:`case_name_of`) and ``"label"``."""
        if not isinstance(item, dict):
            raise InputDataError(
                f"an entry of {what} must be an object with 'image' (and 'name', 'label'), not {item!r}"
            )
        unknown = sorted(set(item) - {"name", "image", "label"})
        if unknown:
            raise InputDataError(f"an entry of {what} has unknown field(s) {', '.join(unknown)}: {item}")
        for key in ("image", "name", "label"):
            value = item.get(key)
            if not (isinstance(value, str) and value) and (key == "image" or value is not None):
                raise InputDataError(
                    f"an entry of {what} needs {key!r} as a non-empty string, not {value!r}: {item}"
                )
        image = Path(item["image"])
        label = item.get("label")
        return cls(item.get("name") or case_name_of(image), image, None if label is None else Path(label))


def cases_from_dicts(items: Any, what: str) -> list[VolumeCase]:
    """The cases of a job file's list ``what``, with unique names."""
    if not isinstance(items, list):
        raise InputDataError(f"{what} must be a list of {{'name', 'image', 'label'}} objects, not {items!r}")
    return check_unique_names([VolumeCase.from_dict(item, what) for item in items], what)


def check_unique_names(cases: list[VolumeCase], what: str) -> list[VolumeCase]:
    """``cases`` if no two share a name (their outputs would overwrite each other)."""
    names = [case.name for case in cases]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputDataError(
            f"{what}: several volumes are named {', '.join(duplicates)} (their outputs would overwrite each "
            "other); rename them"
        )
    return cases


def output_extension(image: Path) -> str:
    """The format written for outputs of ``image``: its own (see the module docstring)."""
    if image.is_dir():
        return _DICOM_OUTPUT_EXTENSION
    extension = full_suffix(image).lower()
    return _OUTPUT_EXTENSION.get(extension, extension)


def output_path(out_dir: str | Path, case: VolumeCase, tag: str) -> Path:
    """``<out_dir>/<case><tag><ext>``: where the segmentation (``SEGMENTATION_TAG``) or translation of ``case`` goes."""
    return Path(out_dir) / f"{case.name}{tag}{output_extension(case.image)}"


def _same_file(first: Path, second: Path) -> bool:
    if first.exists() and second.exists():
        return first.samefile(second)  # also through links
    return first.resolve() == second.resolve()


def check_outputs_spare_inputs(outputs: list[Path], cases: list[VolumeCase]) -> list[Path]:
    """``outputs`` if none of them is a file ``cases`` are read from: no command writes onto its input
    (an output folder that holds the inputs, where ``a_seg.nii.gz`` is a volume too, would lose it)."""
    inputs = [path for case in cases for path in (case.image, case.label) if path is not None]
    for output in outputs:
        for read in inputs:
            if _same_file(output, read):
                raise InputDataError(
                    f"writing {output} would replace the input {read}: choose an output folder that holds no "
                    "input volumes"
                )
    return outputs


def case_name_of_output(path: Path, tag: str) -> str:
    """The case an output file ``<case><tag><ext>`` belongs to (``<case><ext>`` also names ``<case>``)."""
    return stem_of(path).removesuffix(tag)


def _natural_key(text: str) -> list[object]:
    """Sort ``patient2`` before ``patient10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def find_cases(folder: str | Path, require_labels: bool = False) -> list[VolumeCase]:
    """All cases in ``folder``, sorted naturally by name; labels attached where present."""
    root = Path(folder)
    if not root.is_dir():
        raise InputDataError(f"{root} is not a folder")
    files = [p for p in root.iterdir() if p.is_file() and full_suffix(p).lower() in IMAGE_EXTENSIONS]
    labels: dict[str, Path] = {}
    images: dict[str, Path] = {}
    for path in files:
        stem = stem_of(path)
        tag = next((t for t in _LABEL_TAGS if stem.endswith(t)), None)
        found = labels if tag is not None else images
        name = stem[: -len(tag)] if tag is not None else case_name_of(path)
        if name in found:
            raise InputDataError(
                f"{root} holds two files for case {name!r}: {found[name].name} and {path.name}; keep one"
            )
        found[name] = path
    if not images:
        raise InputDataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise InputDataError(f"label maps without an image in {root}: {', '.join(orphans)}")
    cases = [VolumeCase(name, images[name], labels.get(name)) for name in sorted(images, key=_natural_key)]
    if require_labels:
        unlabelled = [c.name for c in cases if c.label is None]
        if unlabelled:
            raise InputDataError(
                f"these images in {root} have no label map (<case>_label.* or <case>_manual.*): "
                + ", ".join(unlabelled)
            )
    return cases
