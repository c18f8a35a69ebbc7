"""The DICOM header of a written series: tags copied from a DICOM source, the modalities'
defaults, and the checks made before any work (input and output)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsr.errors import MedsrError
from medsr.io.volume import Volume

#: patient ID (and name) of a series made from a non-DICOM input, unless the user sets one
DEFAULT_PATIENT_ID = "MEDSR-ANON"


#: the modalities medsr writes, each as its classic single-frame Image Storage SOP class
MODALITIES = ("MR", "CT")


#: copied from a DICOM source: patient, study, frame of reference and series context
SOURCE_TAGS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Modality",
    "BodyPartExamined",
    "PatientPosition",
    "Laterality",
    "ProtocolName",
    "WindowCenter",
    "WindowWidth",
)


#: acquisition attributes of the MR and CT Image modules, copied when the source has them
ACQUISITION_TAGS = {
    "MR": (
        "ScanningSequence",
        "SequenceVariant",
        "ScanOptions",
        "MRAcquisitionType",
        "SequenceName",
        "RepetitionTime",
        "EchoTime",
        "InversionTime",
        "EchoTrainLength",
        "FlipAngle",
        "MagneticFieldStrength",
        "ImagingFrequency",
        "ImagedNucleus",
    ),
    "CT": ("KVP", "ConvolutionKernel", "XRayTubeCurrent", "ExposureTime"),
}


#: type 1 and 2 attributes that a series without a DICOM source still needs (empty: unknown)
TAG_DEFAULTS = {
    "PatientBirthDate": "",
    "PatientSex": "",
    "StudyDate": "",
    "StudyTime": "",
    "StudyID": "",
    "AccessionNumber": "",
    "ReferringPhysicianName": "",
    "PositionReferenceIndicator": "",
    "PatientPosition": "",
    "Laterality": "",
}


#: ImageType value 3, which the MR and CT Image modules require (a resampled series, not a map)
IMAGE_TYPE_3 = {"MR": "OTHER", "CT": "AXIAL"}


MODALITY_DEFAULTS = {
    # research mode, no variant: the acquisition of a non-DICOM input is unknown
    "MR": {
        "ScanningSequence": "RM",
        "SequenceVariant": "NONE",
        "ScanOptions": "",
        "MRAcquisitionType": "",
        "RepetitionTime": "",
        "EchoTime": "",
        "EchoTrainLength": "",
    },
    "CT": {"KVP": ""},
}


def read_source_header(volume: Volume):
    """The header (no pixels) of the first file of the DICOM series `volume` was read from, or
    None for a volume read from any other format."""
    import pydicom

    files = volume.meta.get("dicom_files")
    if not files:
        return None
    return pydicom.dcmread(files[0], stop_before_pixels=True)


def series_modality(source, modality: str | None) -> str:
    """The modality (and SOP class) to write: a DICOM source's own (MR or CT), else `modality`,
    else MR (medsr's thick-slice scans are mostly MRI; NIfTI records no modality).

    Raises:
        MedsrError: a source of another modality, or a `modality` that contradicts the source's.
    """
    if modality is not None and modality not in MODALITIES:
        raise MedsrError(f"--dicom-modality must be MR or CT, got '{modality}'")
    if source is None:
        return modality or "MR"
    own = str(source.get("Modality", "")).upper()
    if own not in MODALITIES:
        raise MedsrError(
            f"the source series is modality '{own or '?'}'; medsr writes MR or CT DICOM series "
            "(write NIfTI instead)"
        )
    if modality is not None and modality != own:
        raise MedsrError(f"--dicom-modality {modality} contradicts the source series' {own}")
    return own


def check_dicom_input(
    volume: Volume, *, patient_id: str | None = None, modality: str | None = None
) -> None:
    """Everything about a DICOM output that depends on its input, checked before any work: grey
    voxels, no shear, a modality medsr writes, and a patient ID only for a non-DICOM input.

    Raises:
        MedsrError: the first problem, in one line.
    """
    if volume.num_channels != 1:
        raise MedsrError("a DICOM series is written from grey volumes; this one is RGB")
    direction = volume.affine[:3, :3] / volume.spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-5):
        raise MedsrError("this affine has shear, which a DICOM series cannot store; write NIfTI")
    source = read_source_header(volume)
    series_modality(source, modality)
    if source is not None and patient_id is not None:
        raise MedsrError(
            "--dicom-patient-id is for non-DICOM inputs; a DICOM input keeps its patient and study"
        )
    if patient_id is not None and not 0 < len(patient_id) <= 64:
        raise MedsrError(f"--dicom-patient-id must be 1 to 64 characters, got '{patient_id}'")


def check_dicom_output(path: Path, *, overwrite: bool = False) -> Path:
    """A DICOM output is a folder: not an existing file, not a name with a volume file suffix,
    and not an existing non-empty folder unless `overwrite` (then only a folder of .dcm files,
    as medsr writes them, is replaced).

    Raises:
        MedsrError: the first problem, in one line.
    """
    from medsr.io.paths import split_volume_name

    if path.is_file():
        raise MedsrError(f"--format dicom writes a folder, but '{path}' is a file")
    suffix = split_volume_name(path)[1]
    if suffix:
        raise MedsrError(
            f"--format dicom writes a folder; '{path}' ends with the file suffix {suffix}"
        )
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise MedsrError(f"output folder exists and is not empty: '{path}' (use --overwrite)")
        if not all(p.is_file() and p.suffix.lower() == ".dcm" for p in path.iterdir()):
            raise MedsrError(
                f"'{path}' holds other things than .dcm files; medsr replaces only a DICOM "
                "series folder; choose another output"
            )
    return path
