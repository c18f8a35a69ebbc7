"""DICOM series output: geometry against the NIfTI output of the same command, values (HU for
CT), UIDs and patient, bad outputs, and dciodvfy where dicom3tools is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import make_affine, phantom_array, write_dicom_series

from medsr.cli import main
from medsr.io import Volume, read_volume, write_volume
from medsr.io.itk import image_to_volume, volume_to_image

STUDY_UID = "1.2.826.0.1.3680043.2.1125.7.1"
SOURCE = {
    "0010|0010": "DOE^JANE",
    "0010|0020": "PAT-0042",
    "0010|0030": "19700101",
    "0010|0040": "F",
    "0020|000d": STUDY_UID,
    "0020|000e": STUDY_UID + ".2",
    "0020|0052": STUDY_UID + ".3",
    "0008|0020": "20240131",
    "0008|0030": "101500",
    "0020|0010": "77",
    "0008|0050": "ACC123",
    "0008|1030": "HEAD",
    "0008|103e": "AX 4mm",
    "0020|0011": "5",
}


def write_source_series(folder: Path, volume: Volume, modality: str) -> Path:
    """`volume` (axis 2 = slices) as a DICOM series written by SimpleITK; CT is stored as
    HU + 1024 with RescaleIntercept -1024, as scanners do."""
    image = volume_to_image(volume)
    folder.mkdir()
    direction = image.GetDirection()
    for index in range(image.GetDepth()):
        plane = image[:, :, index : index + 1]
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        tags = dict(SOURCE, **{"0008|0060": modality, "0020|0013": str(index + 1)})
        tags["0020|0032"] = "\\".join(f"{v:.6f}" for v in position)
        tags["0020|0037"] = "\\".join(f"{v:.6f}" for v in direction[0::3] + direction[1::3])
        tags["0018|0050"] = f"{image.GetSpacing()[2]:.6f}"
        tags["0028|0030"] = f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}"
        if modality == "CT":
            tags.update({"0028|1052": "-1024", "0028|1053": "1"})
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"src{index:03d}.dcm"))
        writer.Execute(plane)
    return folder


def read_datasets(folder: Path) -> list[pydicom.Dataset]:
    return sorted(
        (pydicom.dcmread(p) for p in folder.iterdir()), key=lambda ds: int(ds.InstanceNumber)
    )


def read_series_with_itk(folder: Path) -> Volume:
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    assert len(uids) == 1
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uids[0]))
    return image_to_volume(reader.Execute(), folder, "dicom")


def corners(volume: Volume) -> np.ndarray:
    """World positions of the 8 corner voxel centres."""
    last = np.array(volume.spatial_shape) - 1
    grid = np.array(np.meshgrid(*[[0, n] for n in last], indexing="ij")).reshape(3, -1)
    return (volume.affine[:3, :3] @ grid).T + volume.affine[:3, 3]


def assert_same_world_box(volume: Volume, reference: Volume) -> None:
    a, b = corners(volume), corners(reference)
    distance = np.linalg.norm(a[:, None] - b[None], axis=2).min(axis=1)
    assert distance.max() < 0.01


def aligned_array(volume: Volume, reference: Volume) -> np.ndarray:
    """`volume`'s array in `reference`'s axis order and directions (same grid, other order)."""
    own = volume.affine[:3, :3] / volume.spacing
    ref = reference.affine[:3, :3] / reference.spacing
    dots = ref.T @ own  # [reference axis, own axis]
    order = np.abs(dots).argmax(axis=1)
    array = np.transpose(volume.array, order)
    flips = [axis for axis in range(3) if dots[axis, order[axis]] < 0]
    return np.flip(array, flips) if flips else array


def dciodvfy_errors(folder: Path) -> list[str]:
    """Error lines of dciodvfy over every file (warnings are allowed)."""
    errors = []
    for path in sorted(folder.iterdir()):
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        errors += [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
    return errors


def upsample(source: Path, output: Path, *extra: str) -> None:
    argv = ["upsample", str(source), "-o", str(output), "--method", "bspline", "--quiet"]
    assert main([*argv, *extra]) == 0


def ct_source(tmp_path: Path) -> tuple[Path, Volume]:
    hu = np.rint(phantom_array((14, 12, 6)) * 12 - 1000).astype(np.int16)  # -1000 .. ~800 HU
    volume = Volume(hu, make_affine("LPS", (0.9, 0.7, 4.0)))
    return write_source_series(tmp_path / "ct", volume, "CT"), volume


@pytest.mark.parametrize("dtype", ["input", "float32"])
def test_a_dicom_ct_input_becomes_a_new_series_of_its_study(tmp_path, dtype):
    source, _ = ct_source(tmp_path)
    upsample(source, tmp_path / "out", "--format", "dicom", "--dtype", dtype, "--spacing", "1")
    upsample(source, tmp_path / "out.nii.gz", "--dtype", dtype, "--spacing", "1")
    nifti = read_volume(tmp_path / "out.nii.gz")
    files = read_datasets(tmp_path / "out")
    assert len(files) == nifti.spatial_shape[2] == 24
    originals = read_datasets(source)
    first = files[0]
    assert first.StudyInstanceUID == STUDY_UID and first.FrameOfReferenceUID == STUDY_UID + ".3"
    assert (first.PatientID, str(first.PatientName), first.AccessionNumber) == (
        "PAT-0042",
        "DOE^JANE",
        "ACC123",
    )
    assert first.SOPClassUID == pydicom.uid.CTImageStorage and first.Modality == "CT"
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert first.SeriesDescription == "AX 4mm medsr x4"
    assert {ds.SeriesInstanceUID for ds in files} == {first.SeriesInstanceUID}
    assert first.SeriesInstanceUID != originals[0].SeriesInstanceUID
    sops = {ds.SOPInstanceUID for ds in files}
    assert len(sops) == 24 and not sops & {ds.SOPInstanceUID for ds in originals}
    assert [int(ds.InstanceNumber) for ds in files] == list(range(1, 25))
    assert float(first.SliceThickness) == float(first.SpacingBetweenSlices) == 1.0
    assert [float(v) for v in first.PixelSpacing] == [0.7, 0.9]  # row spacing first
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                   for ds in files], axis=2).transpose(1, 0, 2)  # fmt: skip
    step = float(first.RescaleSlope)
    assert step == 1.0 if dtype == "input" else step < 0.05
    np.testing.assert_allclose(hu, nifti.array, atol=step / 2 + 1e-6)
    itk = read_series_with_itk(tmp_path / "out")
    assert_same_world_box(itk, nifti)
    np.testing.assert_allclose(aligned_array(itk, nifti), nifti.array, atol=step / 2 + 1e-3)


@pytest.mark.parametrize(
    ("orientation", "spacing"),
    [("LIA", (0.9, 4.0, 1.1)), ("oblique", (0.9, 1.1, 4.0)), ("RAS", (4.0, 0.9, 1.1))],
)
def test_a_nifti_input_gets_a_new_patient_and_exact_geometry(tmp_path, orientation, spacing):
    thick = int(np.argmax(spacing))
    shape = [14, 12, 10]
    shape[thick] = 6
    volume = Volume(phantom_array(tuple(shape)), make_affine(orientation, spacing))
    source = write_volume(volume, tmp_path / "in.nii.gz")
    extra = ("--format", "dicom", "--dicom-patient-id", "STUDY-007")
    upsample(source, tmp_path / "out", "--spacing", "1", *extra)
    upsample(source, tmp_path / "out.nii.gz", "--spacing", "1")
    nifti = read_volume(tmp_path / "out.nii.gz")
    files = read_datasets(tmp_path / "out")
    assert len(files) == nifti.spatial_shape[thick] == 24
    first = files[0]
    assert first.PatientID == "STUDY-007" and first.Modality == "MR"
    assert first.SOPClassUID == pydicom.uid.MRImageStorage
    assert pydicom.uid.UID(first.StudyInstanceUID).is_valid
    assert first.StudyInstanceUID != first.SeriesInstanceUID != first.FrameOfReferenceUID
    lps = np.diag([-1.0, -1.0, 1.0])
    linear, origin = lps @ nifti.affine[:3, :3], lps @ nifti.affine[:3, 3]
    in_plane = [axis for axis in range(3) if axis != thick]
    direction = linear / nifti.spacing
    expected = np.concatenate([direction[:, in_plane[0]], direction[:, in_plane[1]]])
    np.testing.assert_allclose(
        [float(v) for v in first.ImageOrientationPatient], expected, atol=1e-9
    )
    for index, ds in enumerate(files):
        position = origin + index * linear[:, thick]
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], position, atol=1e-6)
    assert [float(v) for v in first.PixelSpacing] == pytest.approx(
        [nifti.spacing[in_plane[1]], nifti.spacing[in_plane[0]]]
    )
    assert float(first.SliceThickness) == pytest.approx(nifti.spacing[thick])
    itk = read_series_with_itk(tmp_path / "out")
    assert_same_world_box(itk, nifti)
    step = float(first.get("RescaleSlope", 1.0))
    np.testing.assert_allclose(aligned_array(itk, nifti), nifti.array, atol=step / 2 + 1e-4)


def test_the_same_command_writes_the_same_files_and_new_content_new_uids(tmp_path, phantom_path):
    upsample(phantom_path, tmp_path / "a", "--format", "dicom")
    upsample(phantom_path, tmp_path / "b", "--format", "dicom")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(names) == 32
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    upsample(phantom_path, tmp_path / "c", "--format", "dicom", "--scale", "2")
    a, c = read_datasets(tmp_path / "a")[0], read_datasets(tmp_path / "c")[0]
    assert a.PatientID == c.PatientID == "MEDSR-ANON"
    assert a.SeriesInstanceUID != c.SeriesInstanceUID and a.SOPInstanceUID != c.SOPInstanceUID
    assert not list(tmp_path.glob(".medsr-tmp-*"))  # the staging folder is gone


def test_overwrite_replaces_only_a_dicom_folder(tmp_path, phantom_path, capsys):
    upsample(phantom_path, tmp_path / "out", "--format", "dicom")
    before = (tmp_path / "out" / "IM00001.dcm").read_bytes()
    argv = ["upsample", str(phantom_path), "-o", str(tmp_path / "out"), "--format", "dicom"]
    assert main([*argv, "--method", "bspline"]) == 1
    assert "not empty" in capsys.readouterr().err
    upsample(phantom_path, tmp_path / "out", "--format", "dicom", "--overwrite", "--scale", "2")
    assert len(list((tmp_path / "out").iterdir())) == 16
    assert (tmp_path / "out" / "IM00001.dcm").read_bytes() != before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep", encoding="utf-8")
    argv = ["upsample", str(phantom_path), "-o", str(tmp_path / "other"), "--format", "dicom"]
    assert main([*argv, "--method", "bspline", "--overwrite"]) == 1
    assert "holds other things than .dcm files" in capsys.readouterr().err
    assert (tmp_path / "other" / "notes.txt").exists()


@pytest.mark.parametrize(
    ("output", "extra", "message"),
    [
        ("out.nii.gz", ["--format", "dicom"], "ends with the file suffix .nii.gz"),
        ("file", ["--format", "dicom"], "is a file"),
        ("out", ["--format", "dicom", "--dicom-patient-id", "X" * 65], "1 to 64 characters"),
        ("out.nii.gz", ["--dicom-patient-id", "X"], "need --format dicom"),
    ],
)
def test_bad_dicom_outputs_fail_in_one_line_before_any_work(
    tmp_path, phantom_path, capsys, output, extra, message
):
    (tmp_path / "file").write_text("x", encoding="utf-8")
    argv = ["upsample", str(phantom_path), "-o", str(tmp_path / output), "--method", "bspline"]
    code = main([*argv, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "phantom.nii.gz"]


def test_a_dicom_input_keeps_its_patient(tmp_path, capsys):
    source, _ = ct_source(tmp_path)
    argv = ["upsample", str(source), "-o", str(tmp_path / "out"), "--format", "dicom"]
    assert main([*argv, "--dicom-patient-id", "X", "--method", "bspline"]) == 1
    assert "keeps its patient" in capsys.readouterr().err
    assert main([*argv, "--dicom-modality", "MR", "--method", "bspline"]) == 1
    assert "contradicts the source series' CT" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy not installed")
@pytest.mark.parametrize("case", ["ct-source", "nifti-mr", "nifti-ct-float"])
def test_dciodvfy_finds_no_errors(tmp_path, phantom_path, case):
    if case == "ct-source":
        upsample(ct_source(tmp_path)[0], tmp_path / "out", "--format", "dicom")
    elif case == "nifti-mr":
        upsample(phantom_path, tmp_path / "out", "--format", "dicom")
    else:
        extra = ("--dicom-modality", "CT", "--dtype", "float32")
        upsample(phantom_path, tmp_path / "out", "--format", "dicom", *extra)
    assert dciodvfy_errors(tmp_path / "out") == []


def test_a_source_without_frame_of_reference_gets_a_new_one(tmp_path):
    # SimpleITK's series (as some exports) carry no FrameOfReferenceUID: Type 1 in MR/CT images
    source = write_dicom_series(tmp_path / "src")
    assert "FrameOfReferenceUID" not in pydicom.dcmread(next(source.iterdir()))
    upsample(source, tmp_path / "out", "--format", "dicom")
    first = pydicom.dcmread(sorted((tmp_path / "out").iterdir())[0])
    assert (
        first.FrameOfReferenceUID and first.StudyInstanceUID == "1.2.826.0.1.3680043.2.1125.1.42.1"
    )
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(tmp_path / "out") == []


def test_the_dicom_log_line_names_the_final_folder(tmp_path, phantom_path, capsys):
    """The series is written in a hidden staging folder and renamed: the log names the folder
    that exists afterwards."""
    out = tmp_path / "series"
    command = ["upsample", str(phantom_path), "--method", "bspline", "--format", "dicom"]
    assert main([*command, "-o", str(out)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "wrote DICOM" in line]
    assert len(lines) == 1 and lines[0].endswith(f" in {out}") and ".medsr-tmp-" not in lines[0]
