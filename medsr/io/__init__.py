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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from medsr.errors import MedsrError
from medsr.io.volume import Unit, Volume, unit_scale

__all__ = [
    "VOLUME_SUFFIXES",
    "Volume",
    "check_output_path",
    "folder_kind",
    "is_2d_image",
    "is_dicom_file",
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
    "write_atomically",
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


def is_dicom_file(path: Path) -> bool:
    """A DICOM file by content (the ``DICM`` magic after the 128-byte preamble), whatever its
    name: exports often have no extension."""
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_2d_image(path: Path) -> bool:
    """A PNG/JPEG, or a TIFF holding one 2D plane (grey or RGB/RGBA): a section, not a stack."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return True  # PNG / JPEG
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return len(series.shape) == 2 or (len(series.shape) == 3 and series.shape[-1] in (3, 4))
    except Exception:  # unreadable: not a section; the file is reported as its own input
        return False


FolderKind = Literal["sections", "dicom"]


def folder_kind(folder: str | os.PathLike[str]) -> FolderKind | None:
    """What a folder holds: ``"sections"``, ``"dicom"`` or None (neither; for `medsr batch` a
    plain folder whose files are inputs of their own). The one rule of `read_volume`,
    `medsr batch` and `medsr info`.

    A folder is a section series when it has ``series.json`` or ``order.txt``; else a DICOM
    series when it holds DICOM files (``.dcm``, or no extension and DICOM by content), whatever
    else lies beside them (a ``preview.png``); else a section series when it holds 2D images
    only (at least two, and no volume files). 3D TIFF stacks, NIfTI and the like are never
    sections.
    """
    from medsr.io.tiff import ORDER_FILE, SECTION_SUFFIXES

    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if (folder / "series.json").exists() or (folder / ORDER_FILE).exists():
        return "sections"
    if any(p.suffix.lower() == ".dcm" or (not p.suffix and is_dicom_file(p)) for p in files):
        return "dicom"
    images = [p for p in files if p.suffix.lower() in SECTION_SUFFIXES]
    volumes = [p for p in files if p.name.lower().endswith(VOLUME_SUFFIXES) and p not in images]
    if len(images) >= 2 and not volumes and all(is_2d_image(p) for p in images):
        return "sections"
    return None


def is_section_folder(folder: str | os.PathLike[str]) -> bool:
    """A folder read as 2D sections rather than a DICOM series (`folder_kind`)."""
    return folder_kind(folder) == "sections"


def default_output_suffix(path: str | os.PathLike[str]) -> str:
    """Output format for an input: its own, except TIFF and section folders -> ``.ome.tif``
    (physical sizes kept) and DICOM -> ``.nii.gz`` (a DICOM series only with ``--format
    dicom``)."""
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
        kind = folder_kind(path)
        if kind is None:
            raise MedsrError(
                f"'{path}' holds neither a DICOM series nor 2D sections (at least two images, "
                "or a series.json / order.txt beside them)"
            )
        if kind == "sections":
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
    fmt: str | None = None,
) -> Path:
    """Everything about an output that can fail, checked before any work: a known, writable
    format (or one of `suffixes` for non-volume outputs such as figures), an existing writable
    folder, no existing file without `overwrite`, and (for TIFF, which stores no orientation) an
    axis-aligned `affine`. `fmt` ``"dicom"``: `path` is a series folder
    (`medsr.io.dicom.check_dicom_output`).

    Raises:
        MedsrError: the first problem found, in one line.
    """
    path = Path(path)
    if fmt == "dicom":
        from medsr.io.dicom import check_dicom_output

        check_dicom_output(path, overwrite=overwrite)
    elif fmt is not None:
        raise MedsrError(f"unknown output format '{fmt}' (dicom, or none: from the suffix)")
    elif suffixes is not None:
        if path.suffix.lower() not in suffixes:
            raise MedsrError(f"output '{path}' must end with {' or '.join(suffixes)}")
    else:
        kind = volume_format(path)
        if kind not in WRITABLE_FORMATS:
            raise MedsrError(
                f"cannot write {kind} ('{path}'); write NIfTI, NRRD, MHA or OME-TIFF "
                "(or a DICOM series folder with --format dicom)"
            )
        if kind == "tiff" and affine is not None:
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
    if path.exists() and not overwrite and fmt != "dicom":  # an empty folder is a free one
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


def _write_dicom_folder(
    volume: Volume,
    path: Path,
    staging: Path,
    patient_id: str | None,
    modality: str | None,
    frames: list[Volume] | None,
) -> None:
    """The series into ``staging/<name>``, then renamed to `path`; an old folder (empty, or
    replaced with overwrite) is moved into staging first, as a folder cannot be renamed onto a
    non-empty one."""
    from medsr.io.dicom import write_dicom_series

    if frames:
        raise MedsrError(f"a series of {len(frames)} volumes can only be written as NIfTI")
    series = write_dicom_series(
        volume, staging / path.name, patient_id=patient_id, modality=modality
    )
    if path.is_dir():
        os.replace(path, staging / ".replaced")
    os.replace(series, path)


def write_volume(
    volume: Volume,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    frames: list[Volume] | None = None,
    fmt: str | None = None,
    patient_id: str | None = None,
    modality: str | None = None,
) -> Path:
    """Write `volume` atomically; the format follows the extension, or `fmt` ``"dicom"``: a
    DICOM series folder (`medsr.io.dicom.write_dicom_series`, with `patient_id` and `modality`).

    The file is written in a hidden temporary folder beside `path` and renamed into place, so an
    interrupted write leaves no partial output (MHD's data file is moved before its header; a
    DICOM folder moves as one, replacing an old one only once the new one is complete).

    Raises:
        MedsrError: `path` exists and `overwrite` is false, or the format cannot hold the volume.
    """
    path = Path(path)
    if fmt == "dicom":
        check_output_path(path, overwrite=overwrite, fmt=fmt)
    else:
        fmt = volume_format(path)
        if path.exists() and not overwrite:
            raise MedsrError(f"output exists: '{path}' (use --overwrite to replace it)")
    if not path.parent.is_dir():
        raise MedsrError(f"output folder does not exist: '{path.parent}'")
    if fmt == "dicom":
        staging = Path(tempfile.mkdtemp(prefix=".medsr-tmp-", dir=path.parent))
        try:
            _write_dicom_folder(volume, path, staging, patient_id, modality, frames)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return path
    return write_atomically(path, lambda staged: _write_any(volume, staged, fmt, frames))


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Run ``write(staged)``, which writes ``staged`` (a path of `path`'s name in a hidden
    temporary folder beside it) and any files beside that, then move all of them into place,
    the named file last: a reader never sees a partial output. Volumes, figures and report
    files are all written through here. The caller checks for an existing output first.
    """
    path = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=".medsr-tmp-", dir=path.parent))
    try:
        write(staging / path.name)
        written = sorted(staging.iterdir(), key=lambda p: p.name == path.name)
        for item in written:  # the named file last: it is the one readers look for
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
