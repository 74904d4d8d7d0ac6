"""Random affine and elastic deformation of training slices: the geometric augmentation of the
domain-generalisation papers (GIN + IPA, Ouyang et al. 2022; SLAug, Su et al. 2023, who reuse it).

Per slice, one random affine map about the slice centre (rotation, shear, isotropic scale, shift) and
one smooth random displacement field (Simard et al. 2003: uniform noise in [-1, 1] smoothed by a
Gaussian of ``sigma`` pixels, times ``alpha``) are composed into one sampling grid; the image channels
are resampled linearly, the label by its nearest neighbour, so labels stay class indices. Ranges are
those of the GIN + IPA release (``transform_utils.my_augv``): rotation and shear up to 20 degrees,
shift up to 15 pixels, scale 0.5-1.5, elastic alpha 20 and sigma 5.

Draws come from the slice's own :class:`numpy.random.Generator` (``data.SlicePool.batch``), so a
resumed run deforms its batches exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class DeformationRanges:
    rotation_degrees: float = 20.0
    shear_degrees: float = 20.0
    shift_pixels: float = 15.0
    scale: tuple[float, float] = (0.5, 1.5)
    elastic_alpha: float = 20.0
    elastic_sigma: float = 5.0


PAPER_RANGES = DeformationRanges()


def random_sampling_grid(
    height: int, width: int, rng: np.random.Generator, ranges: DeformationRanges = PAPER_RANGES
) -> np.ndarray:
    """``[2, H, W]``: for each output pixel, the (row, column) of the input it is read from."""
    rotation = math.radians(rng.uniform(-ranges.rotation_degrees, ranges.rotation_degrees))
    shear = math.radians(rng.uniform(-ranges.shear_degrees, ranges.shear_degrees))
    scale = rng.uniform(*ranges.scale)
    shift = rng.uniform(-ranges.shift_pixels, ranges.shift_pixels, size=2)
    # output -> input: undo the scale, then the shear and the rotation (an inverse map, so a scale
    # above 1 enlarges the anatomy)
    cosine, sine = math.cos(rotation), math.sin(rotation)
    rotate = np.array([[cosine, -sine], [sine, cosine]])
    shear_rows = np.array([[1.0, math.tan(shear)], [0.0, 1.0]])
    inverse = rotate @ shear_rows / scale
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    offsets = np.stack([rows - centre[0], columns - centre[1]]).reshape(2, -1)
    grid = (inverse @ offsets).reshape(2, height, width) + (centre - shift)[:, None, None]
    for axis in range(2):
        noise = rng.uniform(-1.0, 1.0, size=(height, width))
        grid[axis] += (
            ndimage.gaussian_filter(noise, ranges.elastic_sigma, mode="constant") * ranges.elastic_alpha
        )
    return grid


def deform_slice(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """One slice ``[k, H, W]`` (and its label ``[H, W]``) through one random deformation.

    Outside the input, the image takes its own minimum (the background of a normalised slice) and the
    label takes background (0)."""
    grid = random_sampling_grid(image.shape[-2], image.shape[-1], rng)
    fill = float(image.min())
    deformed = np.stack(
        [ndimage.map_coordinates(channel, grid, order=1, mode="constant", cval=fill) for channel in image]
    )
    if label is None:
        return deformed, None
    return deformed, ndimage.map_coordinates(label, grid, order=0, mode="constant", cval=0)
