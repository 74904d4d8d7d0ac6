"""A synthetic two-modality cardiac phantom with a real, realistic domain shift.

The phantom is the embedded default of the demo and of every test, so it has to behave like the
real cross-sequence problem (MS-CMRSeg: bSSFP "C0" cine as source, LGE as target) without shipping
any real data:

* the **anatomy** is defined in millimetres and rasterised on each subject's own voxel grid, so the
  coarser source spacing really makes the heart look smaller in voxels (about 1.15x; real C0 vs LGE
  is 1.6x, which alone takes a ``fast`` CPU model on the phantom to near-zero target Dice and leaves
  nothing for an intensity adaptation to show);
* the **intensity models** differ in contrast *order*, not only in scale: in the bSSFP-like source
  the blood is about as bright as fat and the myocardium only a little darker than soft tissue; in
  the LGE-like target the healthy myocardium is nulled (as dark as the lungs), fat is more than
  twice as bright as blood, and scar inside the myocardium outshines the blood. Blood sinks to the
  level of soft tissue (a bSSFP model then misses most of the blood pools: a clear shift, which a
  ``fast`` adaptation on 2 CPU cores recovers on every seed and CPU kernel; with blood above soft
  tissue the gap depended on the seed, and a full reversal left nothing to recover). Every level
  is jittered per subject, so no single global intensity mapping undoes the shift;
* source and target subjects are different random hearts (unpaired, as in real UDA).

Label files use the MS-CMRSeg values (:data:`PHANTOM_LABEL_VALUES`), so the phantom exercises the
same value mapping as the real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CardiacUDALib.atomic import atomic_path, check_writable_folder, write_text_atomic
from CardiacUDALib.cases import VolumeCase
from CardiacUDALib.phantom_models import ACQUISITION_MODELS, INTENSITY_MODELS, Tissue

PHANTOM_LABEL_VALUES = {"MYO": 200, "LV": 500, "RV": 600}
DOMAINS = ("source", "target")
MIN_SIZE = 32


@dataclass(frozen=True)
class PhantomDataset:
    """Where a phantom was written and its cases; target labels exist for evaluation only."""

    root: Path
    source: list[VolumeCase]
    target: list[VolumeCase]


@dataclass(frozen=True)
class VoxelGrid:
    """One subject's acquisition; ``shape`` is numpy order (slices, rows, columns)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    origin: tuple[float, float, float]


@dataclass(frozen=True)
class SubjectAnatomy:
    """One subject before imaging: its grid, a :class:`Tissue` map and the MS-CMRSeg label map.

    Both maps are numpy order (slices, rows, columns). The tissue map tells what the label map
    cannot, e.g. which myocardium is scar, so tests and analyses can look at healthy tissue only.
    """

    domain: str
    grid: VoxelGrid
    tissue: np.ndarray
    label: np.ndarray


@dataclass(frozen=True)
class HeartShape:
    """One random heart in millimetres, in the plane of the slices (x to the right, y down)."""

    centre: np.ndarray
    centre_drift: np.ndarray
    septal_angle: float
    lv_radii: tuple[float, float]
    wall_thickness: float
    lv_length: float
    rv_offset: float
    rv_radii: tuple[float, float]
    rv_wall_thickness: float
    rv_length: float


@dataclass(frozen=True)
class HeartRaster:
    """A heart laid over a grid: every voxel's coordinates in the heart's own frame.

    ``along`` points from the LV centre towards the septum and the RV, ``across`` is in-plane
    perpendicular to it, ``depth`` is the distance below the base plane along the long axis.
    The methods give elliptic radii (< 1 inside) of the chambers, optionally grown by a margin.
    """

    heart: HeartShape
    along: np.ndarray
    across: np.ndarray
    depth: np.ndarray

    def lv_cavity(self) -> np.ndarray:
        scale = _ellipsoid_profile(self.depth, self.heart.lv_length)
        return _elliptic_radius(self.along, self.across, *(r * scale for r in self.heart.lv_radii))

    def epicardium(self, margin_mm: np.ndarray | float = 0.0) -> np.ndarray:
        wall = self.heart.wall_thickness
        scale = _ellipsoid_profile(self.depth, self.heart.lv_length + wall)
        radii = ((r + wall) * scale for r in self.heart.lv_radii)
        return _elliptic_radius(self.along, self.across, *radii, margin_mm=margin_mm)

    def rv_cavity(self, margin_mm: np.ndarray | float = 0.0) -> np.ndarray:
        scale = _ellipsoid_profile(self.depth, self.heart.rv_length)
        radii = (r * scale for r in self.heart.rv_radii)
        return _elliptic_radius(self.along - self.heart.rv_offset, self.across, *radii, margin_mm=margin_mm)

    def grown(self, margin_mm: np.ndarray | float) -> np.ndarray:
        """The whole heart (LV epicardium, RV with its free wall) grown outwards by a margin."""
        rv_outer = self.rv_cavity(self.heart.rv_wall_thickness + margin_mm)
        return (self.epicardium(margin_mm) < 1) | (rv_outer < 1)


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
    """Depth below the base of every slice, and the depth of the epicardial apex.

    The heart covers as many slices as a 60-95 mm long ventricle needs, but always leaves at least
    one empty slice above the base and one below the apex (as real stacks do, and so that every
    structure is absent somewhere).
    """
    covered = int(np.clip(round(rng.uniform(60.0, 95.0) / slice_spacing), 3, slices - 2))
    above_base = int(rng.integers(1, slices - covered))
    base_phase, apex_phase = rng.uniform(0.2, 0.8, size=2)
    depths = (np.arange(slices) - above_base + base_phase) * slice_spacing
    apex_depth = (covered - 1 + base_phase + apex_phase) * slice_spacing
    return depths, float(apex_depth)


def _draw_heart(rng: np.random.Generator, apex_depth: float) -> HeartShape:
    lv_radius = rng.uniform(20.0, 28.0)
    wall = rng.uniform(6.0, 11.0)
    epicardial_radius = lv_radius + wall
    return HeartShape(
        # The LV sits right of and below the grid centre so that LV and RV together are about centred.
        centre=rng.uniform(-8.0, 8.0, size=2) + np.array([12.0, 6.0]),
        centre_drift=rng.uniform(-6.0, 6.0, size=2),
        septal_angle=float(np.deg2rad(225.0 + rng.uniform(-25.0, 25.0))),
        lv_radii=(lv_radius * rng.uniform(0.9, 1.1), lv_radius * rng.uniform(0.9, 1.1)),
        wall_thickness=wall,
        lv_length=apex_depth - wall,
        rv_offset=epicardial_radius * rng.uniform(0.45, 0.65),
        rv_radii=(
            epicardial_radius * 0.5 + rng.uniform(12.0, 22.0),
            epicardial_radius * rng.uniform(1.0, 1.25),
        ),
        rv_wall_thickness=rng.uniform(2.5, 4.0),
        rv_length=apex_depth * rng.uniform(0.55, 0.8),
    )


def _ellipsoid_profile(depth: np.ndarray, length: float) -> np.ndarray:
    """Relative radius of an ellipsoid truncated at the base: 1 at the base, 0 from ``length`` on."""
    inside = (depth >= 0) & (depth < length)
    return np.where(inside, np.sqrt(np.clip(1.0 - (depth / length) ** 2, 0.0, 1.0)), 0.0)


def _elliptic_radius(
    u: np.ndarray,
    v: np.ndarray,
    radius_u: np.ndarray,
    radius_v: np.ndarray,
    margin_mm: np.ndarray | float = 0.0,
) -> np.ndarray:
    """< 1 inside the ellipse with these semi-axes (plus margin); infinite where it has vanished."""
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.sqrt((u / (radius_u + margin_mm)) ** 2 + (v / (radius_v + margin_mm)) ** 2)
    return np.where((radius_u > 0) & (radius_v > 0), value, np.inf)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_voxels: float) -> np.ndarray:
    """In-plane smooth Gaussian noise of unit standard deviation (texture, ragged borders, fat)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(0.0, sigma_voxels, sigma_voxels))
    return field / max(float(field.std()), 1e-6)


def _raster_heart(
    grid: VoxelGrid, heart: HeartShape, slice_depths: np.ndarray
) -> tuple[HeartRaster, np.ndarray, np.ndarray]:
    """The heart's frame at every voxel, plus the in-plane image coordinates x, y in mm."""
    _, rows, columns = grid.shape
    pixel = grid.spacing[0]
    depth = slice_depths[:, None, None]
    y = ((np.arange(rows) - (rows - 1) / 2) * pixel)[None, :, None]
    x = ((np.arange(columns) - (columns - 1) / 2) * pixel)[None, None, :]
    # The long axis is slightly tilted: the centre drifts in-plane from base to apex.
    drift = np.clip(depth / max(heart.lv_length, 1.0), 0.0, 1.0)
    dx = x - (heart.centre[0] + heart.centre_drift[0] * drift)
    dy = y - (heart.centre[1] + heart.centre_drift[1] * drift)
    cos, sin = np.cos(heart.septal_angle), np.sin(heart.septal_angle)
    return HeartRaster(heart, along=dx * cos + dy * sin, across=dy * cos - dx * sin, depth=depth), x, y


def _paint_surroundings(
    rng: np.random.Generator, tissue: np.ndarray, raster: HeartRaster, x: np.ndarray, y: np.ndarray
) -> None:
    """Chest around the heart: body with a subcutaneous fat ring, lungs, mediastinum, epicardial fat, aorta.

    They make the background non-uniform and put heart-like intensities (fat, vessel blood)
    outside the heart, so that a segmenter has to use shape, not brightness alone.
    """
    shape = tissue.shape
    centre = raster.heart.centre
    body_radii = rng.uniform([150.0, 105.0], [175.0, 125.0])
    body_centre = centre + rng.uniform([-50.0, 20.0], [-30.0, 35.0])
    body = np.broadcast_to(_elliptic_radius(x - body_centre[0], y - body_centre[1], *body_radii), shape)
    subcutaneous_fat = rng.uniform(6.0, 14.0) / body_radii.min()
    tissue[body < 1] = Tissue.SOFT_TISSUE
    tissue[(body < 1) & (body > 1 - subcutaneous_fat)] = Tissue.FAT
    for lung_offset, lung_low, lung_high in (
        ([60.0, 15.0], [35.0, 55.0], [48.0, 75.0]),
        ([-70.0, 35.0], [38.0, 55.0], [50.0, 75.0]),
    ):
        lung_centre = centre + np.array(lung_offset) + rng.uniform(-6.0, 6.0, size=2)
        lung = _elliptic_radius(x - lung_centre[0], y - lung_centre[1], *rng.uniform(lung_low, lung_high))
        tissue[np.broadcast_to(lung < 1, shape) & (body < 1 - subcutaneous_fat)] = Tissue.LUNG
    tissue[raster.grown(rng.uniform(6.0, 12.0))] = Tissue.SOFT_TISSUE
    tissue[raster.grown(np.clip(2.0 + 3.0 * _smooth_noise(rng, shape, sigma_voxels=4.0), 0.0, None))] = (
        Tissue.FAT
    )
    aorta_centre = centre + np.array([-15.0, 58.0]) + rng.uniform(-5.0, 5.0, size=2)
    aorta = _elliptic_radius(x - aorta_centre[0], y - aorta_centre[1], *(2 * [rng.uniform(9.0, 13.0)]))
    tissue[np.broadcast_to(aorta < 1, shape)] = Tissue.VESSEL_BLOOD


def _scar_mask(rng: np.random.Generator, raster: HeartRaster, myocardium: np.ndarray) -> np.ndarray:
    """One to three infarct-like blobs in the myocardium: an angular sector over part of the long
    axis, from the endocardium outwards (subendocardial) or through the wall (transmural), with
    ragged borders."""
    endo, epi = raster.lv_cavity(), raster.epicardium()
    with np.errstate(invalid="ignore", divide="ignore"):
        transmurality = np.nan_to_num((endo - 1) / ((endo - 1) + (1 - epi)), nan=0.0, posinf=0.0)
    angle = np.arctan2(raster.across, raster.along)
    ragged = 0.15 * _smooth_noise(rng, myocardium.shape, sigma_voxels=2.0)
    length = raster.heart.lv_length
    scar = np.zeros(myocardium.shape, dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        centre_angle = rng.uniform(-np.pi, np.pi)
        half_width = np.deg2rad(rng.uniform(20.0, 60.0))
        start = rng.uniform(0.0, 0.6) * length
        stop = start + rng.uniform(0.25, 0.6) * length
        reach = 1.0 if rng.random() < 0.5 else rng.uniform(0.3, 0.7)
        angular_distance = np.abs(np.angle(np.exp(1j * (angle - centre_angle))))
        scar |= (
            (angular_distance < half_width * (1 + ragged))
            & (transmurality < reach + ragged)
            & (raster.depth >= start)
            & (raster.depth <= stop)
        )
    return scar & myocardium


def draw_anatomy(domain: str, rng: np.random.Generator, size: int = 96) -> SubjectAnatomy:
    """A random subject of ``domain``: its voxel grid, tissue map and label map (no intensities yet)."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    grid = _draw_grid(domain, rng, size)
    slice_depths, apex_depth = _draw_slice_depths(rng, grid.shape[0], grid.spacing[2])
    raster, x, y = _raster_heart(grid, _draw_heart(rng, apex_depth), slice_depths)
    tissue = np.full(grid.shape, Tissue.AIR, dtype=np.uint8)
    _paint_surroundings(rng, tissue, raster, x, y)

    lv_blood = raster.lv_cavity() < 1
    myocardium = (raster.epicardium() < 1) & ~lv_blood
    rv_blood = (raster.rv_cavity() < 1) & (raster.epicardium() >= 1)
    # The RV free wall is myocardium that MS-CMRSeg leaves unlabelled; it outlines the RV in both domains.
    tissue[(raster.rv_cavity(raster.heart.rv_wall_thickness) < 1) & ~myocardium] = Tissue.MYOCARDIUM
    tissue[rv_blood] = Tissue.RV_BLOOD
    tissue[myocardium] = Tissue.MYOCARDIUM
    tissue[lv_blood] = Tissue.LV_BLOOD
    # Papillary muscles: myocardium-like tissue inside the blood pool but labelled as blood pool
    # (as in MS-CMRSeg), so that "dark means myocardium" is not the whole story.
    lv_scale = _ellipsoid_profile(raster.depth, raster.heart.lv_length)
    reach_along, reach_across = (0.7 * radius * lv_scale for radius in raster.heart.lv_radii)
    for angle in np.deg2rad(rng.uniform([110.0, 230.0], [150.0, 280.0])):
        muscle = _elliptic_radius(
            raster.along - reach_along * np.cos(angle),
            raster.across - reach_across * np.sin(angle),
            4.0 * lv_scale,
            4.0 * lv_scale,
        )
        tissue[(muscle < 1) & lv_blood] = Tissue.MYOCARDIUM
    if rng.random() < INTENSITY_MODELS[domain].scar_probability:
        tissue[_scar_mask(rng, raster, myocardium)] = Tissue.SCAR

    label = np.zeros(grid.shape, dtype=np.uint16)
    for structure, mask in (("RV", rv_blood), ("MYO", myocardium), ("LV", lv_blood)):
        label[mask] = PHANTOM_LABEL_VALUES[structure]
    return SubjectAnatomy(domain, grid, tissue, label)


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int], strength: float) -> np.ndarray:
    """A smooth multiplicative field (coil sensitivity) between exp(-strength) and exp(+strength).

    It is the exp of a random quadratic in normalised coordinates, scaled so that ``strength`` is its
    largest log-amplitude over the grid.
    """
    slices, rows, columns = shape
    z = np.linspace(-1.0, 1.0, slices)[:, None, None]
    y = np.linspace(-1.0, 1.0, rows)[None, :, None]
    x = np.linspace(-1.0, 1.0, columns)[None, None, :]
    terms = (x, y, x * y, x * x - 0.5, y * y - 0.5, 0.3 * z)
    polynomial = sum(c * t for c, t in zip(rng.normal(size=len(terms)), terms))
    return np.exp(strength * polynomial / max(float(np.abs(polynomial).max()), 1e-6))


def render_image(anatomy: SubjectAnatomy, rng: np.random.Generator) -> np.ndarray:
    """Image of an anatomy under its domain's sequence: jittered levels, texture, blur, bias, gains, Rician noise."""
    model = INTENSITY_MODELS[anatomy.domain]
    shape = anatomy.tissue.shape
    jitter = rng.uniform(1 - model.level_jitter, 1 + model.level_jitter, size=len(Tissue))
    levels = np.array([model.levels[t] * jitter[t] for t in Tissue])
    image = levels[anatomy.tissue] * (
        1.0 + model.texture_strength * _smooth_noise(rng, shape, sigma_voxels=1.5)
    )
    image = ndimage.gaussian_filter(image, sigma=(0.0, *2 * [_uniform(rng, model.blur_sigma_voxels)]))
    image *= _bias_field(rng, shape, model.bias_strength)
    image *= rng.uniform(1 - model.slice_gain_jitter, 1 + model.slice_gain_jitter, size=(shape[0], 1, 1))
    sigma = _uniform(rng, model.noise_sigma) * levels[Tissue.LV_BLOOD]
    magnitude = np.hypot(image + sigma * rng.standard_normal(shape), sigma * rng.standard_normal(shape))
    return (magnitude * _uniform(rng, model.global_scale)).astype(np.float32)


def _to_sitk(array: np.ndarray, grid: VoxelGrid) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing)
    image.SetDirection(grid.direction)
    image.SetOrigin(grid.origin)
    return image


def make_subject(domain: str, rng: np.random.Generator, size: int = 96) -> tuple[sitk.Image, sitk.Image]:
    """One random subject of ``domain`` ("source" or "target"): (float32 image, uint16 label map).

    Both are 3D short-axis stacks (size x size in-plane) with the same geometry; label values are
    0 and :data:`PHANTOM_LABEL_VALUES`.
    """
    anatomy = draw_anatomy(domain, rng, size)
    image = render_image(anatomy, rng)
    return _to_sitk(image, anatomy.grid), _to_sitk(anatomy.label, anatomy.grid)


def _range(bounds: tuple[float, float], unit: str = "") -> str:
    low, high = bounds
    return f"{low:g}{unit}" if low == high else f"{low:g}-{high:g}{unit}"


def _intensity_model_text(domain: str) -> str:
    acquisition, intensity = ACQUISITION_MODELS[domain], INTENSITY_MODELS[domain]
    levels = ", ".join(f"{tissue.name.lower()} {level:g}" for tissue, level in intensity.levels.items())
    return (
        f"### {domain}: {intensity.description}\n\n"
        f"- {_range(acquisition.slice_counts)} slices, in-plane spacing {_range(acquisition.in_plane_spacing_mm, ' mm')}, "
        f"slice spacing {_range(acquisition.slice_spacing_mm, ' mm')}, oblique direction cosines\n"
        f"- tissue levels: {levels}\n"
        f"- per subject: each level x (1 +- {intensity.level_jitter:g}), then all x {_range(intensity.global_scale)}\n"
        f"- texture {intensity.texture_strength:g}, in-plane blur sigma {_range(intensity.blur_sigma_voxels)} voxels, "
        f"bias field strength {intensity.bias_strength:g}, slice gain +- {intensity.slice_gain_jitter:g}\n"
        f"- Rician noise sigma {_range(intensity.noise_sigma)} x LV blood level; "
        f"scar in {intensity.scar_probability:.0%} of subjects\n"
    )


def _readme_text(subjects: int, seed: int, size: int) -> str:
    values = "\n".join(f"| {value} | {name} |" for name, value in PHANTOM_LABEL_VALUES.items())
    return (
        "# CardiacUDA synthetic cardiac phantom\n\n"
        f"Written by `CardiacUDALib.phantom.write_phantom_dataset` with seed {seed}:\n"
        f"{subjects} source and {subjects} target subjects, {size} x {size} pixels in-plane.\n"
        "Source and target subjects are different random hearts (unpaired). The target labels are for\n"
        "evaluation only: an adaptation method must not train on them.\n\n"
        "## Layout\n\n"
        "- `source/<case>_image.nii.gz` + `source/<case>_label.nii.gz`: bSSFP-like, labelled\n"
        "- `target/<case>_image.nii.gz` + `target/<case>_label.nii.gz`: LGE-like\n\n"
        "Cases are named `case000`, `case001`, ... Images are float32 and label maps uint16, with identical\n"
        "geometry; the last axis of each file is the short-axis slice axis (base to apex).\n\n"
        "## Label values (MS-CMRSeg)\n\n| value | structure |\n|---|---|\n| 0 | background |\n"
        f"{values}\n\n"
        "MYO is the LV myocardium (scar included); LV and RV are the blood pools (papillary muscles included).\n\n"
        "## Intensity models\n\n" + "\n".join(_intensity_model_text(domain) for domain in DOMAINS)
    )


def write_phantom_dataset(
    out_dir: str | Path, subjects: int, seed: int = 0, size: int = 96
) -> PhantomDataset:
    """Write ``subjects`` source and ``subjects`` target cases plus a README; deterministic for a seed.

    Every subject draws from its own random stream (seed, domain, index): source and target
    hearts differ, and asking for more subjects leaves the first ones unchanged.
    """
    if subjects < 1:
        raise ValueError(f"subjects must be at least 1, got {subjects}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    root = check_writable_folder(out_dir, "the phantom folder")
    cases: dict[str, list[VolumeCase]] = {domain: [] for domain in DOMAINS}
    for domain_index, domain in enumerate(DOMAINS):
        for index in range(subjects):
            name = f"case{index:03d}"
            case = VolumeCase(
                name, root / domain / f"{name}_image.nii.gz", root / domain / f"{name}_label.nii.gz"
            )
            volumes = make_subject(domain, np.random.default_rng([seed, domain_index, index]), size)
            for volume, path in zip(volumes, (case.image, case.label)):
                with atomic_path(path) as temporary:
                    sitk.WriteImage(volume, str(temporary), useCompression=True)
            cases[domain].append(case)
    write_text_atomic(root / "README.md", _readme_text(subjects, seed, size))
    return PhantomDataset(root=root, source=cases["source"], target=cases["target"])
