"""The synthetic phantom: files, labels, geometry, and a domain shift that looks like bSSFP -> LGE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import mean_dice
from scipy import ndimage

from CardiacUDALib.cases import find_cases
from CardiacUDALib.phantom import (
    PHANTOM_LABEL_VALUES,
    SubjectAnatomy,
    draw_anatomy,
    make_subject,
    render_image,
    write_phantom_dataset,
)
from CardiacUDALib.phantom_models import Tissue

SUBJECTS_PER_DOMAIN = 6
LABEL_VALUES = {0, *PHANTOM_LABEL_VALUES.values()}


def _subject_rng(domain: str, index: int) -> np.random.Generator:
    return np.random.default_rng([123, 0 if domain == "source" else 1, index])


@pytest.fixture(scope="module")
def subjects() -> dict[str, list[tuple[sitk.Image, sitk.Image]]]:
    return {
        domain: [make_subject(domain, _subject_rng(domain, i)) for i in range(SUBJECTS_PER_DOMAIN)]
        for domain in ("source", "target")
    }


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[tuple[SubjectAnatomy, np.ndarray]]]:
    """Anatomy (with its tissue map) and image of the same subjects, to look at one tissue at a time."""
    result: dict[str, list[tuple[SubjectAnatomy, np.ndarray]]] = {}
    for domain in ("source", "target"):
        result[domain] = []
        for i in range(SUBJECTS_PER_DOMAIN):
            rng = _subject_rng(domain, i)
            anatomy = draw_anatomy(domain, rng)
            result[domain].append((anatomy, render_image(anatomy, rng)))
    return result


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), subjects=2, seed=7, size=48).root


def _arrays(*paths: Path) -> list[np.ndarray]:
    return [sitk.GetArrayFromImage(sitk.ReadImage(str(path))) for path in paths]


def test_dataset_layout_is_found_by_find_cases_and_readme_names_values(dataset_root: Path) -> None:
    for domain in ("source", "target"):
        cases = find_cases(dataset_root / domain, require_labels=True)
        assert [c.name for c in cases] == ["case000", "case001"]
        assert all(c.image.name == f"{c.name}_image.nii.gz" for c in cases)
        assert all(c.label is not None and c.label.name == f"{c.name}_label.nii.gz" for c in cases)
    readme = (dataset_root / "README.md").read_text(encoding="utf-8")
    for value in PHANTOM_LABEL_VALUES.values():
        assert f"| {value} |" in readme
    assert "seed 7" in readme and "source/" in readme and "target/" in readme
    assert sorted(p.name for p in dataset_root.iterdir()) == ["README.md", "source", "target"]


def test_dataset_is_deterministic_for_a_seed_and_differs_for_another(
    dataset_root: Path, tmp_path: Path
) -> None:
    again = write_phantom_dataset(tmp_path / "again", subjects=3, seed=7, size=48)
    other = write_phantom_dataset(tmp_path / "other", subjects=1, seed=8, size=48)
    for domain in ("source", "target"):
        for first, repeated in zip(find_cases(dataset_root / domain), getattr(again, domain)):
            # Same seed gives the same arrays; asking for a third subject leaves the first two as they were.
            for a, b in zip(_arrays(first.image, first.label), _arrays(repeated.image, repeated.label)):
                np.testing.assert_array_equal(a, b)
        [first_image] = _arrays(find_cases(dataset_root / domain)[0].image)
        [other_image] = _arrays(getattr(other, domain)[0].image)
        assert first_image.shape != other_image.shape or not np.array_equal(first_image, other_image)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="subjects"):
        write_phantom_dataset(tmp_path, subjects=0)
    with pytest.raises(ValueError, match="size"):
        write_phantom_dataset(tmp_path, subjects=1, size=31)
    with pytest.raises(ValueError, match="domain"):
        make_subject("ct", np.random.default_rng(0))
    assert not any(tmp_path.iterdir())


def test_labels_have_ms_cmrseg_values_and_empty_end_slices(subjects) -> None:
    for domain_subjects in subjects.values():
        for _, label in domain_subjects:
            array = sitk.GetArrayFromImage(label)
            assert label.GetPixelID() == sitk.sitkUInt16
            assert set(np.unique(array).tolist()) == LABEL_VALUES
            for value in PHANTOM_LABEL_VALUES.values():
                present_per_slice = (array == value).any(axis=(1, 2))
                assert present_per_slice.any() and not present_per_slice.all()
            assert not array[0].any() and not array[-1].any(), "the stack must extend beyond base and apex"


def test_image_and_label_share_geometry(subjects) -> None:
    for domain_subjects in subjects.values():
        for image, label in domain_subjects:
            assert image.GetPixelID() == sitk.sitkFloat32 and image.GetDimension() == 3
            assert image.GetSize() == label.GetSize()
            assert image.GetSpacing() == label.GetSpacing()
            assert image.GetOrigin() == label.GetOrigin()
            assert image.GetDirection() == label.GetDirection()
            assert image.GetSize()[:2] == (96, 96)


def test_geometry_varies_between_subjects_like_c0_and_lge(subjects) -> None:
    expected = {"source": ((1.6, 1.8), (8.0, 12.0), (8, 14)), "target": ((1.4, 1.6), (5.0, 5.0), (10, 18))}
    for domain, domain_subjects in subjects.items():
        (low, high), (slice_low, slice_high), (count_low, count_high) = expected[domain]
        images = [image for image, _ in domain_subjects]
        spacings = [image.GetSpacing() for image in images]
        assert all(low <= s[0] <= high and s[0] == s[1] and slice_low <= s[2] <= slice_high for s in spacings)
        assert len({s[0] for s in spacings}) == len(spacings)
        slice_counts = {image.GetSize()[2] for image in images}
        assert len(slice_counts) > 1 and all(count_low <= n <= count_high for n in slice_counts)
        for image in images:
            direction = np.array(image.GetDirection()).reshape(3, 3)
            np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-9)
            assert not np.allclose(direction, np.eye(3), atol=0.05), "real short-axis stacks are oblique"
        assert len({image.GetOrigin() for image in images}) == len(images)


def test_heart_covers_more_voxels_in_target_than_in_source(subjects) -> None:
    """The target's finer in-plane spacing makes the same anatomy ~1.15x wider in pixels (~1.3x the area)."""

    def mean_heart_pixels_per_slice(domain: str) -> float:
        areas = []
        for _, label in subjects[domain]:
            per_slice = (sitk.GetArrayFromImage(label) > 0).sum(axis=(1, 2))
            areas.extend(per_slice[per_slice > 0])
        return float(np.mean(areas))

    assert mean_heart_pixels_per_slice("target") > 1.15 * mean_heart_pixels_per_slice("source")


def _core_median(image: np.ndarray, mask: np.ndarray) -> float:
    """Median without the mask's in-plane border, where blur mixes in the neighbours (partial volume)."""
    core = ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), dtype=bool))
    return float(np.median(image[core if core.any() else mask]))


def _tissue_median(anatomy: SubjectAnatomy, image: np.ndarray, tissue: Tissue) -> float:
    return _core_median(image, anatomy.tissue == tissue)


def _label_median(anatomy: SubjectAnatomy, image: np.ndarray, structure: str) -> float:
    return _core_median(image, anatomy.label == PHANTOM_LABEL_VALUES[structure])


def test_render_image_reproduces_make_subject(rendered, subjects) -> None:
    for domain in ("source", "target"):
        np.testing.assert_array_equal(rendered[domain][0][1], sitk.GetArrayFromImage(subjects[domain][0][0]))


def test_source_contrast_is_bssfp_like(rendered) -> None:
    for anatomy, image in rendered["source"]:
        myocardium = _tissue_median(anatomy, image, Tissue.MYOCARDIUM)
        lv_blood = _label_median(anatomy, image, "LV")
        assert min(lv_blood, _label_median(anatomy, image, "RV")) > 1.3 * myocardium
        assert lv_blood > _tissue_median(anatomy, image, Tissue.SOFT_TISSUE)
        assert (
            _tissue_median(anatomy, image, Tissue.SOFT_TISSUE)
            > myocardium
            > _tissue_median(anatomy, image, Tissue.LUNG)
        )
        assert not (anatomy.tissue == Tissue.SCAR).any(), "scar does not show in bSSFP"


def test_target_contrast_is_lge_like(rendered) -> None:
    for anatomy, image in rendered["target"]:
        healthy_myocardium = _tissue_median(anatomy, image, Tissue.MYOCARDIUM)
        lv_blood = _label_median(anatomy, image, "LV")
        assert healthy_myocardium < 0.5 * lv_blood
        assert healthy_myocardium < 0.5 * _tissue_median(anatomy, image, Tissue.SOFT_TISSUE)
        assert _tissue_median(anatomy, image, Tissue.FAT) > lv_blood, "fat outshines blood in LGE"
        scar = anatomy.tissue == Tissue.SCAR
        if scar.any():
            assert _core_median(image, scar) > lv_blood


def test_most_target_subjects_have_scar_inside_the_myocardium() -> None:
    anatomies = [draw_anatomy("target", _subject_rng("target", i), size=48) for i in range(20)]
    scars = [anatomy.tissue == Tissue.SCAR for anatomy in anatomies]
    assert sum(scar.any() for scar in scars) >= 10
    for anatomy, scar in zip(anatomies, scars):
        assert (anatomy.label[scar] == PHANTOM_LABEL_VALUES["MYO"]).all()


def test_myocardium_to_blood_contrast_differs_between_domains(rendered) -> None:
    def ratios(domain: str) -> np.ndarray:
        return np.array(
            [
                _tissue_median(anatomy, image, Tissue.MYOCARDIUM) / _label_median(anatomy, image, "LV")
                for anatomy, image in rendered[domain]
            ]
        )

    assert ratios("target").mean() < 0.7 * ratios("source").mean()


def test_levels_are_jittered_per_subject(rendered) -> None:
    """Each tissue level has its own per-subject factor, so no single global mapping undoes the shift."""
    for domain_subjects in rendered.values():
        blood_to_tissue = [
            _label_median(anatomy, image, "LV") / _tissue_median(anatomy, image, Tissue.SOFT_TISSUE)
            for anatomy, image in domain_subjects
        ]
        assert max(blood_to_tissue) > 1.08 * min(blood_to_tissue)


@pytest.mark.accuracy
def test_source_only_scores_clearly_lower_on_the_target_than_on_held_out_source(
    phantom, label_map, trained_source_model, source_only_target_dice, tmp_path, require_gain
) -> None:
    """The domain gap is real: the same model, held-out subjects of each domain."""
    held_out_source = mean_dice(
        trained_source_model.best_checkpoint, phantom.source[8:], label_map, tmp_path / "s"
    )
    require_gain("held-out source Dice", held_out_source, 0.0, 0.5)
    require_gain("domain gap", held_out_source, source_only_target_dice, 0.15)
