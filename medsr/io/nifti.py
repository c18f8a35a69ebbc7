"""NIfTI-1 reading and writing with nibabel, keeping qform/sform codes, units, description and the
stored type of scaled integers (scl_slope/scl_inter)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from medsr.errors import MedsrError
from medsr.io.volume import Volume, scaled_values

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


def _stored_scaling(image: nib.Nifti1Image) -> dict | None:
    """Stored type, slope and intercept of integers stored scaled (CT: int16, inter -1024);
    None for data without scaling (nibabel reads a slope of 0 or NaN as none)."""
    dtype = image.get_data_dtype()
    slope, inter = float(image.dataobj.slope), float(image.dataobj.inter)
    if dtype.names or dtype.kind not in "iu" or (slope, inter) == (1.0, 0.0):
        return None
    return {"dtype": dtype.name, "slope": slope, "inter": inter}


def _stored_integers(array: np.ndarray, scaling: dict) -> np.ndarray | None:
    """`array` as the integers of `scaling` when they give exactly its values (`scaled_values`),
    else None: the file then holds float32, never a rounded copy of other values."""
    if array.dtype.kind != "f" or array.ndim == 0:
        return None
    slope, inter = float(scaling["slope"]), float(scaling["inter"])
    stored = np.empty(array.shape, np.dtype(scaling["dtype"]))
    info = np.iinfo(stored.dtype)
    for row in range(array.shape[0]):  # row by row: no full-size float64 temporary
        raw = np.rint((array[row].astype(np.float64) - inter) / slope)
        if not (np.all(raw >= info.min) and np.all(raw <= info.max)):  # NaN fails too
            return None
        stored[row] = raw
        if not np.array_equal(scaled_values(stored[row], scaling), array[row]):
            return None
    return stored


def read_nifti(path: Path, frame: int | None = None, *, image=None) -> Volume:
    """Read ``.nii``/``.nii.gz`` into a `Volume` (affine in mm, or µm for micron headers).

    Colour only for the RGB24 and RGBA32 datatypes (as (X, Y, Z, 3)); any other 4D file is a
    series of volumes, of which `frame` is read (``meta["frames"]``, ``meta["frame_spacing"]``
    and ``meta["time_unit"]`` say what the series was, for writing it back as 4D). Integers
    stored with a slope and intercept come in world units, float32 (not nibabel's float64), with
    ``meta["scaling"]`` to write them back as the same integers (`medsr.io.volume.scaled_values`).
    `image`: the file already loaded by nibabel (`read_nifti_frames`).
    """
    image = nib.load(str(path)) if image is None else image
    header = image.header
    scaling = _stored_scaling(image)
    frames = nifti_frames(path)
    if frames > 1:
        if frame is None:
            raise MedsrError(f"'{path}' holds {frames} volumes; read one with frame=")
        if not 0 <= frame < frames:
            raise MedsrError(f"'{path}' has {frames} volumes; no volume {frame}")
        data = np.asanyarray(image.dataobj[..., frame])
    else:
        data = np.asanyarray(image.dataobj.get_unscaled() if scaling else image.dataobj)
    if scaling:
        if data.dtype.kind == "f":  # a frame comes scaled, float64: its integers are exact
            data = np.rint((data - scaling["inter"]) / scaling["slope"])
        data = scaled_values(data.astype(scaling["dtype"]), scaling)
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
    if scaling:
        meta["scaling"] = scaling
    if frames > 1:
        meta.update(
            frames=frames,
            frame_spacing=float(header["pixdim"][4]),
            time_unit=time_unit or "unknown",
        )
    if data.ndim != 3 and not (data.ndim == 4 and data.shape[3] == 3):
        raise MedsrError(f"expected a 3D volume in '{path}', got array shape {data.shape}")
    return Volume(array=data, affine=affine, meta=meta)


def _xform_code(meta: dict) -> int:
    """The code of both forms: that of the transform the affine was read from.

    The written affine is the one nibabel read (the sform when its code is set, else the qform),
    so both forms get that transform's code. A NIfTI with both codes 0 has an affine made from
    the voxel sizes alone; it gets 2 ('aligned', nibabel's code for an affine set by a program),
    not 1 ('scanner'). A volume from another format (DICOM, NRRD, MHA: scanner coordinates) gets
    1, as ITK writes.
    """
    sform_code, qform_code = meta.get("sform_code"), meta.get("qform_code")
    if sform_code or qform_code:
        return int(sform_code or qform_code)
    return 1 if sform_code is None and qform_code is None else 2


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
    """Write `volume` as NIfTI-1 with identical qform and sform, both with `_xform_code`.

    Both transforms hold the same affine so that every reader (nibabel prefers the sform, ITK and
    3D Slicer may use either) places the image identically. An array read from scaled integers
    (``meta["scaling"]``) is written as the same integer type, slope and intercept when those
    give exactly its values, and as float32 otherwise.
    """
    array = volume.array
    if frames:  # a 4D series: the volumes stacked on the fourth axis
        array = np.stack([f.array for f in frames], axis=3)
    elif volume.num_channels == 3:
        array = np.ascontiguousarray(array.astype(np.uint8)).view(_RGB_DTYPE)[..., 0]
    scaling = volume.meta.get("scaling")
    stored = _stored_integers(array, scaling) if scaling and not array.dtype.names else None
    if scaling and stored is None:
        logger.info("values are not %s integers with the input's scaling: float", scaling["dtype"])
    image = _nifti_image(volume, array if stored is None else stored, stored is not None, frames)
    nib.save(image, str(path))


def _nifti_image(volume: Volume, data: np.ndarray, scaled: bool, series) -> nib.Nifti1Image:
    """The image `write_nifti` saves: `data` (the stored integers where `scaled`) with
    `volume`'s affine, forms, units, frame spacing (a `series`) and description."""
    scaling = volume.meta.get("scaling")
    image = nib.Nifti1Image(data, volume.affine)
    if scaled:  # nibabel keeps the header's scaling for data of the header's type
        image.header.set_slope_inter(scaling["slope"], scaling["inter"])
    code = _xform_code(volume.meta)
    image.set_qform(volume.affine, code=code)
    image.set_sform(volume.affine, code=code)
    residual = np.abs(image.header.get_qform() - volume.affine).max()
    if residual > 1e-4 * max(1.0, float(np.abs(volume.affine).max())):
        logger.warning("affine has shear; the qform approximates it (max error %.2g)", residual)
    time_unit = volume.meta.get("time_unit", "unknown") if series else "unknown"
    image.header.set_xyzt_units(xyz="micron" if volume.unit == "um" else "mm", t=time_unit)
    if series:
        image.header["pixdim"][4] = volume.meta.get("frame_spacing", 1.0)
    description = volume.meta.get("description", "") or "medsr"
    image.header["descrip"] = description.encode("latin-1", "replace")[:79]
    return image


def write_nifti_frames(
    template: Volume, frames: Callable[[], Iterable[np.ndarray]], path: Path
) -> None:
    """Write a 4D series frame by frame, as `write_nifti` (`template`, frames) writes it, byte
    for byte, without ever holding more than one frame.

    NIfTI stores the fourth axis slowest, so each frame is one contiguous block after the
    header: the header is written first, then each frame's bytes (through nibabel's opener:
    the same gzip stream as ``nib.save``). `frames()` is called twice: once to find the stored
    type (the frames' common type; the input's scaled integers only when every frame is exactly
    such integers, as `write_nifti` decides for the stacked series), once to write.

    Args:
        template: affine and meta of the series (those of its first frame).
        frames: returns the (X, Y, Z) arrays in order, each time it is called.
        path: the ``.nii`` / ``.nii.gz`` file.
    """
    from nibabel.arraywriters import get_slope_inter, make_array_writer
    from nibabel.openers import ImageOpener
    from nibabel.volumeutils import seek_tell

    scaling = template.meta.get("scaling")
    dtypes, shape, count, scaled = [], None, 0, bool(scaling)
    for array in frames():
        if shape is not None and array.shape != shape:
            raise MedsrError(f"frame {count} has shape {array.shape}, frame 0 {shape}")
        shape, count = array.shape, count + 1
        dtypes.append(array.dtype)
        scaled = scaled and _stored_integers(np.asarray(array), scaling) is not None
    if scaling and not scaled:
        logger.info("values are not %s integers with the input's scaling: float", scaling["dtype"])
    dtype = np.dtype(scaling["dtype"]) if scaled else np.result_type(*dtypes)
    shell = np.broadcast_to(np.zeros((), dtype), (*shape, count))  # no memory: the header only
    image = _nifti_image(template, shell, scaled, series=True)
    image.get_data_dtype(finalize=True)
    image.update_header()
    header = image.header
    if not scaled:  # as nib.save: the writer's slope and intercept (1, 0: same type)
        header.set_slope_inter(*get_slope_inter(make_array_writer(shell, dtype, True, True)))
    with ImageOpener(str(path), "wb") as handle:
        header.write_to(handle)
        seek_tell(handle, header.get_data_offset(), write0=True)
        for array in frames():
            array = _stored_integers(np.asarray(array), scaling) if scaled else array
            handle.write(np.asarray(array, dtype=dtype).tobytes(order="F"))
