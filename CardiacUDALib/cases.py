"""Cases: an image file with an optional label map, and how they are found in folders.

Two naming conventions are recognised, so that both our phantom and the public data sets load
without renaming anything:

* ``<case>_image.<ext>`` with ``<case>_label.<ext>`` (the phantom layout);
* ``<case>.<ext>`` with ``<case>_manual.<ext>`` (MS-CMRSeg, as released with VarDA).

``<ext>`` is one of ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from CardiacUDALib.atomic import full_suffix
from CardiacUDALib.errors import InputDataError

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_LABEL_TAGS = ("_label", "_manual")
_IMAGE_TAG = "_image"


@dataclass(frozen=True)
class VolumeCase:
    """One volume: a name, its image and (for labelled sets) its label map."""

    name: str
    image: Path
    label: Path | None = None


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(full_suffix(path))]


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
        stem = _stem(path)
        tag = next((t for t in _LABEL_TAGS if stem.endswith(t)), None)
        if tag is not None:
            labels[stem[: -len(tag)]] = path
        elif stem.endswith(_IMAGE_TAG):
            images[stem[: -len(_IMAGE_TAG)]] = path
        else:
            images[stem] = path
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
