"""What a volume file's own bytes hold, where ITK's readers and writers do not say.

ITK's NIfTI reader turns NaN into 0 and reads the missing part of a truncated file as zeros; its
MetaImage reader reports a truncated file as "No such file or directory"; its NIfTI writer leaves an
empty or cut-short file on a full disk without an error. The checks here read the header and count
the voxel data, so that a damaged input is refused by name and a failed write is reported as one.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CardiacUDALib.errors import InputDataError

# NIfTI-1 and NIfTI-2 headers: (header size, struct of datatype, dim[0..7] and vox_offset at their offsets)
_NIFTI_LAYOUTS = {
    348: ((70, "h"), (40, "8h"), (108, "f")),
    540: ((12, "h"), (16, "8q"), (168, "q")),
}
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64
_SCAN_CHUNK_BYTES = 1 << 22


def _nifti_stored_voxels(path: Path) -> int:
    """The NaN and infinite voxels a NIfTI file stores, counted from its own bytes; a file whose voxel
    data is cut short (a copy or download that stopped) is refused."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
            for order in "<>":
                if len(header) >= 4 and struct.unpack(f"{order}i", header[:4])[0] in _NIFTI_LAYOUTS:
                    break
            else:
                return 0  # not a header we know: ITK has read it, leave it to ITK
            (type_at, type_format), (dim_at, dim_format), (offset_at, offset_format) = _NIFTI_LAYOUTS[
                struct.unpack(f"{order}i", header[:4])[0]
            ]
            datatype = struct.unpack_from(order + type_format, header, type_at)[0]
            bits = struct.unpack_from(order + "h", header, type_at + 2)[0]  # bitpix follows datatype
            dims = struct.unpack_from(order + dim_format, header, dim_at)
            voxels = int(np.prod([max(int(d), 1) for d in dims[1 : 1 + int(dims[0])]]))
            dtype = np.dtype(order + _NIFTI_FLOAT_TYPES.get(datatype, f"V{max(int(bits) // 8, 1)}"))
            stream.seek(int(struct.unpack_from(order + offset_format, header, offset_at)[0]))
            non_finite, remaining = 0, voxels * dtype.itemsize
            while remaining > 0:
                chunk = stream.read(min(remaining, _SCAN_CHUNK_BYTES))
                if not chunk:
                    break
                remaining -= len(chunk)
                if datatype in _NIFTI_FLOAT_TYPES:
                    chunk = chunk[: len(chunk) - len(chunk) % dtype.itemsize]
                    non_finite += int(np.count_nonzero(~np.isfinite(np.frombuffer(chunk, dtype))))
    except gzip.BadGzipFile:
        return 0  # not gzip data at all: ITK says what it is not
    except (EOFError, OSError, zlib.error) as error:
        raise InputDataError(
            f"{path} is damaged or cut short ({error}); copy or download it again"
        ) from error
    if remaining > 0:
        raise InputDataError(
            f"{path} is cut short: it holds {voxels * dtype.itemsize - remaining} of the "
            f"{voxels * dtype.itemsize} bytes of voxel data its header announces; copy or download it again"
        )
    return non_finite


# MetaImage element types and their sizes in bytes (MetaIO's MET_* names).
_METAIMAGE_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_FLOAT": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_DOUBLE": 8,
}
_METAIMAGE_HEADER_BYTES = 1 << 16


def _metaimage_data_bytes(path: Path) -> tuple[int, int] | None:
    """(bytes of voxel data stored, bytes the header announces) of a MetaImage file with its data
    inside (``ElementDataFile = LOCAL``); None where the header does not say enough to count."""
    with open(path, "rb") as stream:
        head = stream.read(_METAIMAGE_HEADER_BYTES)
    fields: dict[str, str] = {}
    position = 0
    for line in head.splitlines(keepends=True):
        position += len(line)
        key, _, value = line.decode("latin-1").partition("=")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    else:
        return None
    if fields["ElementDataFile"] != "LOCAL":
        return None
    stored = path.stat().st_size - position
    if fields.get("CompressedData", "False").lower() == "true":
        size = fields.get("CompressedDataSize", "")
        return (stored, int(size)) if size.isdigit() else None
    element = _METAIMAGE_BYTES.get(fields.get("ElementType", ""))
    dims = fields.get("DimSize", "").split()
    if element is None or not dims or not all(d.isdigit() for d in dims):
        return None
    channels = int(fields.get("ElementNumberOfChannels", "1") or 1)
    return stored, int(np.prod([int(d) for d in dims])) * element * channels


def stored_non_finite_voxels(path: Path) -> int:
    """The NaN and infinite voxels a volume file stores (counted for NIfTI, 0 for other formats); a
    NIfTI or MetaImage file whose voxel data is cut short is refused."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _nifti_stored_voxels(path)
    if name.endswith(".mha"):
        counts = _metaimage_data_bytes(path)
        if counts is not None and counts[0] < counts[1]:
            raise InputDataError(
                f"{path} is cut short: it holds {counts[0]} of the {counts[1]} bytes of voxel data its "
                "header announces; copy or download it again"
            )
    return 0


def check_written(path: Path, size: tuple[int, ...]) -> None:
    """Read back the header and count the data of a file just written with ``size`` voxels per axis:
    a write that left an empty or cut-short file fails here (a RuntimeError, as ITK's own)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        stored_non_finite_voxels(path)
    except (RuntimeError, InputDataError) as error:
        raise RuntimeError(f"{path} does not read back whole") from error
    if tuple(reader.GetSize()) != tuple(size):
        raise RuntimeError(f"{path} reads back with size {reader.GetSize()}, not {size}")
