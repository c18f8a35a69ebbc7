"""Writing: output checks before any work, and `write_volume`, atomic, dispatched on the format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medsr.errors import MedsrError
from medsr.io.atomic import write_atomically, write_folder_atomically
from medsr.io.paths import volume_format
from medsr.io.volume import Volume

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
        from medsr.io.dicom_tags import check_dicom_output

        check_dicom_output(path, overwrite=overwrite)
    elif fmt is not None:
        raise MedsrError(f"unknown output format '{fmt}' (dicom, or none: from the suffix)")
    elif suffixes is not None:
        if path.suffix.lower() not in suffixes:
            raise MedsrError(f"output '{path}' must end with {' or '.join(suffixes)}")
    else:
        kind = volume_format(path, output=True)
        if kind not in WRITABLE_FORMATS:
            raise MedsrError(
                f"cannot write {kind} ('{path}'); write NIfTI, NRRD, MHA or OME-TIFF "
                "(or a DICOM series folder with --format dicom)"
            )
        if kind == "tiff" and affine is not None:
            from medsr.io.tiff import check_tiff_orientation

            check_tiff_orientation(affine, path)
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
    # each format's writer is imported when it is needed (SimpleITK, tifffile: `_read_any`)
    if frames and fmt != "nifti":
        raise MedsrError(f"a series of {len(frames)} volumes can only be written as NIfTI")
    if fmt == "nifti":
        from medsr.io.nifti import write_nifti

        write_nifti(volume, path, frames)
    elif fmt in ("nrrd", "mha"):
        from medsr.io.itk import write_itk

        write_itk(volume, path)
    elif fmt == "tiff":
        from medsr.io.tiff import write_ome_tiff

        write_ome_tiff(volume, path)
    else:
        raise MedsrError(f"writing {fmt} is not supported; write NIfTI, NRRD, MHA or OME-TIFF")


def _write_dicom_folder(
    volume: Volume,
    path: Path,
    patient_id: str | None,
    modality: str | None,
    frames: list[Volume] | None,
) -> Path:
    """The series as one folder, renamed into place once complete (`write_folder_atomically`)."""
    from medsr.io.dicom import write_dicom_series

    if frames:
        raise MedsrError(f"a series of {len(frames)} volumes can only be written as NIfTI")
    return write_folder_atomically(
        path,
        lambda staged: write_dicom_series(
            volume, staged, patient_id=patient_id, modality=modality, final_folder=path
        ),
    )


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
        return _write_dicom_folder(volume, path, patient_id, modality, frames)
    return write_atomically(path, lambda staged: _write_any(volume, staged, fmt, frames))
