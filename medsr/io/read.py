"""Reading: `read_volume` / `read_volume_frames` dispatch on the format, with one-line errors."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from medsr.errors import MedsrError
from medsr.io.paths import folder_kind, volume_format
from medsr.io.volume import Unit, Volume

logger = logging.getLogger(__name__)


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
    # each format's reader is imported when it is needed: SimpleITK and tifffile add about
    # 100 MiB to a process that reads one NIfTI (docs/benchmarks.md, peak RSS)
    listed = None if spacing is None else list(spacing)  # the TIFF readers take a list
    if path.is_dir():
        kind = folder_kind(path)
        if kind is None:
            raise MedsrError(
                f"'{path}' holds neither a DICOM series nor 2D sections (at least two images, "
                "or a series.json / order.txt beside them)"
            )
        if kind == "sections":
            from medsr.io.sections import read_section_folder

            return read_section_folder(path, listed, unit)
        from medsr.io.itk import read_dicom_series

        volume = read_dicom_series(path, series)
        return volume if spacing is None else set_spacing(volume, spacing, unit)
    fmt = volume_format(path)
    if fmt == "tiff":
        from medsr.io.tiff import read_tiff

        return read_tiff(path, listed, unit)
    if fmt == "nifti":
        from medsr.io.nifti import read_nifti

        volume = read_nifti(path, frame)
    else:
        from medsr.io.itk import read_itk

        volume = read_itk(path)
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
        if path.name.lower().endswith((".nii", ".nii.gz")):  # nibabel: "Cannot work out file type"
            reason = f"corrupt or truncated NIfTI ({reason})"
        raise MedsrError(f"cannot read '{path}': {reason}") from error


def _checked(volume: Volume, path: Path) -> Volume:
    if volume.array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(volume.array)))
        if bad:
            raise MedsrError(f"'{path}' has {bad} NaN/Inf voxels; fix or mask them first")
    logger.debug("read %s: shape %s spacing %s", path, volume.array.shape, volume.spacing)
    return volume
