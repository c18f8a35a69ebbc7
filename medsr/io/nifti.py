"""NIfTI-1 reading and writing with nibabel, keeping qform/sform codes, units and description."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from medsr.errors import MedsrError
from medsr.io.volume import Volume

logger = logging.getLogger(__name__)

_RGB_DTYPE = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
_LENGTH_UNITS = {"mm": 1.0, "micron": 1.0, "meter": 1000.0, "unknown": 1.0}


def nifti_frames(path: Path) -> int:
    """Number of volumes in a NIfTI file from its header (4D series: DWI, fMRI); 1 for 3D."""
    image = nib.load(str(path))
    shape = image.shape
    if image.get_data_dtype().names or len(shape) < 4:
        return 1
    return int(np.prod(shape[3:]))


def read_nifti(path: Path, frame: int | None = None, *, image=None) -> Volume:
    """Read ``.nii``/``.nii.gz`` into a `Volume` (affine in mm, or µm for micron headers).

    Colour only for the RGB24 and RGBA32 datatypes (as (X, Y, Z, 3)); any other 4D file is a
    series of volumes, of which `frame` is read (``meta["frames"]``, ``meta["frame_spacing"]``
    and ``meta["time_unit"]`` say what the series was, for writing it back as 4D). `image`: the
    file already loaded by nibabel (`read_nifti_frames`).
    """
    image = nib.load(str(path)) if image is None else image
    header = image.header
    frames = nifti_frames(path)
    if frames > 1:
        if frame is None:
            raise MedsrError(f"'{path}' holds {frames} volumes; read one with frame=")
        if not 0 <= frame < frames:
            raise MedsrError(f"'{path}' has {frames} volumes; no volume {frame}")
        data = np.asanyarray(image.dataobj[..., frame])
    else:
        data = np.asanyarray(image.dataobj)
    if data.dtype.names:  # RGB24 and RGBA32 come as structured arrays
        data = np.stack([data[name] for name in data.dtype.names[:3]], axis=-1)
    elif data.ndim >= 4 and all(n == 1 for n in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    space_unit, time_unit = header.get_xyzt_units()
    space_unit = space_unit or "unknown"
    affine = np.array(image.affine, dtype=np.float64)
    affine[:3, :] *= _LENGTH_UNITS.get(space_unit, 1.0)
    meta = {
        "format": "nifti",
        "unit": "um" if space_unit == "micron" else "mm",
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "description": header["descrip"].item().decode("latin-1").rstrip("\x00"),
    }
    if frames > 1:
        meta.update(
            frames=frames,
            frame_spacing=float(header["pixdim"][4]),
            time_unit=time_unit or "unknown",
        )
    if data.ndim != 3 and not (data.ndim == 4 and data.shape[3] == 3):
        raise MedsrError(f"expected a 3D volume in '{path}', got array shape {data.shape}")
    return Volume(array=data, affine=affine, meta=meta)


def read_nifti_frames(path: Path) -> Iterator[Volume]:
    """Every volume of a NIfTI series, in order, each as `read_nifti(path, frame)` gives it, from
    one open file read forward once.

    Reading frame by frame with `read_nifti` would decompress a ``.nii.gz`` from its start for
    every frame (quadratic in the number of frames); here the one kept file handle moves forward
    from one frame's block to the next (frames are the slowest axis), so the file is
    decompressed once, and only one frame is in memory at a time.
    """
    image = nib.load(str(path), keep_file_open=True)
    try:
        for frame in range(nifti_frames(path)):
            yield read_nifti(path, frame, image=image)
    finally:
        del image  # the last reference: nibabel's array proxy closes the kept file


def write_nifti(volume: Volume, path: Path, frames: list[Volume] | None = None) -> None:
    """Write `volume` as NIfTI-1 with identical qform and sform.

    Both transforms hold the same affine so that every reader (nibabel prefers the sform, ITK and
    3D Slicer may use either) places the image identically. Codes are kept from the input; a
    missing code is taken from the other form, or set to 1 (scanner) when both are missing.
    """
    array = volume.array
    if frames:  # a 4D series: the volumes stacked on the fourth axis
        array = np.stack([f.array for f in frames], axis=3)
    elif volume.num_channels == 3:
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
    time_unit = volume.meta.get("time_unit", "unknown") if frames else "unknown"
    image.header.set_xyzt_units(xyz="micron" if volume.unit == "um" else "mm", t=time_unit)
    if frames:
        image.header["pixdim"][4] = volume.meta.get("frame_spacing", 1.0)
    description = volume.meta.get("description", "") or "medsr"
    image.header["descrip"] = description.encode("latin-1", "replace")[:79]
    nib.save(image, str(path))
