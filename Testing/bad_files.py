"""The files of the bad-input tables: one good phantom case and checkpoint, and one file per mistake.

Shared by ``test_bad_inputs.py`` (CLI and worker) and ``test_slicer_bad_inputs.py`` (batch script and
panel logic), so that every interface is tried with the same mistakes.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from CardiacUDALib.checkpoint import FORMAT_MARKER, FORMAT_VERSION
from CardiacUDALib.phantom import PhantomDataset


class _RunsCode:
    """Pickled into a checkpoint: unpickling it would create ``marker`` (builtins.open)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _write(array: np.ndarray, path: Path, like: sitk.Image | None = None) -> Path:
    image = sitk.GetImageFromArray(array)
    if like is not None:
        image.CopyInformation(like)
    sitk.WriteImage(image, str(path))
    return path


def _flip_bytes_inside_the_weights(source: Path, damaged: Path) -> Path:
    """64 flipped bytes in the middle of the largest tensor record: torch.load does not notice."""
    contents = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        record = max(
            (info for info in archive.infolist() if "/data/" in info.filename), key=lambda i: i.file_size
        )
    header = record.header_offset
    name_length = int.from_bytes(contents[header + 26 : header + 28], "little")
    extra_length = int.from_bytes(contents[header + 28 : header + 30], "little")
    middle = header + 30 + name_length + extra_length + record.file_size // 2
    contents[middle : middle + 64] = bytes(byte ^ 0xFF for byte in contents[middle : middle + 64])
    damaged.write_bytes(bytes(contents))
    return damaged


@dataclass
class Files:
    """Good inputs (a phantom case, a trained checkpoint, predictions) and one bad file per mistake."""

    root: Path
    source: tuple[Path, Path]
    target: Path
    target_elsewhere: Path  # the same file name in another folder: a second case of the same name
    checkpoint: Path
    references: list[tuple[str, Path, Path]]
    predictions: list[Path]
    mis_gridded: Path  # the first reference's prediction, one slice short
    marker: Path  # created if a checkpoint's pickled code ever ran

    def __getattr__(self, name: str) -> Path:
        """The bad files, named after what is wrong with them: ``files.with_nan`` is ``root/with_nan.*``."""
        found = list(self.root.glob(f"{name}.*"))
        if len(found) != 1:
            raise AttributeError(name)
        return found[0]


def write_bad_files(root: Path, tiny_phantom: PhantomDataset, tiny_model: Path) -> Files:
    case = tiny_phantom.source[0]
    image = sitk.ReadImage(str(case.image))
    label = sitk.ReadImage(str(case.label))
    values = sitk.GetArrayFromImage(image)
    labels = sitk.GetArrayFromImage(label)

    shifted = sitk.Image(label)
    shifted.SetOrigin(tuple(v + 5.0 for v in label.GetOrigin()))
    sitk.WriteImage(shifted, str(root / "shifted_label.nii.gz"))
    sitk.WriteImage(image[:, :, 0], str(root / "slice_2d.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([image, image]), str(root / "series_4d.nii.gz"))
    with_nan = values.copy()
    with_nan[values.shape[0] // 2, 10, 10] = np.nan
    _write(with_nan, root / "with_nan.nii.gz", image)
    with_inf = values.copy()
    with_inf[0, 0, 0] = np.inf
    _write(with_inf, root / "with_inf.nrrd", image)
    _write(np.full_like(values, np.nan), root / "all_nan.nii.gz", image)
    _write(np.full_like(values, 7.0), root / "constant.nii.gz", image)
    _write(np.zeros_like(labels), root / "empty_label.nii.gz", label)
    _write(np.where(labels == 200, 300, labels).astype(labels.dtype), root / "unknown_value.nii.gz", label)
    (root / "existing_file.txt").write_text("not a folder\n")
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(root / "int16_image.nii.gz"))
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(root / "int16_image.nii"))
    sitk.WriteImage(image, str(root / "image.mha"))
    for whole, cut in (
        ("int16_image.nii.gz", "truncated_int16.nii.gz"),
        ("int16_image.nii", "truncated_raw.nii"),
        (str(case.image), "truncated_float.nii.gz"),
        (str(case.label), "truncated_label.nii.gz"),
        ("image.mha", "truncated_mha.mha"),
    ):
        contents = (root / whole).read_bytes()
        (root / cut).write_bytes(contents[: len(contents) * 6 // 10])  # a copy that stopped at 60 %
    nan_label = labels.astype(np.float32)
    nan_label[0, 0, 0] = np.nan
    _write(nan_label, root / "nan_label.nii.gz", label)
    (root / "not_utf8").mkdir()
    (root / "not_utf8" / os.fsdecode(b"caf\xe9.nii.gz")).write_bytes(Path(case.image).read_bytes())
    target_elsewhere = root / "elsewhere" / Path(tiny_phantom.target[0].image).name
    target_elsewhere.parent.mkdir()
    target_elsewhere.write_bytes(Path(tiny_phantom.target[0].image).read_bytes())

    checkpoint = tiny_model
    contents = checkpoint.read_bytes()
    (root / "truncated.pt").write_bytes(contents[: len(contents) // 2])
    (root / "random_bytes.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    _flip_bytes_inside_the_weights(checkpoint, root / "flipped_bytes.pt")
    marker = root / "code_ran.txt"
    payload = {"format": FORMAT_MARKER, "format_version": FORMAT_VERSION, "x": _RunsCode(marker)}
    torch.save(payload, root / "pickled_code.pt")

    references, predictions = [], []
    for reference in tiny_phantom.target[:3]:  # a folder of three labelled cases, each with a prediction
        references.append(
            (
                reference.name,
                root / "references" / reference.image.name,
                root / "references" / reference.label.name,
            )
        )
        predictions.append(root / "predictions" / f"{reference.name}_seg.nii.gz")
        for path in (references[-1][1], predictions[-1]):
            path.parent.mkdir(exist_ok=True)
        references[-1][1].write_bytes(reference.image.read_bytes())
        references[-1][2].write_bytes(reference.label.read_bytes())
        predictions[-1].write_bytes(reference.label.read_bytes())
    nan_prediction = sitk.Cast(sitk.ReadImage(str(references[0][2])), sitk.sitkFloat32)
    nan_values = sitk.GetArrayFromImage(nan_prediction)
    nan_values[0, 0, 0] = np.nan
    (root / "nan_prediction").mkdir()
    _write(nan_values, root / "nan_prediction" / predictions[0].name, nan_prediction)
    (root / "unlabelled_references").mkdir()
    (root / "unlabelled_references" / references[0][1].name).write_bytes(references[0][1].read_bytes())
    mis_gridded = root / "mis_gridded" / predictions[0].name
    mis_gridded.parent.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(references[0][2]))[:, :, 1:], str(mis_gridded))
    return Files(
        root, (case.image, case.label), tiny_phantom.target[0].image, target_elsewhere, checkpoint,
        references, predictions, mis_gridded, marker,
    )  # fmt: skip
