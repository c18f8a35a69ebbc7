"""Names and kinds of inputs and outputs: suffixes, formats, DICOM files, 2D images, folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from medsr.errors import MedsrError

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

#: image files of a section folder (`medsr.io.sections`)
SECTION_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: a section folder's order (one file name per line) and its spacing sidecar
ORDER_FILE = "order.txt"
SERIES_FILE = "series.json"


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
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if (folder / SERIES_FILE).exists() or (folder / ORDER_FILE).exists():
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


def volume_format(path: str | os.PathLike[str], *, output: bool = False) -> str:
    """Format of a file path from its extension (``nifti``, ``nrrd``, ``mha``, ``tiff``...);
    `output`: the error says that a folder is written with ``--format dicom`` only."""
    name = Path(path).name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return _SUFFIXES[suffix]
    known = ", ".join(sorted(_SUFFIXES))
    folder = "a folder with --format dicom" if output else "a folder"
    raise MedsrError(f"unknown volume format for '{path}' (known: {known}, or {folder})")
