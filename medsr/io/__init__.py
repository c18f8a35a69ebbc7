"""Reading and writing volumes, one reader/writer per format behind two functions.

Contract (as nnU-Net's reader/writer): `read_volume` returns a `Volume` whose affine maps voxel
centres to RAS+ world coordinates; `write_volume` writes it so that reading it back gives the same
array, spacing and affine. Writes are atomic (`medsr.io.atomic`): the file appears complete or not
at all.

Modules: `volume` (the `Volume` and units), `paths` (names, suffixes, formats, folder kinds),
`read` and `write` (the dispatch), `atomic` (the one atomic-write helper), and one module per
format: `nifti`, `itk` (NRRD, MetaImage, DICOM series reading), `dicom` (DICOM series writing),
`tiff` (TIFF/OME-TIFF) and `sections` (section folders).
"""

from __future__ import annotations

from medsr.io.atomic import write_atomically, write_text_atomically
from medsr.io.paths import (
    VOLUME_SUFFIXES,
    FolderKind,
    default_output_suffix,
    folder_kind,
    is_2d_image,
    is_dicom_file,
    is_section_folder,
    split_volume_name,
    volume_format,
)
from medsr.io.read import read_volume, read_volume_frames, set_spacing, volume_frames
from medsr.io.volume import Unit, Volume, unit_scale
from medsr.io.write import WRITABLE_FORMATS, check_output_path, make_output_folder, write_volume

__all__ = [
    "VOLUME_SUFFIXES",
    "WRITABLE_FORMATS",
    "FolderKind",
    "Unit",
    "Volume",
    "check_output_path",
    "default_output_suffix",
    "folder_kind",
    "is_2d_image",
    "is_dicom_file",
    "is_section_folder",
    "make_output_folder",
    "read_volume",
    "read_volume_frames",
    "set_spacing",
    "split_volume_name",
    "unit_scale",
    "volume_format",
    "volume_frames",
    "write_atomically",
    "write_text_atomically",
    "write_volume",
]
