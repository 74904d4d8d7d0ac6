"""A synthetic two-modality cardiac phantom with a real, realistic domain shift.

The phantom is the embedded default of the demo and of every test, so it has to behave like the
real cross-sequence problem (MS-CMRSeg: bSSFP "C0" cine as source, LGE as target) without shipping
any real data:

* the **anatomy** is defined in millimetres and rasterised on each subject's own voxel grid, so the
  coarser source spacing really makes the heart look smaller in voxels (about 1.6x, as C0 vs LGE);
* the **intensity models** differ in contrast *order*, not only in scale: in the bSSFP-like source
  the blood is bright and the myocardium dark; in the LGE-like target the healthy myocardium is
  nulled, the blood only intermediate, fat and soft tissue brighter than blood, and scar lights up
  inside the myocardium. Every level is jittered per subject, so no single global intensity mapping
  undoes the shift;
* source and target subjects are different random hearts (unpaired, as in real UDA).

Label files use the MS-CMRSeg values (:data:`PHANTOM_LABEL_VALUES`), so the phantom exercises the
same value mapping as the real data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CardiacUDALib.atomic import atomic_path, write_text_atomic
from CardiacUDALib.cases import VolumeCase

PHANTOM_LABEL_VALUES = {"MYO": 200, "LV": 500, "RV": 600}
DOMAINS = ("source", "target")
MIN_SIZE = 32


class Tissue(enum.IntEnum):
    """What a voxel is made of; the intensity models give each tissue its own level."""

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
    """Ranges of the voxel grid of one domain (drawn uniformly per subject)."""

    slice_counts: tuple[int, int]
    in_plane_spacing_mm: tuple[float, float]
    slice_spacing_mm: tuple[float, float]


@dataclass(frozen=True)
class IntensityModel:
    """How one MR sequence turns tissues into intensities.

    ``levels`` are the mean intensities before the per-subject ``global_scale``; each level is
    multiplied by its own factor in ``1 +- level_jitter`` per subject. ``noise_sigma`` is the
    standard deviation of each of the two Gaussian channels whose magnitude gives Rician noise, as
    a fraction of the LV blood level. ``bias_strength`` scales a smooth multiplicative field,
    ``slice_gain_jitter`` a per-slice gain (LGE slices come from separate breath-holds).
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
        slice_counts=(8, 14), in_plane_spacing_mm=(2.2, 2.5), slice_spacing_mm=(8.0, 12.0)
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
            Tissue.SOFT_TISSUE: 0.24,
            Tissue.FAT: 0.50,
            Tissue.MYOCARDIUM: 0.15,
            Tissue.SCAR: 0.15,
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
        description="LGE-like: nulled myocardium, intermediate blood, bright fat and soft tissue, bright scar",
        levels={
            Tissue.AIR: 0.005,
            Tissue.LUNG: 0.02,
            Tissue.SOFT_TISSUE: 0.15,
            Tissue.FAT: 0.24,
            Tissue.MYOCARDIUM: 0.012,
            Tissue.SCAR: 0.22,
            Tissue.LV_BLOOD: 0.11,
            Tissue.RV_BLOOD: 0.10,
            Tissue.VESSEL_BLOOD: 0.11,
        },
        level_jitter=0.12,
        global_scale=(0.5, 1.5),
        texture_strength=0.10,
        blur_sigma_voxels=(0.7, 1.0),
        bias_strength=0.35,
        slice_gain_jitter=0.10,
        noise_sigma=(0.08, 0.14),
        scar_probability=0.8,
    ),
}


@dataclass(frozen=True)
class PhantomDataset:
    """Where a phantom was written and its cases; target labels exist for evaluation only."""

    root: Path
    source: list[VolumeCase]
    target: list[VolumeCase]


@dataclass(frozen=True)
class VoxelGrid:
    """One subject's acquisition: ``shape`` is numpy order (slices, rows, columns)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    origin: tuple[float, float, float]


@dataclass(frozen=True)
class HeartShape:
    """One random heart in millimetres; ``depth_mm`` of a slice is its distance below the base."""

    centre: np.ndarray
    centre_drift: np.ndarray
    septal_angle: float
    lv_radii: tuple[float, float]
    wall_thickness: float
    lv_length: float
    rv_offset: float
    rv_radii: tuple[float, float]
    rv_length: float
    slice_depths_mm: np.ndarray


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _random_rotation(rng: np.random.Generator, max_angle_deg: float) -> np.ndarray:
    """A rotation about a random axis (Rodrigues): real short-axis stacks are oblique."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(0.3, 1.0) * max_angle_deg)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _draw_grid(domain: str, rng: np.random.Generator, size: int) -> VoxelGrid:
    acquisition = ACQUISITION_MODELS[domain]
    slices = int(rng.integers(acquisition.slice_counts[0], acquisition.slice_counts[1] + 1))
    in_plane = _uniform(rng, acquisition.in_plane_spacing_mm)
    spacing = (in_plane, in_plane, _uniform(rng, acquisition.slice_spacing_mm))
    direction = tuple(float(v) for v in _random_rotation(rng, max_angle_deg=35.0).ravel())
    origin = tuple(float(v) for v in rng.uniform(-100.0, 100.0, size=3))
    return VoxelGrid((slices, size, size), spacing, direction, origin)


def _draw_slice_depths(
    rng: np.random.Generator, slices: int, slice_spacing: float
) -> tuple[np.ndarray, float]:
    """Depth below the base of every slice, and the apex depth of the epicardium.

    The heart covers as many slices as a 60-95 mm long ventricle needs, leaving at least one empty
    slice above the base and one below the apex (as in real stacks, and so that every structure is
    absent somewhere).
    """
    covered = int(np.clip(round(rng.uniform(60.0, 95.0) / slice_spacing), 3, slices - 2))
    above_base = int(rng.integers(1, slices - covered))
    base_phase, apex_phase = rng.uniform(0.2, 0.8, size=2)
    depths = (np.arange(slices) - above_base + base_phase) * slice_spacing
    apex_depth = (covered - 1 + base_phase + apex_phase) * slice_spacing
    return depths, float(apex_depth)


def _draw_heart(rng: np.random.Generator, grid: VoxelGrid) -> HeartShape:
    depths, apex_depth = _draw_slice_depths(rng, grid.shape[0], grid.spacing[2])
    lv_radius = rng.uniform(20.0, 28.0)
    wall = rng.uniform(6.0, 11.0)
    epicardial_radius = lv_radius + wall
    return HeartShape(
        centre=rng.uniform(-8.0, 8.0, size=2) + np.array([12.0, 6.0]),
        centre_drift=rng.uniform(-6.0, 6.0, size=2),
        septal_angle=np.deg2rad(225.0 + rng.uniform(-25.0, 25.0)),
        lv_radii=(lv_radius * rng.uniform(0.9, 1.1), lv_radius * rng.uniform(0.9, 1.1)),
        wall_thickness=wall,
        lv_length=apex_depth - wall,
        rv_offset=epicardial_radius * rng.uniform(0.45, 0.65),
        rv_radii=(
            epicardial_radius * 0.5 + rng.uniform(12.0, 22.0),
            epicardial_radius * rng.uniform(1.1, 1.35),
        ),
        rv_length=apex_depth * rng.uniform(0.55, 0.8),
        slice_depths_mm=depths,
    )


def _ellipsoid_profile(depth: np.ndarray, length: float) -> np.ndarray:
    """Relative radius of a truncated ellipsoid: 1 at the base, 0 at ``length`` and beyond, 0 above the base."""
    inside = (depth >= 0) & (depth < length)
    return np.where(inside, np.sqrt(np.clip(1.0 - (depth / length) ** 2, 0.0, 1.0)), 0.0)


def _elliptic_radius(u: np.ndarray, v: np.ndarray, radius_u: np.ndarray, radius_v: np.ndarray) -> np.ndarray:
    """< 1 inside the ellipse with these semi-axes; infinite where the ellipse has vanished."""
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.sqrt((u / radius_u) ** 2 + (v / radius_v) ** 2)
    return np.where((radius_u > 0) & (radius_v > 0), value, np.inf)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma_voxels: float) -> np.ndarray:
    """In-plane smooth Gaussian noise of unit standard deviation (texture, scar borders, fat patches)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(0.0, sigma_voxels, sigma_voxels))
    return field / max(float(field.std()), 1e-6)


def _paint_anatomy(
    rng: np.random.Generator, grid: VoxelGrid, heart: HeartShape, scar: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue map and MS-CMRSeg label map of one subject, both in numpy order (slices, rows, columns)."""
    slices, rows, columns = grid.shape
    pixel = grid.spacing[0]
    depth = heart.slice_depths_mm[:, None, None]
    y = ((np.arange(rows) - (rows - 1) / 2) * pixel)[None, :, None]
    x = ((np.arange(columns) - (columns - 1) / 2) * pixel)[None, None, :]
    # The long axis is slightly tilted: the centre drifts in-plane from base to apex.
    drift = np.clip(depth / max(heart.lv_length, 1.0), 0.0, 1.0)
    cx = heart.centre[0] + heart.centre_drift[0] * drift
    cy = heart.centre[1] + heart.centre_drift[1] * drift
    cos, sin = np.cos(heart.septal_angle), np.sin(heart.septal_angle)
    along = (x - cx) * cos + (y - cy) * sin  # towards the septum and the RV
    across = -(x - cx) * sin + (y - cy) * cos

    wall = heart.wall_thickness
    lv_scale = _ellipsoid_profile(depth, heart.lv_length)
    epi_scale = _ellipsoid_profile(depth, heart.lv_length + wall)
    endo = _elliptic_radius(along, across, heart.lv_radii[0] * lv_scale, heart.lv_radii[1] * lv_scale)
    epi = _elliptic_radius(
        along, across, (heart.lv_radii[0] + wall) * epi_scale, (heart.lv_radii[1] + wall) * epi_scale
    )
    rv_scale = _ellipsoid_profile(depth, heart.rv_length)
    rv = _elliptic_radius(
        along - heart.rv_offset, across, heart.rv_radii[0] * rv_scale, heart.rv_radii[1] * rv_scale
    )

    def heart_grown_by(margin_mm: np.ndarray | float) -> np.ndarray:
        """The heart (LV epicardium or RV) grown outwards by a margin, for fat and the mediastinum."""
        grown_epi = _elliptic_radius(
            along,
            across,
            (heart.lv_radii[0] + wall) * epi_scale + margin_mm,
            (heart.lv_radii[1] + wall) * epi_scale + margin_mm,
        )
        grown_rv = _elliptic_radius(
            along - heart.rv_offset,
            across,
            heart.rv_radii[0] * rv_scale + margin_mm,
            heart.rv_radii[1] * rv_scale + margin_mm,
        )
        return ((grown_epi < 1) & (epi_scale > 0)) | ((grown_rv < 1) & (rv_scale > 0))

    shape = grid.shape
    tissue = np.full(shape, Tissue.AIR, dtype=np.uint8)
    body_centre = heart.centre + rng.uniform([-50.0, 20.0], [-30.0, 35.0])
    body_radii = rng.uniform([130.0, 85.0], [160.0, 105.0])
    body = _elliptic_radius(x - body_centre[0], y - body_centre[1], body_radii[0], body_radii[1])
    body = np.broadcast_to(body, shape)
    tissue[body < 1] = Tissue.SOFT_TISSUE
    subcutaneous_fat = rng.uniform(6.0, 14.0) / body_radii.min()
    tissue[(body < 1) & (body > 1 - subcutaneous_fat)] = Tissue.FAT
    for lung_offset, lung_radii in (
        (np.array([60.0, 15.0]), rng.uniform([35.0, 55.0], [48.0, 75.0])),
        (np.array([-70.0, 35.0]), rng.uniform([38.0, 55.0], [50.0, 75.0])),
    ):
        centre = heart.centre + lung_offset + rng.uniform(-6.0, 6.0, size=2)
        lung = _elliptic_radius(x - centre[0], y - centre[1], lung_radii[0], lung_radii[1])
        tissue[np.broadcast_to(lung < 1, shape) & (body < 1 - subcutaneous_fat)] = Tissue.LUNG
    tissue[heart_grown_by(rng.uniform(6.0, 12.0))] = Tissue.SOFT_TISSUE
    fat_thickness = np.clip(2.0 + 3.0 * _smooth_noise(rng, shape, sigma_voxels=4.0), 0.0, None)
    tissue[heart_grown_by(fat_thickness)] = Tissue.FAT
    aorta_centre = heart.centre + np.array([-15.0, 58.0]) + rng.uniform(-5.0, 5.0, size=2)
    aorta = _elliptic_radius(x - aorta_centre[0], y - aorta_centre[1], *(2 * [rng.uniform(9.0, 13.0)]))
    tissue[np.broadcast_to(aorta < 1, shape)] = Tissue.VESSEL_BLOOD

    label = np.zeros(shape, dtype=np.uint16)
    rv_blood = (rv < 1) & (epi >= 1)
    myocardium = (epi < 1) & (endo >= 1)
    lv_blood = endo < 1
    tissue[rv_blood] = Tissue.RV_BLOOD
    tissue[myocardium] = Tissue.MYOCARDIUM
    tissue[lv_blood] = Tissue.LV_BLOOD
    label[rv_blood] = PHANTOM_LABEL_VALUES["RV"]
    label[myocardium] = PHANTOM_LABEL_VALUES["MYO"]
    label[lv_blood] = PHANTOM_LABEL_VALUES["LV"]
    # Papillary muscles: myocardium-like tissue inside the blood pool, labelled as blood pool
    # (as in MS-CMRSeg), so that "dark means myocardium" is not the whole story.
    for angle in np.deg2rad(rng.uniform([110.0, 230.0], [150.0, 280.0])):
        position = 0.7 * np.array([np.cos(angle) * heart.lv_radii[0], np.sin(angle) * heart.lv_radii[1]])
        muscle = _elliptic_radius(
            along - position[0] * lv_scale, across - position[1] * lv_scale, 4.0 * lv_scale, 4.0 * lv_scale
        )
        tissue[(muscle < 1) & lv_blood] = Tissue.MYOCARDIUM
    if scar:
        tissue[_scar_mask(rng, along, across, endo, epi, depth, heart) & myocardium] = Tissue.SCAR
    return tissue, label


def _scar_mask(
    rng: np.random.Generator,
    along: np.ndarray,
    across: np.ndarray,
    endo: np.ndarray,
    epi: np.ndarray,
    depth: np.ndarray,
    heart: HeartShape,
) -> np.ndarray:
    """One to three infarct-like blobs: an angular sector over a few slices, from the endocardium
    outwards (subendocardial) or through the whole wall (transmural), with ragged borders."""
    with np.errstate(invalid="ignore"):
        transmurality = np.nan_to_num((endo - 1) / ((endo - 1) + (1 - epi)), nan=0.0, posinf=0.0)
    angle = np.arctan2(across, along)
    ragged = 0.15 * _smooth_noise(rng, np.broadcast_shapes(along.shape, depth.shape), sigma_voxels=2.0)
    mask = np.zeros(ragged.shape, dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        centre_angle = rng.uniform(-np.pi, np.pi)
        half_width = np.deg2rad(rng.uniform(20.0, 60.0))
        start = rng.uniform(0.0, 0.6) * heart.lv_length
        stop = start + rng.uniform(0.25, 0.6) * heart.lv_length
        reach = 1.0 if rng.random() < 0.5 else rng.uniform(0.3, 0.7)
        angular_distance = np.abs(np.angle(np.exp(1j * (angle - centre_angle))))
        mask |= (
            (angular_distance < half_width * (1 + ragged))
            & (transmurality < reach + ragged)
            & (depth >= start)
            & (depth <= stop)
        )
    return mask


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int], strength: float) -> np.ndarray:
    """A smooth multiplicative field (coil sensitivity): exp of a random quadratic in normalised coordinates."""
    slices, rows, columns = shape
    z = np.linspace(-1.0, 1.0, slices)[:, None, None]
    y = np.linspace(-1.0, 1.0, rows)[None, :, None]
    x = np.linspace(-1.0, 1.0, columns)[None, None, :]
    terms = (x, y, x * y, x * x - 0.5, y * y - 0.5, 0.3 * z)
    coefficients = rng.normal(size=len(terms))
    polynomial = sum(c * t for c, t in zip(coefficients, terms))
    return np.exp(strength * polynomial / np.linalg.norm(coefficients) * 2.0)


def _render_intensities(rng: np.random.Generator, tissue: np.ndarray, model: IntensityModel) -> np.ndarray:
    """Image of a tissue map under one sequence: jittered levels, texture, blur, bias, gains, Rician noise."""
    jitter = rng.uniform(1 - model.level_jitter, 1 + model.level_jitter, size=len(Tissue))
    levels = np.array([model.levels[t] * jitter[t] for t in Tissue])
    image = levels[tissue] * (
        1.0 + model.texture_strength * _smooth_noise(rng, tissue.shape, sigma_voxels=1.5)
    )
    image = ndimage.gaussian_filter(image, sigma=(0.0, *2 * [_uniform(rng, model.blur_sigma_voxels)]))
    image *= _bias_field(rng, tissue.shape, model.bias_strength)
    image *= rng.uniform(
        1 - model.slice_gain_jitter, 1 + model.slice_gain_jitter, size=(tissue.shape[0], 1, 1)
    )
    sigma = _uniform(rng, model.noise_sigma) * levels[Tissue.LV_BLOOD]
    real = image + sigma * rng.standard_normal(image.shape)
    imaginary = sigma * rng.standard_normal(image.shape)
    return (np.hypot(real, imaginary) * _uniform(rng, model.global_scale)).astype(np.float32)


def _to_sitk(array: np.ndarray, grid: VoxelGrid) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing)
    image.SetDirection(grid.direction)
    image.SetOrigin(grid.origin)
    return image


def make_subject(domain: str, rng: np.random.Generator, size: int = 96) -> tuple[sitk.Image, sitk.Image]:
    """One random subject of ``domain`` ("source" or "target"): (float32 image, uint16 label map).

    Both are 3D short-axis stacks with the same geometry (size x size in-plane); label values are
    0 and :data:`PHANTOM_LABEL_VALUES`.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    model = INTENSITY_MODELS[domain]
    grid = _draw_grid(domain, rng, size)
    heart = _draw_heart(rng, grid)
    tissue, label = _paint_anatomy(rng, grid, heart, scar=rng.random() < model.scar_probability)
    image = _render_intensities(rng, tissue, model)
    return _to_sitk(image, grid), _to_sitk(label, grid)


def _readme_text(subjects: int, seed: int, size: int) -> str:
    values = "\n".join(f"| {value} | {name} |" for name, value in PHANTOM_LABEL_VALUES.items())
    models = []
    for domain in DOMAINS:
        acquisition, intensity = ACQUISITION_MODELS[domain], INTENSITY_MODELS[domain]
        levels = ", ".join(f"{t.name.lower()} {v:g}" for t, v in intensity.levels.items())
        models.append(
            f"### {domain}: {intensity.description}\n\n"
            f"- slices {acquisition.slice_counts[0]}-{acquisition.slice_counts[1]}, in-plane spacing "
            f"{acquisition.in_plane_spacing_mm[0]:g}-{acquisition.in_plane_spacing_mm[1]:g} mm, slice spacing "
            f"{acquisition.slice_spacing_mm[0]:g}-{acquisition.slice_spacing_mm[1]:g} mm, oblique directions\n"
            f"- tissue levels: {levels}\n"
            f"- each level x (1 +- {intensity.level_jitter:g}) per subject, then x global scale "
            f"{intensity.global_scale[0]:g}-{intensity.global_scale[1]:g}\n"
            f"- texture {intensity.texture_strength:g}, in-plane blur sigma "
            f"{intensity.blur_sigma_voxels[0]:g}-{intensity.blur_sigma_voxels[1]:g} voxels, bias field strength "
            f"{intensity.bias_strength:g}, slice gain +- {intensity.slice_gain_jitter:g}\n"
            f"- Rician noise sigma {intensity.noise_sigma[0]:g}-{intensity.noise_sigma[1]:g} x LV blood level; "
            f"scar in {intensity.scar_probability:.0%} of subjects\n"
        )
    return (
        "# CardiacUDA synthetic cardiac phantom\n\n"
        f"Generated by `CardiacUDALib.phantom.write_phantom_dataset` with seed {seed}: "
        f"{subjects} source and {subjects} target subjects, {size} x {size} pixels in-plane.\n"
        "Source and target subjects are different random hearts (unpaired). Target labels are for\n"
        "evaluation only: an adaptation method must not train on them.\n\n"
        "## Layout\n\n"
        "- `source/<case>_image.nii.gz`, `source/<case>_label.nii.gz`: bSSFP-like, labelled\n"
        "- `target/<case>_image.nii.gz`, `target/<case>_label.nii.gz`: LGE-like\n\n"
        "Cases are named `case000`, `case001`, ... Images are float32, label maps uint16, with identical\n"
        "geometry; the slice axis is the last axis of the file (short-axis stack, base to apex).\n\n"
        "## Label values (MS-CMRSeg)\n\n| value | structure |\n|---|---|\n| 0 | background |\n"
        f"{values}\n\n"
        "## Intensity models\n\n" + "\n".join(models)
    )


def write_phantom_dataset(
    out_dir: str | Path, subjects: int, seed: int = 0, size: int = 96
) -> PhantomDataset:
    """Write ``subjects`` source and ``subjects`` target cases plus a README; deterministic for a seed.

    Every subject draws from its own random stream (seed, domain, index), so source and target
    hearts differ, and asking for more subjects keeps the first ones unchanged.
    """
    if subjects < 1:
        raise ValueError(f"subjects must be at least 1, got {subjects}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    root = Path(out_dir)
    cases: dict[str, list[VolumeCase]] = {}
    for domain_index, domain in enumerate(DOMAINS):
        cases[domain] = []
        for index in range(subjects):
            image, label = make_subject(domain, np.random.default_rng([seed, domain_index, index]), size)
            case = VolumeCase(f"case{index:03d}", root / domain / f"case{index:03d}_image.nii.gz")
            case = VolumeCase(case.name, case.image, root / domain / f"{case.name}_label.nii.gz")
            for volume, path in ((image, case.image), (label, case.label)):
                with atomic_path(path) as temporary:
                    sitk.WriteImage(volume, str(temporary), useCompression=True)
            cases[domain].append(case)
    write_text_atomic(root / "README.md", _readme_text(subjects, seed, size))
    return PhantomDataset(root=root, source=cases["source"], target=cases["target"])
