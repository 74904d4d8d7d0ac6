"""Volume nodes <-> SimpleITK images and files, with exact geometry.

Slicer stores a volume's grid as an IJK-to-RAS matrix; ITK (and so SimpleITK and every file the
library writes) uses LPS. The two differ by a sign flip of the first two world axes, applied to both
the origin and the direction, so a conversion is exact (no resampling): voxels are copied as they are,
and arrays are in (K, J, I) order on both sides.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import slicer.util
from vtkmodules.vtkCommonMath import vtkMatrix4x4

from CardiacUDALib.cases import stem_of
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import check_image_values, read_image

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])  # its own inverse
_EDGE_TOLERANCE = 1e-6  # in voxels
SCALAR_VOLUME_CLASS = "vtkMRMLScalarVolumeNode"
LABELMAP_VOLUME_CLASS = "vtkMRMLLabelMapVolumeNode"


def ijk_to_ras(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix as numpy."""
    matrix = vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def ijk_to_ras_of_image(image: sitk.Image) -> np.ndarray:
    """The IJK-to-RAS matrix of a SimpleITK (LPS) image."""
    matrix = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = RAS_FROM_LPS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = RAS_FROM_LPS @ np.array(image.GetOrigin())
    return matrix


def _check_untransformed(node: slicer.vtkMRMLVolumeNode) -> None:
    """A parent transform moves the node in the views but not its voxels: exporting it would misplace it."""
    if node.GetParentTransformNode() is not None:
        raise InputDataError(
            f"volume '{node.GetName()}' is under a transform; harden it first "
            "(Data module: right-click the volume, 'Harden transform')"
        )


def image_from_volume_node(node: slicer.vtkMRMLVolumeNode) -> sitk.Image:
    """A copy of the node's voxels as a SimpleITK image in LPS, geometry exactly the node's."""
    if node is None or node.GetImageData() is None:
        raise InputDataError(f"volume '{node.GetName() if node else None}' has no image data")
    _check_untransformed(node)
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise InputDataError(
            f"volume '{node.GetName()}' is a vector or colour volume; a scalar volume is needed"
        )
    return image_on_volume_grid(np.array(slicer.util.arrayFromVolume(node)), node)


def _direction_ras(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    matrix = vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)[:3, :3]


def image_on_volume_grid(array_kji: np.ndarray, node: slicer.vtkMRMLVolumeNode) -> sitk.Image:
    """A SimpleITK image of ``array_kji`` placed on ``node``'s voxel grid (LPS).

    Spacing, origin and directions are copied as the node stores them (not recomputed from the
    IJK-to-RAS matrix), and RAS <-> LPS only flips signs, so the geometry round-trips bit for bit.
    """
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing(node.GetSpacing())
    image.SetDirection((RAS_FROM_LPS @ _direction_ras(node)).ravel().tolist())
    image.SetOrigin((RAS_FROM_LPS @ np.array(node.GetOrigin())).tolist())
    return image


def update_volume_node_from_image(node: slicer.vtkMRMLVolumeNode, image: sitk.Image) -> None:
    """Replace the node's voxels and geometry with the image's."""
    array = sitk.GetArrayFromImage(image)
    if array.dtype == np.int64:  # Slicer's array helpers refuse int64 (no VTK scalar type for it here)
        array = array.astype(np.int32)
    direction = np.eye(4)
    direction[:3, :3] = RAS_FROM_LPS @ np.array(image.GetDirection()).reshape(3, 3)
    node.SetSpacing(image.GetSpacing())
    node.SetOrigin((RAS_FROM_LPS @ np.array(image.GetOrigin())).tolist())
    node.SetIJKToRASDirectionMatrix(slicer.util.vtkMatrixFromArray(direction))
    slicer.util.updateVolumeFromArray(node, array)


def add_volume_node(
    scene: slicer.vtkMRMLScene, image: sitk.Image, name: str, class_name: str = SCALAR_VOLUME_CLASS
) -> slicer.vtkMRMLVolumeNode:
    """A new volume node (scalar or label map) in ``scene`` holding ``image``, with display nodes."""
    node = scene.AddNewNodeByClass(class_name, name)
    update_volume_node_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def read_image_file(path: Path) -> sitk.Image:
    """A 3D scalar image from a file, with a message a user can act on when it is not one."""
    if not Path(path).is_file():
        raise InputDataError(f"{path} does not exist")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputDataError(f"cannot read {path} as an image (NRRD, NIfTI, MHA): {error}") from error
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputDataError(f"{path} is not a 3D scalar volume")
    return image


def _roi_corners_ras(roi: slicer.vtkMRMLMarkupsROINode) -> np.ndarray:
    """The 8 corners of a (possibly rotated) box ROI in RAS, shape (8, 3)."""
    half = np.array(roi.GetSize()) / 2.0
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    object_to_world = slicer.util.arrayFromVTKMatrix(roi.GetObjectToWorldMatrix())
    corners = np.c_[signs * half, np.ones(8)]
    return (object_to_world @ corners.T).T[:, :3]


def add_box_roi(
    scene: slicer.vtkMRMLScene, box: dict[str, list[float]], name: str
) -> slicer.vtkMRMLMarkupsROINode:
    """A box ROI node of a region the library reports (``PreparedVolume.window_box``: the LPS centre,
    the size along the image axes and their direction), in Slicer's RAS."""
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = RAS_FROM_LPS @ np.reshape(box["direction"], (3, 3))
    object_to_node[:3, 3] = RAS_FROM_LPS @ np.asarray(box["centre"], dtype=float)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(object_to_node))
    roi.SetSize(*(float(value) for value in box["size"]))
    return roi


def crop_image_to_roi(image: sitk.Image, roi: slicer.vtkMRMLMarkupsROINode, what: str) -> sitk.Image:
    """The voxels of ``image`` whose centres lie inside the ROI's bounding box in the image's index space,
    on the same grid (a sub-grid: no resampling).

    Cropping on the voxel grid keeps every prediction on a sub-grid of the original volume, so putting it
    back into a segmentation of the whole volume is exact.
    """
    ras_to_ijk = np.linalg.inv(ijk_to_ras_of_image(image))
    corners_ijk = (ras_to_ijk @ np.c_[_roi_corners_ras(roi), np.ones(8)].T).T[:, :3]
    size = np.array(image.GetSize())
    # Voxel centres sit at whole indices; a tolerance keeps a box edge on a voxel's edge (x.5) stable.
    lower = np.clip(np.ceil(corners_ijk.min(axis=0) - _EDGE_TOLERANCE).astype(int), 0, size)
    upper = np.clip(np.floor(corners_ijk.max(axis=0) + _EDGE_TOLERANCE).astype(int) + 1, 0, size)
    if np.any(upper - lower < 1):
        raise InputDataError(f"the ROI '{roi.GetName()}' does not overlap {what}: move it over the heart")
    return image[int(lower[0]) : int(upper[0]), int(lower[1]) : int(upper[1]), int(lower[2]) : int(upper[2])]


def load_volume_file(
    scene: slicer.vtkMRMLScene, path: Path, name: str | None = None
) -> slicer.vtkMRMLVolumeNode:
    """A scalar volume node from an image file (NaN, infinite and constant images refused, naming the
    file), named after the file unless ``name`` is given."""
    path = Path(path)
    return add_volume_node(scene, read_image(path), name or stem_of(path))


def check_volume_values(node: slicer.vtkMRMLVolumeNode, image: sitk.Image) -> sitk.Image:
    """``image`` (the node's voxels) if it holds no NaN or infinite voxel and is not constant."""
    check_image_values(sitk.GetArrayViewFromImage(image), f"volume '{node.GetName()}'")
    return image
