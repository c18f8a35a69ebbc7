"""NRRD, MHA/MHD and DICOM (series directory or single file) through SimpleITK.

ITK stores LPS+ world coordinates and (z, y, x) arrays; `Volume` holds RAS+ and (x, y, z). The
conversion is a sign flip of the first two world axes and an array transpose, nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsr.errors import MedsrError
from medsr.io.volume import Volume, unit_scale

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def image_to_volume(image: sitk.Image, source: Path, fmt: str) -> Volume:
    """Convert a 3D SimpleITK image (grey or RGB vector) to a `Volume` with a RAS+ affine."""
    if image.GetDimension() != 3:
        size = "x".join(str(n) for n in image.GetSize())
        raise MedsrError(
            f"expected a 3D volume in '{source}', got a {image.GetDimension()}D {size}"
        )
    array = sitk.GetArrayFromImage(image)  # (z, y, x[, c])
    channels = image.GetNumberOfComponentsPerPixel()
    if channels not in (1, 3):
        raise MedsrError(f"expected grey or RGB voxels in '{source}', got {channels} components")
    array = np.transpose(array, (2, 1, 0, 3) if channels == 3 else (2, 1, 0))
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _LPS_TO_RAS @ np.array(image.GetOrigin())
    return Volume(array=array, affine=affine, meta={"format": fmt, "unit": "mm"})


def volume_to_image(volume: Volume) -> sitk.Image:
    """Convert a `Volume` to a SimpleITK image in mm, LPS+ (the convention of every ITK file)."""
    scale = unit_scale(volume.unit, "mm")
    linear = _LPS_TO_RAS @ volume.affine[:3, :3] * scale
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-5):
        raise MedsrError("this affine has shear, which NRRD/MHA/DICOM cannot store; write NIfTI")
    is_rgb = volume.num_channels == 3
    array = np.transpose(volume.array, (2, 1, 0, 3) if is_rgb else (2, 1, 0))
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=is_rgb)
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin((_LPS_TO_RAS @ volume.affine[:3, 3] * scale).tolist())
    return image


def read_itk(path: Path) -> Volume:
    """Read a NRRD, MHA/MHD or single (multi-frame) DICOM file."""
    fmt = "dicom" if path.suffix.lower() == ".dcm" else path.suffix.lower().lstrip(".")
    return image_to_volume(sitk.ReadImage(str(path)), path, fmt)


def read_dicom_series(directory: Path) -> Volume:
    """Read the DICOM series in `directory` (the first series when there are several)."""
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory))
    if not series_ids:
        raise MedsrError(f"no DICOM series in '{directory}'")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), series_ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return image_to_volume(reader.Execute(), directory, "dicom")


def write_itk(volume: Volume, path: Path) -> None:
    """Write NRRD (``.nrrd``/``.nhdr``) or MetaImage (``.mha``/``.mhd``), compressed."""
    sitk.WriteImage(volume_to_image(volume), str(path), useCompression=True)
