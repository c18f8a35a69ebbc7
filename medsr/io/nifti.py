"""NIfTI-1 reading and writing with nibabel, keeping qform/sform codes, units and description."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from medsr.errors import MedsrError
from medsr.io.volume import Volume

logger = logging.getLogger(__name__)

_RGB_DTYPE = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
_LENGTH_UNITS = {"mm": 1.0, "micron": 1.0, "meter": 1000.0, "unknown": 1.0}


def read_nifti(path: Path) -> Volume:
    """Read ``.nii``/``.nii.gz`` into a `Volume` (affine in mm, or µm for micron headers)."""
    image = nib.load(str(path))
    header = image.header
    data = np.asanyarray(image.dataobj)
    if data.dtype.names:  # RGB24 and RGBA32 come as structured arrays
        data = np.stack([data[name] for name in data.dtype.names[:3]], axis=-1)
    elif data.ndim >= 4 and all(n == 1 for n in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    space_unit = header.get_xyzt_units()[0] or "unknown"
    affine = np.array(image.affine, dtype=np.float64)
    affine[:3, :] *= _LENGTH_UNITS.get(space_unit, 1.0)
    meta = {
        "format": "nifti",
        "unit": "um" if space_unit == "micron" else "mm",
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "description": header["descrip"].item().decode("latin-1").rstrip("\x00"),
    }
    if data.ndim != 3 and not (data.ndim == 4 and data.shape[3] == 3 and meta_is_rgb(data)):
        raise MedsrError(f"expected a 3D volume in '{path}', got array shape {data.shape}")
    return Volume(array=data, affine=affine, meta=meta)


def meta_is_rgb(data: np.ndarray) -> bool:
    """True for a (X, Y, Z, 3) uint8 array, the only 4D layout treated as colour."""
    return data.dtype == np.uint8 and data.shape[-1] == 3


def write_nifti(volume: Volume, path: Path) -> None:
    """Write `volume` as NIfTI-1 with identical qform and sform.

    Both transforms hold the same affine so that every reader (nibabel prefers the sform, ITK and
    3D Slicer may use either) places the image identically. Codes are kept from the input; a
    missing code is taken from the other form, or set to 1 (scanner) when both are missing.
    """
    array = volume.array
    if volume.num_channels == 3:
        array = np.ascontiguousarray(array.astype(np.uint8)).view(_RGB_DTYPE)[..., 0]
    image = nib.Nifti1Image(array, volume.affine)
    qform_code = int(volume.meta.get("qform_code", 0))
    sform_code = int(volume.meta.get("sform_code", 0))
    qform_code = qform_code or sform_code or 1
    sform_code = sform_code or qform_code
    image.set_qform(volume.affine, code=qform_code)
    image.set_sform(volume.affine, code=sform_code)
    residual = np.abs(image.header.get_qform() - volume.affine).max()
    if residual > 1e-4 * max(1.0, float(np.abs(volume.affine).max())):
        logger.warning("affine has shear; the qform approximates it (max error %.2g)", residual)
    image.header.set_xyzt_units(xyz="micron" if volume.unit == "um" else "mm")
    description = volume.meta.get("description", "") or "medsr"
    image.header["descrip"] = description.encode("latin-1", "replace")[:79]
    nib.save(image, str(path))
