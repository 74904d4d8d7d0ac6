"""Segmentations come back in the input's own format and exact geometry, for every format a user brings.

NIfTI, NRRD, MHA/MHD and a DICOM series folder, on an oblique grid (and, for NRRD, a sheared one that
NIfTI could not store); and files whose paths hold spaces and non-ASCII characters, end to end.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacUDALib import cli

SPACING = (1.3, 1.3, 7.5)
ORIGIN = (-41.25, 17.5, 63.0)


def _rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    a, b = np.deg2rad(degrees_z), np.deg2rad(degrees_x)
    about_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return about_z @ about_x


OBLIQUE = _rotation(23.0, -11.0)
_SHEAR = np.array([[1.0, 0.25, 0.0], [0.0, 1.0, 0.0], [0.0, 0.1, 1.0]])
SHEARED = _SHEAR / np.linalg.norm(_SHEAR, axis=0)  # unit axes that are not orthogonal: NRRD keeps them


def _on_grid(case_image: Path, direction: np.ndarray) -> sitk.Image:
    image = sitk.ReadImage(str(case_image))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(direction.ravel().tolist())
    return image


def _segment(checkpoint: Path, image: Path, out: Path, capsys) -> Path:
    code = cli.main(["segment", "--checkpoint", str(checkpoint), "--images", str(image), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (written,) = [path for path in out.iterdir() if not path.name.startswith(".")]
    return written


def _file_format(path: Path) -> str:
    """The format of a file from its own bytes (not its name)."""
    header = (gzip.open if path.name.endswith(".gz") else open)(path, "rb").read(348)
    if header.startswith(b"NRRD"):
        return "NRRD"
    if header.startswith(b"ObjectType"):
        return "MetaImage"
    return "NIfTI" if header[344:347] == b"n+1" else "unknown"


def _assert_same_grid(written: sitk.Image, given: sitk.Image, tolerance: float = 1e-9) -> None:
    """The same grid, up to the precision of the format (NIfTI stores its geometry as float32)."""
    assert written.GetSize() == given.GetSize()
    for getter in (sitk.Image.GetSpacing, sitk.Image.GetOrigin, sitk.Image.GetDirection):
        np.testing.assert_allclose(getter(written), getter(given), rtol=0, atol=tolerance)


@pytest.mark.parametrize(
    ("extension", "written_extension", "file_format"),
    [
        (".nii.gz", ".nii.gz", "NIfTI"),
        (".nii", ".nii", "NIfTI"),
        (".nrrd", ".nrrd", "NRRD"),
        (".mha", ".mha", "MetaImage"),
        (".mhd", ".mha", "MetaImage"),
    ],
)
def test_a_segmentation_keeps_its_inputs_format_and_grid(
    tiny_phantom, tiny_model, tmp_path, capsys, extension, written_extension, file_format
):
    given = tmp_path / f"oblique{extension}"
    sitk.WriteImage(_on_grid(tiny_phantom.target[0].image, OBLIQUE), str(given))
    written = _segment(tiny_model, given, tmp_path / "out", capsys)
    assert written.name == f"oblique_seg{written_extension}" and _file_format(written) == file_format
    tolerance = 1e-6 if file_format == "NIfTI" else 1e-9
    _assert_same_grid(sitk.ReadImage(str(written)), sitk.ReadImage(str(given)), tolerance)


def test_a_sheared_nrrd_grid_comes_back_as_it_was(tiny_phantom, tiny_model, tmp_path, capsys):
    given = tmp_path / "sheared.nrrd"
    sitk.WriteImage(_on_grid(tiny_phantom.target[0].image, SHEARED), str(given))
    assert sitk.ReadImage(str(given)).GetDirection() == pytest.approx(tuple(SHEARED.ravel()))
    written = _segment(tiny_model, given, tmp_path / "out", capsys)
    _assert_same_grid(sitk.ReadImage(str(written)), sitk.ReadImage(str(given)))


def _write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """One MR slice file per z, with the tags that place it (position, orientation, spacing)."""
    folder.mkdir()
    values = sitk.Cast(sitk.RescaleIntensity(image, 0, 4000), sitk.sitkInt16)
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.10g}" for v in (direction[0], direction[3], direction[6], direction[1],
                                                    direction[4], direction[7]))  # fmt: skip
    series = "1.2.826.0.1.3680043.2.1125.1.42"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        slice_image = values[:, :, z]
        position = values.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.41",
            "0020|000e": series,
            "0008|0018": f"{series}.{z + 1}",
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:.10g}" for v in position),
            "0020|0037": orientation,
            "0018|0050": f"{image.GetSpacing()[2]:.10g}",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(slice_image)


def test_a_dicom_series_folder_is_one_image_and_its_segmentation_lies_on_the_series_grid(
    tiny_phantom, tiny_model, tmp_path, capsys
):
    folder = tmp_path / "LGE series"
    _write_dicom_series(_on_grid(tiny_phantom.target[0].image, OBLIQUE), folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    series = reader.Execute()
    assert series.GetDirection() == pytest.approx(tuple(OBLIQUE.ravel()), abs=1e-6)  # the series is oblique
    written = _segment(tiny_model, folder, tmp_path / "out", capsys)
    assert written.name == "LGE series_seg.nrrd"  # NRRD: any grid a series can have
    _assert_same_grid(sitk.ReadImage(str(written)), series)


def test_paths_with_spaces_and_non_ascii_characters_work_end_to_end(
    tiny_phantom, tmp_path, capsys, monkeypatch
):
    source = tmp_path / "Quelle Müller" / "bSSFP ü"
    target = tmp_path / "Ziel Müller" / "LGE ø"
    for folder, cases in ((source, tiny_phantom.source[:2]), (target, tiny_phantom.target[:2])):
        folder.mkdir(parents=True)
        for case in cases:
            (folder / f"Pätient {case.name}_image.nii.gz").write_bytes(case.image.read_bytes())
            (folder / f"Pätient {case.name}_label.nii.gz").write_bytes(case.label.read_bytes())
    run = tmp_path / "Läufe" / "run 1"
    arguments = ["--preset", "fast", "--size", "64", "--device", "cpu", "--set", "iterations=2"]
    assert cli.main(["train", "--method", "source_only", "--source", str(source), "--label-map", "mscmrseg",
                     "--out", str(run), *arguments]) == 0  # fmt: skip
    segmented = tmp_path / "Ergebnisse é"
    checkpoint = str(run / "checkpoints" / "best.pt")
    assert (
        cli.main(["segment", "--checkpoint", checkpoint, "--images", str(target), "--out", str(segmented)])
        == 0
    )
    assert sorted(path.name for path in segmented.iterdir()) == [
        "Pätient case000_seg.nii.gz",
        "Pätient case001_seg.nii.gz",
    ]
    scores = tmp_path / "Scores ü"
    assert cli.main(["evaluate", "--predictions", str(segmented), "--references", str(target), "--label-map",
                     "mscmrseg", "--out", str(scores)]) == 0  # fmt: skip
    assert "Pätient case001" in (scores / "metrics.csv").read_text(encoding="utf-8")
    assert "error" not in capsys.readouterr().err
