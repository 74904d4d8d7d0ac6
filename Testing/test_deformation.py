"""Random affine + elastic deformation of training slices: labels move with their image and stay labels."""

from __future__ import annotations

import numpy as np

from CardiacUDALib.data import augment_batch
from CardiacUDALib.deformation import DeformationRanges, deform_slice, random_sampling_grid


def _slice(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Two channels equal to the label's class value (image and label tell the same story)."""
    label = np.zeros((size, size), dtype=np.int64)
    label[16:40, 20:44] = 1
    label[24:32, 28:36] = 2
    image = np.stack([label.astype(np.float32), 2 * label.astype(np.float32)])
    return image, label


def test_the_label_moves_with_the_image_and_keeps_its_classes():
    image, label = _slice()
    for seed in range(5):
        deformed, deformed_label = deform_slice(image, label, np.random.default_rng(seed))
        assert deformed.shape == image.shape and deformed_label.shape == label.shape
        assert set(np.unique(deformed_label)) <= {0, 1, 2}
        assert not np.array_equal(deformed_label, label)
        # where the resampled image is a whole class value, the label has that class
        exact = np.isclose(deformed[0], np.round(deformed[0]), atol=1e-6)
        agreement = (deformed_label[exact] == np.round(deformed[0][exact])).mean()
        assert agreement > 0.98


def test_a_seed_reproduces_the_deformation():
    image, label = _slice()
    first = deform_slice(image, label, np.random.default_rng(7))
    second = deform_slice(image, label, np.random.default_rng(7))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_without_range_the_grid_is_the_identity_and_a_pure_scale_grows_the_anatomy():
    still = DeformationRanges(0, 0, 0, (1.0, 1.0), 0, 5)
    grid = random_sampling_grid(8, 10, np.random.default_rng(0), still)
    rows, columns = np.meshgrid(np.arange(8), np.arange(10), indexing="ij")
    np.testing.assert_allclose(grid, np.stack([rows, columns]), atol=1e-9)
    image, label = _slice()
    zoom = DeformationRanges(0, 0, 0, (1.5, 1.5), 0, 5)
    from scipy import ndimage

    grown = ndimage.map_coordinates(
        label, random_sampling_grid(64, 64, np.random.default_rng(0), zoom), order=0
    )
    assert (grown > 0).sum() > 1.8 * (label > 0).sum()


def test_augmenting_a_batch_with_deformation_keeps_target_batches_without_labels():
    image, label = _slice()
    images, labels = augment_batch(
        np.stack([image, image]), None, [np.random.default_rng(0), np.random.default_rng(1)], deform=True
    )
    assert labels is None and images.shape == (2, 2, 64, 64)
    images, labels = augment_batch(
        np.stack([image]), np.stack([label]), [np.random.default_rng(0)], deform=True
    )
    assert labels.shape == (1, 64, 64) and set(np.unique(labels)) <= {0, 1, 2}
