"""NRRD, MHA/MHD and DICOM (series directory or single file) through SimpleITK.

ITK stores LPS+ world coordinates and (z, y, x) arrays; `Volume` holds RAS+ and (x, y, z). The
conversion is a sign flip of the first two world axes and an array transpose, nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsr.errors import MedsrError
from medsr.io.volume import Volume, unit_scale

logger = logging.getLogger(__name__)
# ITK prints its own warnings to stderr; medsr reports what matters through logging, one line each
sitk.ProcessObject_SetGlobalWarningDisplay(False)

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
    volume = image_to_volume(sitk.ReadImage(str(path)), path, fmt)
    if fmt == "dicom":  # its header is the source of a DICOM output (medsr.io.dicom)
        volume.meta["dicom_files"] = (str(path),)
    return volume


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series in a folder.

    Attributes:
        uid: SeriesInstanceUID.
        number: SeriesNumber ("" when absent).
        description: SeriesDescription.
        files: its files, in slice order.
        pixel_spacing: in-plane spacing (mm), None when the header has none.
        slice_thickness: SliceThickness (mm), None when absent.
    """

    uid: str
    number: str
    description: str
    files: tuple[str, ...]
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None

    def summary(self) -> str:
        """One line: number, description, slices, spacing and UID."""
        spacing = "x".join(f"{s:.3g}" for s in self.pixel_spacing) if self.pixel_spacing else "?"
        return (
            f"series {self.number or '?'} '{self.description}': {len(self.files)} slice(s), "
            f"{spacing} mm pixels, UID {self.uid}"
        )


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def list_dicom_series(directory: Path) -> list[DicomSeries]:
    """Every DICOM series in `directory` (files found by content, whatever their names)."""
    series = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory)):
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), uid)
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.ReadImageInformation()
        pixel = _tag(reader, "0028|0030")
        thickness = _tag(reader, "0018|0050")
        series.append(
            DicomSeries(
                uid=uid,
                number=_tag(reader, "0020|0011"),
                description=_tag(reader, "0008|103e"),
                files=tuple(files),
                pixel_spacing=tuple(float(v) for v in pixel.split("\\")[:2]) if pixel else None,
                slice_thickness=float(thickness) if thickness else None,
            )
        )
    return series


def choose_series(directory: Path, series: str | None) -> DicomSeries:
    """The one series of a folder, or the one `series` names (its number or UID).

    Raises:
        MedsrError: no series, an unknown choice, or several series and no choice (the message
            lists them).
    """
    found = list_dicom_series(directory)
    if not found:
        raise MedsrError(f"no DICOM series in '{directory}'")
    if series is not None:
        chosen = [s for s in found if series in (s.uid, s.number)]
        if len(chosen) != 1:
            raise MedsrError(
                f"no single DICOM series '{series}' in '{directory}'; it has: "
                + "; ".join(s.summary() for s in found)
            )
        return chosen[0]
    if len(found) > 1:
        raise MedsrError(
            f"'{directory}' holds {len(found)} DICOM series; choose one with --series: "
            + "; ".join(s.summary() for s in found)
        )
    return found[0]


def _slice_positions(files: tuple[str, ...], normal: np.ndarray) -> np.ndarray:
    positions = []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        text = _tag(reader, "0020|0032")
        positions.append(
            float(np.dot([float(v) for v in text.split("\\")], normal)) if text else np.nan
        )
    return np.asarray(positions)


#: uneven slice positions beyond this (fraction of the median spacing, at least 0.1 mm) are errors
POSITION_TOLERANCE = 0.05


def read_dicom_series(directory: Path, series: str | None = None) -> Volume:
    """Read one DICOM series of `directory` (`choose_series`).

    The slice spacing comes from the slices' positions along the slice normal: uneven positions
    (beyond 5 % of the median spacing and 0.1 mm) are an error naming them, small jitter a
    warning. SliceThickness is kept in ``meta["slice_thickness"]`` (mm): thickness below the
    spacing is a gap, above it an overlap; the learned method's fit uses it as the slice profile.
    The files, in slice order, are kept in ``meta["dicom_files"]``: a DICOM output copies the
    patient and study from the first.
    """
    chosen = choose_series(directory, series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    volume = image_to_volume(reader.Execute(), directory, "dicom")
    meta = dict(volume.meta, series_uid=chosen.uid, dicom_files=chosen.files)
    if chosen.pixel_spacing is None:
        logger.warning("'%s' has no PixelSpacing: 1 mm pixels assumed", directory)
    if chosen.slice_thickness is not None:
        meta["slice_thickness"] = chosen.slice_thickness
    if len(chosen.files) > 1:
        direction = volume.affine[:3, :3] / volume.spacing
        normal = _LPS_TO_RAS @ direction[:, 2]  # the slice axis, back in LPS (DICOM's frame)
        positions = _slice_positions(chosen.files, normal)
        if np.all(np.isfinite(positions)):
            steps = np.diff(positions)
            median = float(np.median(steps))
            tolerance = max(0.1, POSITION_TOLERANCE * abs(median))
            uneven = np.flatnonzero(np.abs(steps - median) > tolerance)
            if len(uneven):
                pairs = ", ".join(f"{i + 1}->{i + 2} ({steps[i]:.3g} mm)" for i in uneven[:5])
                raise MedsrError(
                    f"'{directory}': uneven slice positions (median spacing {median:.3g} mm; "
                    f"slices {pairs}); medsr needs evenly spaced slices"
                )
            if np.abs(steps - median).max() > 0.01:
                logger.warning(
                    "'%s': slice positions vary by up to %.3g mm around %.4g mm",
                    directory,
                    float(np.abs(steps - median).max()),
                    median,
                )
    else:
        logger.warning("'%s' has a single slice", directory)
    return Volume(volume.array, volume.affine, meta)


def write_itk(volume: Volume, path: Path) -> None:
    """Write NRRD (``.nrrd``/``.nhdr``) or MetaImage (``.mha``/``.mhd``), compressed."""
    sitk.WriteImage(volume_to_image(volume), str(path), useCompression=True)
