"""Reading and writing volumes, one reader/writer per format behind two functions.

Contract (as nnU-Net's reader/writer): `read_volume` returns a `Volume` whose affine maps voxel
centres to RAS+ world coordinates; `write_volume` writes it so that reading it back gives the same
array, spacing and affine. Writes are atomic: the file appears complete or not at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from medsr.errors import MedsrError
from medsr.io.volume import Unit, Volume, unit_scale

__all__ = [
    "VOLUME_SUFFIXES",
    "Volume",
    "check_output_path",
    "is_section_folder",
    "make_output_folder",
    "default_output_suffix",
    "read_volume",
    "read_volume_frames",
    "set_spacing",
    "split_volume_name",
    "unit_scale",
    "volume_format",
    "volume_frames",
    "write_volume",
]

logger = logging.getLogger(__name__)

_SUFFIXES = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
    ".dcm": "dicom",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".ome.tif": "tiff",
    ".ome.tiff": "tiff",
}


#: every known file suffix, longest first (so ``.nii.gz`` wins over ``.gz``-less ``.nii``)
VOLUME_SUFFIXES: tuple[str, ...] = tuple(sorted(_SUFFIXES, key=len, reverse=True))


def split_volume_name(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``scan.nii.gz`` -> (``scan``, ``.nii.gz``); a folder or unknown suffix -> (name, "")."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ""


def is_section_folder(folder: Path) -> bool:
    """A folder read as 2D sections (it holds section images) rather than a DICOM series."""
    from medsr.io.tiff import SECTION_SUFFIXES

    return any(p.suffix.lower() in SECTION_SUFFIXES for p in folder.iterdir())


def default_output_suffix(path: str | os.PathLike[str]) -> str:
    """Output format for an input: its own, except TIFF and section folders -> ``.ome.tif``
    (physical sizes kept) and DICOM -> ``.nii.gz`` (DICOM is not written)."""
    path = Path(path)
    if path.is_dir():
        return ".ome.tif" if is_section_folder(path) else ".nii.gz"
    fmt = volume_format(path)
    return {"tiff": ".ome.tif", "dicom": ".nii.gz"}.get(fmt) or split_volume_name(path)[1]


def volume_format(path: str | os.PathLike[str]) -> str:
    """Format of a file path from its extension (``nifti``, ``nrrd``, ``mha``, ``tiff``...)."""
    name = Path(path).name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return _SUFFIXES[suffix]
    known = ", ".join(sorted(_SUFFIXES))
    raise MedsrError(f"unknown volume format for '{path}' (known: {known}, or a folder)")


def set_spacing(volume: Volume, spacing: Sequence[float], unit: Unit | None = None) -> Volume:
    """Replace the voxel spacing, keeping direction cosines and origin (the header was wrong)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise MedsrError(f"--input-spacing needs three positive numbers, got {spacing.tolist()}")
    affine = volume.affine.copy()
    affine[:3, :3] = affine[:3, :3] / volume.spacing * spacing
    meta = dict(volume.meta, unit=unit or volume.unit)
    return Volume(array=volume.array, affine=affine, meta=meta)


def volume_frames(path: str | os.PathLike[str]) -> int:
    """How many volumes a file holds: above 1 for a 4D NIfTI series (DWI, fMRI), else 1."""
    path = Path(path)
    if path.is_dir() or volume_format(path) != "nifti":
        return 1
    from medsr.io.nifti import nifti_frames

    try:
        return nifti_frames(path)
    except Exception as error:  # unreadable header: read_volume reports it in one line
        logger.debug("no frame count for %s: %s", path, error)
        return 1


def _read_any(
    path: Path,
    spacing: Sequence[float] | None,
    unit: Unit | None,
    frame: int | None = None,
    series: str | None = None,
) -> Volume:
    from medsr.io import itk, nifti, tiff

    if path.is_dir():
        if is_section_folder(path):
            return tiff.read_section_folder(path, None if spacing is None else list(spacing), unit)
        volume = itk.read_dicom_series(path, series)
        return volume if spacing is None else set_spacing(volume, spacing, unit)
    fmt = volume_format(path)
    if fmt == "tiff":
        return tiff.read_tiff(path, None if spacing is None else list(spacing), unit)
    volume = nifti.read_nifti(path, frame) if fmt == "nifti" else itk.read_itk(path)
    return volume if spacing is None else set_spacing(volume, spacing, unit)


def read_volume(
    path: str | os.PathLike[str],
    *,
    spacing: Sequence[float] | None = None,
    unit: Unit | None = None,
    frame: int | None = None,
    series: str | None = None,
) -> Volume:
    """Read a volume from a file or folder.

    Args:
        path: NIfTI (``.nii``/``.nii.gz``), NRRD, MHA/MHD, DICOM file, multi-page TIFF, or a folder
            holding a DICOM series or 2D section images (TIFF/PNG/JPEG, natural order).
        spacing: voxel size (X, Y, Z) in `unit`; overrides the header (required for TIFF without
            spacing metadata).
        unit: ``"mm"`` or ``"um"`` for `spacing`; defaults to the file's unit (µm for TIFF).
        frame: which volume of a 4D NIfTI series to read (`volume_frames` counts them).
        series: which DICOM series of a folder to read (number or UID); required when the
            folder holds several.

    Returns:
        The `Volume`, array shape (X, Y, Z) or (X, Y, Z, 3).

    Raises:
        MedsrError: missing or unreadable file, not a 3D volume, no spacing, non-finite voxels.
    """
    path = Path(path)
    if not path.exists():
        raise MedsrError(f"input not found: '{path}'")
    with _one_line_errors(path):
        volume = _read_any(path, spacing, unit, frame, series)
    return _checked(volume, path)


def read_volume_frames(
    path: str | os.PathLike[str],
    *,
    spacing: Sequence[float] | None = None,
    unit: Unit | None = None,
) -> Iterator[Volume]:
    """Every volume of a 4D NIfTI series in order, each as ``read_volume(path, frame=i)`` gives
    it, with the file read (decompressed) once rather than from its start for every frame; one
    frame in memory at a time (`medsr.io.nifti.read_nifti_frames`).

    Raises:
        MedsrError: as `read_volume`.
    """
    from medsr.io.nifti import read_nifti_frames

    path = Path(path)
    if not path.exists():
        raise MedsrError(f"input not found: '{path}'")
    frames = read_nifti_frames(path)
    while True:
        with _one_line_errors(path):
            volume = next(frames, None)
        if volume is None:
            return
        yield _checked(volume if spacing is None else set_spacing(volume, spacing, unit), path)


@contextlib.contextmanager
def _one_line_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except MedsrError:
        raise
    except Exception as error:  # readers of three libraries raise many types for corrupt files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MedsrError(f"cannot read '{path}': {reason}") from error


def _checked(volume: Volume, path: Path) -> Volume:
    if volume.array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(volume.array)))
        if bad:
            raise MedsrError(f"'{path}' has {bad} NaN/Inf voxels; fix or mask them first")
    logger.debug("read %s: shape %s spacing %s", path, volume.array.shape, volume.spacing)
    return volume


WRITABLE_FORMATS = ("nifti", "nrrd", "mha", "tiff")


def check_output_path(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    affine: np.ndarray | None = None,
    suffixes: tuple[str, ...] | None = None,
) -> Path:
    """Everything about an output that can fail, checked before any work: a known, writable
    format (or one of `suffixes` for non-volume outputs such as figures), an existing writable
    folder, no existing file without `overwrite`, and (for TIFF, which stores no orientation) an
    axis-aligned `affine`.

    Raises:
        MedsrError: the first problem found, in one line.
    """
    path = Path(path)
    if suffixes is not None:
        if path.suffix.lower() not in suffixes:
            raise MedsrError(f"output '{path}' must end with {' or '.join(suffixes)}")
    else:
        fmt = volume_format(path)
        if fmt not in WRITABLE_FORMATS:
            raise MedsrError(f"cannot write {fmt} ('{path}'); write NIfTI, NRRD, MHA or OME-TIFF")
        if fmt == "tiff" and affine is not None:
            linear = np.asarray(affine)[:3, :3]
            if not np.allclose(linear, np.diag(np.diag(linear))) or np.any(np.diag(linear) <= 0):
                raise MedsrError(
                    f"'{path}': TIFF stores no orientation and this volume is not axis-aligned "
                    "(oblique or flipped); write NIfTI or NRRD instead"
                )
    folder = path.parent
    if not folder.is_dir():
        raise MedsrError(f"output folder does not exist: '{folder}'")
    if not os.access(folder, os.W_OK):
        raise MedsrError(f"output folder is not writable: '{folder}'")
    if path.exists() and not overwrite:
        raise MedsrError(f"output exists: '{path}' (use --overwrite to replace it)")
    return path


def make_output_folder(path: str | os.PathLike[str]) -> Path:
    """Create an output folder (and its parents) or say in one line why it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedsrError(f"cannot create output folder '{path}': {error.strerror}") from error
    if not os.access(path, os.W_OK):
        raise MedsrError(f"output folder is not writable: '{path}'")
    return path


def _write_any(volume: Volume, path: Path, fmt: str, frames: list[Volume] | None) -> None:
    from medsr.io import itk, nifti, tiff

    if frames and fmt != "nifti":
        raise MedsrError(f"a series of {len(frames)} volumes can only be written as NIfTI")
    if fmt == "nifti":
        nifti.write_nifti(volume, path, frames)
    elif fmt in ("nrrd", "mha"):
        itk.write_itk(volume, path)
    elif fmt == "tiff":
        tiff.write_ome_tiff(volume, path)
    else:
        raise MedsrError(f"writing {fmt} is not supported; write NIfTI, NRRD, MHA or OME-TIFF")


def write_volume(
    volume: Volume,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    frames: list[Volume] | None = None,
) -> Path:
    """Write `volume` atomically; the format follows the extension.

    The file is written in a hidden temporary folder beside `path` and renamed into place, so an
    interrupted write leaves no partial output (MHD's data file is moved before its header).

    Raises:
        MedsrError: `path` exists and `overwrite` is false, or the format cannot hold the volume.
    """
    path = Path(path)
    fmt = volume_format(path)
    if path.exists() and not overwrite:
        raise MedsrError(f"output exists: '{path}' (use --overwrite to replace it)")
    if not path.parent.is_dir():
        raise MedsrError(f"output folder does not exist: '{path.parent}'")
    staging = Path(tempfile.mkdtemp(prefix=".medsr-tmp-", dir=path.parent))
    try:
        _write_any(volume, staging / path.name, fmt, frames)
        written = sorted(staging.iterdir(), key=lambda p: p.name == path.name)
        for item in written:  # the named file last: it is the one readers look for
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
