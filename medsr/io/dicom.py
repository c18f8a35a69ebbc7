"""DICOM series output: one classic MR or CT Image Storage file per slice, written with pydicom.

A series is a stack of 2D images. The stacking axis is the array axis that was thick in the input
(``meta["provenance"]["thick_axis"]``, else axis 2), so the new series has the source's slice
orientation with thinner, more numerous slices. Within a slice the lower-numbered remaining array
axis runs along a row (DICOM columns) and the other down the image (DICOM rows), as ITK does for
axis 2. The `Volume` affine is RAS+; DICOM is LPS+: the first two world axes change sign.

Geometry, per slice k (array index s = k along the stacking axis, a and b the in-plane axes):
ImageOrientationPatient = (direction of a, direction of b), ImagePositionPatient = the world
position of voxel centre (0, 0, k), PixelSpacing = (spacing of b, spacing of a) (row spacing
first, as DICOM orders it), SliceThickness = SpacingBetweenSlices = the spacing along s. Slices
are numbered in array order; in a left-handed array (LIA) they step against the row x column
normal, which DICOM allows (readers sort by position).

UIDs come from pydicom's generator, seeded with a digest of the voxels, the geometry, the source
series and the patient: new for every new output, and the same command writes the same files.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from medsr.io.dicom_tags import (
    ACQUISITION_TAGS,
    DEFAULT_PATIENT_ID,
    IMAGE_TYPE_3,
    MODALITY_DEFAULTS,
    SOURCE_TAGS,
    TAG_DEFAULTS,
    check_dicom_input,
    read_source_header,
    series_modality,
)
from medsr.io.volume import Volume, unit_scale

logger = logging.getLogger(__name__)

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM's DS), without a negative zero."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value) + 0.0)


def slice_geometry(volume: Volume, slice_axis: int) -> dict:
    """DICOM geometry in mm, LPS+: in-plane axes (column axis, row axis), ImageOrientationPatient,
    one ImagePositionPatient per slice, PixelSpacing (row spacing first), slice spacing."""
    scale = unit_scale(volume.unit, "mm")
    linear = _LPS_FROM_RAS @ volume.affine[:3, :3] * scale
    origin = _LPS_FROM_RAS @ volume.affine[:3, 3] * scale
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing
    column_axis, row_axis = (axis for axis in range(3) if axis != slice_axis)
    count = volume.spatial_shape[slice_axis]
    positions = origin + np.arange(count)[:, None] * linear[:, slice_axis]
    normal = np.cross(direction[:, column_axis], direction[:, row_axis])
    return {
        "axes": (column_axis, row_axis),
        "orientation": np.concatenate([direction[:, column_axis], direction[:, row_axis]]),
        "positions": positions,
        "locations": positions @ normal,
        "pixel_spacing": (spacing[row_axis], spacing[column_axis]),
        "slice_spacing": float(spacing[slice_axis]),
    }


def pixel_encoding(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(stored 16-bit array, RescaleSlope, RescaleIntercept), value = stored * slope + intercept.

    Whole numbers that fit 16 bits are stored exactly (uint16 when none is negative, else int16;
    slope 1, intercept 0: CT keeps its HU). Anything else is spread over int16 around the middle
    of its range; slope and intercept are the values as written (16-character decimal strings),
    so every voxel comes back within half a slope.
    """
    low, high = float(array.min()), float(array.max())
    whole = array.dtype.kind in "iub" or bool(np.all(np.mod(array, 1) == 0))
    if whole and low >= 0 and high <= 65535:
        return array.astype("<u2"), 1.0, 0.0
    if whole and low >= -32768 and high <= 32767:
        return array.astype("<i2"), 1.0, 0.0
    intercept = float(_ds((low + high) / 2))
    slope = float(_ds((high - low) / 65000)) if high > low else 1.0
    stored = np.clip(np.rint((array.astype(np.float64) - intercept) / slope), -32768, 32767)
    return stored.astype("<i2"), slope, intercept


def _uid(digest: str, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[digest, *map(str, parts)])


def _content_digest(volume: Volume, source, patient_id: str, description: str) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(volume.array).tobytes())
    digest.update(volume.affine.tobytes())
    for text in (str(source.get("SeriesInstanceUID", "")) if source else "", patient_id):
        digest.update(text.encode() + b"\0")
    digest.update(description.encode())
    return digest.hexdigest()


def _series_description(source, provenance: dict) -> str:
    """The source's SeriesDescription with ``medsr xF`` appended (64 characters at most)."""
    factor = provenance.get("factor")
    tail = f"medsr x{factor:.3g}" if factor else "medsr"
    head = str(source.get("SeriesDescription", "")).strip() if source is not None else ""
    return f"{head[: 63 - len(tail)]} {tail}".strip()


def _series_dataset(volume: Volume, source, modality: str, patient_id: str, options: dict):
    """Every attribute shared by the files of the series (pixels, positions and UIDs aside)."""
    from pydicom.dataset import Dataset

    from medsr._version import __version__

    ds = Dataset()
    if source is None:
        for keyword, value in TAG_DEFAULTS.items():
            setattr(ds, keyword, value)
        ds.PatientID = patient_id
        ds.PatientName = patient_id if "^" in patient_id else f"{patient_id}^"  # a family name
        ds.StudyDescription = "medsr"
        ds.Modality = modality
    else:
        for keyword in SOURCE_TAGS + ACQUISITION_TAGS[modality]:
            if keyword in source:
                ds[keyword] = source[keyword]
    for keyword, value in {**TAG_DEFAULTS, **MODALITY_DEFAULTS[modality]}.items():
        if keyword not in ds:
            setattr(ds, keyword, value)
    ds.ImageType = ["DERIVED", "SECONDARY", IMAGE_TYPE_3[modality]]
    ds.SeriesDescription = options["description"]
    ds.SeriesNumber = options["series_number"]
    ds.Manufacturer = "medsr"
    ds.SoftwareVersions = f"medsr {__version__}"
    if options["comment"]:
        ds.ImageComments = options["comment"]
        ds.DerivationDescription = options["comment"][:1024]
    if modality == "CT":
        ds.AcquisitionNumber = ""
    return ds


def _series_number(source) -> int:
    """A new SeriesNumber: the source's plus 1000 (scanners number their own below), else 1."""
    try:
        return int(source.get("SeriesNumber", 0)) + 1000 if source is not None else 1
    except (TypeError, ValueError):
        return 1000


def write_dicom_series(
    volume: Volume,
    folder: str | os.PathLike[str],
    source=None,
    *,
    description: str | None = None,
    patient_id: str | None = None,
    modality: str | None = None,
    provenance: dict | None = None,
    slice_axis: int | None = None,
    final_folder: str | os.PathLike[str] | None = None,
) -> Path:
    """Write `volume` as a new DICOM series into `folder` (created; one file per slice).

    Args:
        volume: grey volume, no shear; its unit is converted to mm.
        folder: the series folder (it must not hold other files; `write_volume` makes the write
            atomic).
        source: header of the DICOM series the volume comes from (a pydicom Dataset or a file
            path; default: `read_source_header`). Its patient, study, frame of reference and
            acquisition attributes are kept; the series and every instance get new UIDs.
        description: SeriesDescription (default: the source's with ``medsr xF`` appended).
        patient_id: ID and name of the new patient of a non-DICOM input (default
            `DEFAULT_PATIENT_ID`); a new study and frame of reference are made for it.
        modality: ``"MR"`` or ``"CT"`` for a non-DICOM input (`series_modality`).
        provenance: what produced the volume (default ``meta["provenance"]``); its factor goes
            into the description, its short form (``meta["description"]``) into ImageComments.
        slice_axis: the stacking axis (default: the provenance's thick axis, else 2).
        final_folder: where `folder` is renamed to once written (`write_volume` stages it), the
            folder the log line names (default `folder`).

    Returns:
        `folder`.
    """
    import pydicom

    if source is None:
        source = read_source_header(volume)
    elif isinstance(source, (str, os.PathLike)):
        source = pydicom.dcmread(source, stop_before_pixels=True)
    check_dicom_input(volume, patient_id=None if source is not None else patient_id)
    modality = series_modality(source, modality)
    provenance = volume.meta.get("provenance", {}) if provenance is None else provenance
    if slice_axis is None:
        slice_axis = int(provenance.get("thick_axis", 2))
    description = description or _series_description(source, provenance)
    patient_id = patient_id or DEFAULT_PATIENT_ID
    digest = _content_digest(volume, source, patient_id, description)
    options = {
        "description": description,
        "series_number": _series_number(source),
        "comment": str(volume.meta.get("description", "")) if provenance else "",
    }
    shared = _series_dataset(volume, source, modality, patient_id, options)
    # a source without them (some exports) still needs both: they are Type 1 in MR/CT images
    if source is None or not getattr(shared, "StudyInstanceUID", ""):
        shared.StudyInstanceUID = _uid(digest, "study")
    if source is None or not getattr(shared, "FrameOfReferenceUID", ""):
        shared.FrameOfReferenceUID = _uid(digest, "frame-of-reference")
    shared.SeriesInstanceUID = _uid(digest, "series")
    geometry = slice_geometry(volume, slice_axis)
    stored = _set_pixel_module(shared, volume.array, geometry, modality)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(volume.spatial_shape[slice_axis]):
        pixels = np.take(stored, index, axis=slice_axis).T  # (rows, columns) = (row, column axis)
        _write_slice(shared, pixels, geometry, index, folder / f"IM{index + 1:05d}.dcm", digest)
    logger.info(
        "wrote DICOM series %s: %d %s slices in %s",
        shared.SeriesInstanceUID,
        volume.spatial_shape[slice_axis],
        modality,
        final_folder or folder,
    )
    return folder


def _set_pixel_module(shared, array: np.ndarray, geometry: dict, modality: str) -> np.ndarray:
    """Image plane and pixel attributes of every slice; returns the stored 16-bit array."""
    stored, slope, intercept = pixel_encoding(array)
    column_axis, row_axis = geometry["axes"]
    shared.SamplesPerPixel = 1
    shared.PhotometricInterpretation = "MONOCHROME2"
    shared.Rows, shared.Columns = array.shape[row_axis], array.shape[column_axis]
    shared.BitsAllocated = shared.BitsStored = 16
    shared.HighBit = 15
    shared.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
    shared.PixelSpacing = [_ds(value) for value in geometry["pixel_spacing"]]
    shared.ImageOrientationPatient = [_ds(value) for value in geometry["orientation"]]
    shared.SliceThickness = shared.SpacingBetweenSlices = _ds(geometry["slice_spacing"])
    if modality == "CT" or (slope, intercept) != (1.0, 0.0):  # CT needs them; HU kept
        shared.RescaleSlope, shared.RescaleIntercept = _ds(slope), _ds(intercept)
    if "WindowCenter" not in shared:  # the source's window is in the same units
        sample = array.ravel()[:: max(1, array.size // 1_000_000)]
        low, high = np.percentile(sample, [0.5, 99.5])
        shared.WindowCenter = _ds((low + high) / 2)
        shared.WindowWidth = _ds(max(float(high - low), 1.0))
    return stored


def _write_slice(
    shared, pixels: np.ndarray, geometry: dict, index: int, path: Path, digest: str
) -> None:
    """One file: the shared attributes, this slice's UID, number, position and pixels."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

    ds = Dataset()
    ds.update(shared)  # a shallow copy: the shared elements are not changed
    ds.SOPClassUID = CTImageStorage if shared.Modality == "CT" else MRImageStorage
    ds.SOPInstanceUID = _uid(digest, "instance", index)
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [_ds(value) for value in geometry["positions"][index]]
    ds.SliceLocation = _ds(geometry["locations"][index])
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    else:  # pydicom 2.4: the encoding lives on the dataset
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(path, ds, write_like_original=False)
