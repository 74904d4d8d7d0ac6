"""The phantom's two sequences: its tissues, each domain's voxel grids and intensity models.

The numbers, and why the shift looks as it does, are explained in :mod:`CardiacUDALib.phantom`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Tissue(enum.IntEnum):
    """What a voxel is made of; each intensity model gives every tissue its own level."""

    AIR = 0
    LUNG = 1
    SOFT_TISSUE = 2
    FAT = 3
    MYOCARDIUM = 4
    SCAR = 5
    LV_BLOOD = 6
    RV_BLOOD = 7
    VESSEL_BLOOD = 8


@dataclass(frozen=True)
class AcquisitionModel:
    """Ranges of one domain's voxel grid, drawn uniformly per subject."""

    slice_counts: tuple[int, int]
    in_plane_spacing_mm: tuple[float, float]
    slice_spacing_mm: tuple[float, float]


@dataclass(frozen=True)
class IntensityModel:
    """How one MR sequence turns tissues into intensities.

    ``levels`` are mean intensities; per subject each is multiplied by its own factor in
    ``1 +- level_jitter`` and all by one ``global_scale``. ``noise_sigma`` is the standard deviation
    of each of the two Gaussian channels whose magnitude gives Rician noise, as a fraction of the
    LV blood level. ``bias_strength`` scales a smooth multiplicative field, ``slice_gain_jitter`` a
    per-slice gain (each LGE slice is its own breath-hold).
    """

    description: str
    levels: dict[Tissue, float]
    level_jitter: float
    global_scale: tuple[float, float]
    texture_strength: float
    blur_sigma_voxels: tuple[float, float]
    bias_strength: float
    slice_gain_jitter: float
    noise_sigma: tuple[float, float]
    scar_probability: float


ACQUISITION_MODELS = {
    "source": AcquisitionModel(
        slice_counts=(8, 14), in_plane_spacing_mm=(1.6, 1.8), slice_spacing_mm=(8.0, 12.0)
    ),
    "target": AcquisitionModel(
        slice_counts=(10, 18), in_plane_spacing_mm=(1.4, 1.6), slice_spacing_mm=(5.0, 5.0)
    ),
}

INTENSITY_MODELS = {
    "source": IntensityModel(
        description="bSSFP-like cine: bright blood, dark myocardium, intermediate soft tissue, low noise",
        levels={
            Tissue.AIR: 0.01,
            Tissue.LUNG: 0.05,
            Tissue.SOFT_TISSUE: 0.26,
            Tissue.FAT: 0.50,
            Tissue.MYOCARDIUM: 0.18,
            Tissue.SCAR: 0.18,
            Tissue.LV_BLOOD: 0.42,
            Tissue.RV_BLOOD: 0.34,
            Tissue.VESSEL_BLOOD: 0.40,
        },
        level_jitter=0.15,
        global_scale=(0.8, 1.2),
        texture_strength=0.05,
        blur_sigma_voxels=(0.3, 0.5),
        bias_strength=0.10,
        slice_gain_jitter=0.03,
        noise_sigma=(0.02, 0.04),
        scar_probability=0.0,
    ),
    "target": IntensityModel(
        description="LGE-like: nulled myocardium, intermediate blood, fat and scar brighter than blood, more noise",
        levels={
            Tissue.AIR: 0.005,
            Tissue.LUNG: 0.04,
            Tissue.SOFT_TISSUE: 0.16,
            Tissue.FAT: 0.45,
            Tissue.MYOCARDIUM: 0.03,
            Tissue.SCAR: 0.40,
            Tissue.LV_BLOOD: 0.15,
            Tissue.RV_BLOOD: 0.14,
            Tissue.VESSEL_BLOOD: 0.15,
        },
        level_jitter=0.12,
        global_scale=(0.5, 1.5),
        texture_strength=0.06,
        blur_sigma_voxels=(0.5, 0.8),
        bias_strength=0.35,
        slice_gain_jitter=0.10,
        noise_sigma=(0.04, 0.08),
        scar_probability=0.8,
    ),
}
