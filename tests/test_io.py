import json
import xml.etree.ElementTree as ET
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from conftest import make_affine, phantom_array, write_dicom_series

from medsr.errors import MedsrError
from medsr.io import Volume, read_volume, write_volume
from medsr.io.sections import natural_key


def _assert_same_geometry(a: Volume, b: Volume, atol: float = 1e-5) -> None:
    np.testing.assert_array_equal(a.array, b.array)
    assert a.array.dtype == b.array.dtype
    np.testing.assert_allclose(a.affine, b.affine, atol=atol)
    assert a.unit == b.unit


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "LIA", "oblique"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_volume_formats_round_trip(tmp_path, orientation, suffix):
    array = phantom_array((7, 6, 5))
    volume = Volume(array=array, affine=make_affine(orientation, (0.7, 0.8, 3.3)))
    back = read_volume(write_volume(volume, tmp_path / f"v{suffix}"))
    _assert_same_geometry(volume, back)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_nifti_keeps_codes_units_and_description(tmp_path):
    meta = {"qform_code": 2, "sform_code": 4, "description": "T2 axial", "unit": "um"}
    volume = Volume(
        array=np.arange(60, dtype=np.int16).reshape(3, 4, 5),
        affine=make_affine("LIA", (5.0, 5.0, 40.0)),
        meta=meta,
    )
    path = write_volume(volume, tmp_path / "v.nii.gz")
    back = read_volume(path)
    _assert_same_geometry(volume, back)
    header = nib.load(path).header
    # the affine is the sform's, and both forms hold it: both say so (docs/geometry.md)
    assert (int(header["qform_code"]), int(header["sform_code"])) == (4, 4)
    assert header.get_xyzt_units()[0] == "micron"
    assert back.meta["description"] == "T2 axial"
    np.testing.assert_allclose(header.get_qform(), header.get_sform(), atol=1e-5)


def test_nifti_with_missing_codes_gets_both_forms(tmp_path):
    volume = Volume(
        array=np.zeros((2, 3, 4), np.float32),
        affine=make_affine("RAS", (1, 1, 2)),
        meta={"qform_code": 0, "sform_code": 2},
    )
    header = nib.load(write_volume(volume, tmp_path / "v.nii")).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (2, 2)


def test_nifti_rgb_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3, 3), dtype=np.uint8)
    volume = Volume(array=rgb, affine=np.diag([1, 1, 4, 1.0]))
    _assert_same_geometry(volume, read_volume(write_volume(volume, tmp_path / "c.nii.gz")))


@pytest.mark.parametrize("orientation", ["RAS", "LIA", "oblique"])
def test_simpleitk_reads_our_nifti_like_nibabel(tmp_path, orientation):
    """3D Slicer reads NIfTI through ITK: origin, spacing and direction must agree."""
    affine = make_affine(orientation, (0.5, 0.6, 3.6))
    path = write_volume(
        Volume(array=np.zeros((4, 5, 6), np.int16), affine=affine), tmp_path / "v.nii.gz"
    )
    image = sitk.ReadImage(str(path))
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(image.GetSpacing(), [0.5, 0.6, 3.6], atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), lps @ affine[:3, 3], atol=1e-4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction, lps @ affine[:3, :3] / [0.5, 0.6, 3.6], atol=1e-5)


def test_dicom_series_folder_is_read(tmp_path):
    affine = make_affine("LPS", (0.9, 0.9, 4.0), origin=(10.0, -5.0, 3.0))
    image = sitk.GetImageFromArray(np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5))
    image.SetSpacing((0.9, 0.9, 4.0))
    image.SetOrigin((-10.0, 5.0, 3.0))  # LPS of RAS (10, -5, 3)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = tmp_path / "dicom"
    series.mkdir()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        plane.SetMetaData("0020|0032", "\\".join(f"{c:f}" for c in origin))
        plane.SetMetaData("0020|0013", str(k))
        plane.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        plane.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        writer.SetFileName(str(series / f"slice{k}.dcm"))
        writer.Execute(plane)
    volume = read_volume(series)
    assert volume.spatial_shape == (5, 6, 4)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image).transpose(2, 1, 0))


@pytest.mark.parametrize("unit", ["um", "mm"])
def test_ome_tiff_round_trip_keeps_physical_sizes(tmp_path, unit):
    volume = Volume(
        array=phantom_array((8, 6, 4)), affine=np.diag([0.5, 0.5, 20.0, 1]), meta={"unit": unit}
    )
    path = write_volume(volume, tmp_path / "v.ome.tif")
    _assert_same_geometry(volume, read_volume(path))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and 'PhysicalSizeZ="20.0"' in tif.ome_metadata


def test_rgb_ome_tiff_round_trip(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (6, 5, 3, 3), dtype=np.uint8)
    volume = Volume(array=rgb, affine=np.diag([0.25, 0.25, 8.0, 1]), meta={"unit": "um"})
    _assert_same_geometry(volume, read_volume(write_volume(volume, tmp_path / "c.ome.tif")))


def test_imagej_tiff_spacing_is_read(tmp_path):
    stack = np.zeros((3, 5, 4), np.uint16)  # (Z, Y, X)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        stack,
        imagej=True,
        resolution=(1 / 0.4, 1 / 0.4),
        metadata={"spacing": 12.0, "unit": "micron"},
    )
    volume = read_volume(path)
    assert volume.spatial_shape == (4, 5, 3) and volume.unit == "um"
    np.testing.assert_allclose(volume.spacing, [0.4, 0.4, 12.0], rtol=1e-6)


def test_input_spacing_overrides_header_and_supplies_tiff_spacing(tmp_path, phantom):
    path = write_volume(phantom, tmp_path / "p.nii.gz")
    fixed = read_volume(path, spacing=[1, 1, 5])
    np.testing.assert_allclose(fixed.spacing, [1, 1, 5])
    np.testing.assert_allclose(fixed.affine[:3, 3], phantom.affine[:3, 3])
    tifffile.imwrite(
        tmp_path / "plain.tif", np.zeros((3, 4, 5), np.uint8), photometric="minisblack"
    )
    with pytest.raises(MedsrError, match="no spacing"):
        read_volume(tmp_path / "plain.tif")
    volume = read_volume(tmp_path / "plain.tif", spacing=[2, 2, 50], unit="um")
    np.testing.assert_allclose(volume.spacing, [2, 2, 50])


def test_section_folder_natural_order_grey_and_rgb(tmp_path):
    from PIL import Image

    folder = tmp_path / "sections"
    folder.mkdir()
    for index in (1, 2, 10):  # lexical order would put 10 before 2
        tifffile.imwrite(folder / f"s{index}.tif", np.full((4, 6), index, np.uint8))
    (folder / "series.json").write_text(json.dumps({"spacing": [0.5, 0.5, 30], "unit": "um"}))
    volume = read_volume(folder)
    assert volume.spatial_shape == (6, 4, 3)
    assert volume.array[0, 0].tolist() == [1, 2, 10]
    np.testing.assert_allclose(volume.spacing, [0.5, 0.5, 30])
    colour = tmp_path / "colour"
    colour.mkdir()
    for index in range(3):
        Image.fromarray(np.full((4, 6, 3), [index, 100, 200], np.uint8)).save(
            colour / f"{index}.png"
        )
    volume = read_volume(colour, spacing=[1, 1, 10])
    assert volume.array.shape == (6, 4, 3, 3) and volume.array[0, 0, 2].tolist() == [2, 100, 200]


def test_a_dicom_folder_with_a_stray_png_is_dicom_for_every_command(tmp_path, capsys):
    from PIL import Image

    from medsr.batch.plan import discover
    from medsr.cli import main
    from medsr.io import default_output_suffix

    root = tmp_path / "in"
    exam = write_dicom_series(root / "exam")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(exam / "preview.png")
    volume = read_volume(exam)
    assert volume.meta["format"] == "dicom" and volume.spatial_shape == (10, 12, 5)
    assert default_output_suffix(exam) == ".nii.gz"
    tasks = discover(root, tmp_path / "out", None, None)
    assert [(t.key, Path(t.output).name) for t in tasks] == [("exam", "exam.nii.gz")]
    assert main(["info", str(exam)]) == 0
    assert f"{exam} (dicom)" in capsys.readouterr().out
    from medsr.io import folder_kind  # the one rule behind all three

    assert folder_kind(exam) == "dicom"


def test_a_folder_of_neither_kind_is_one_clear_error(tmp_path):
    from PIL import Image

    folder = tmp_path / "qc"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "one.png")
    with pytest.raises(MedsrError, match="neither a DICOM series nor 2D sections"):
        read_volume(folder)


def test_natural_key_orders_numbers():
    names = ["s10.tif", "s2.tif", "S1.tif"]
    assert sorted(names, key=natural_key) == ["S1.tif", "s2.tif", "s10.tif"]


def _write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def _truncated_nifti(folder) -> bytes:
    path = folder / "whole.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)), np.eye(4)), path)
    return path.read_bytes()[:-200]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.nii.gz", "input not found"),
        (lambda p: _write_bytes(p / "bad.nii.gz", b"\x1f\x8b\x08\x00garbage"), "cannot read"),
        (lambda p: _write_bytes(p / "cut.nii.gz", _truncated_nifti(p)), "cannot read"),
        (
            lambda p: (
                nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), p / "flat.nii")
                or p / "flat.nii"
            ),
            "expected a 3D volume",
        ),
        (
            lambda p: (
                nib.save(
                    nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), p / "series.nii"
                )
                or p / "series.nii"
            ),
            "holds 2 volumes",
        ),
        (
            lambda p: (
                nib.save(
                    nib.Nifti1Image(np.full((3, 3, 3), np.nan, np.float32), np.eye(4)),
                    p / "nan.nii",
                )
                or p / "nan.nii"
            ),
            "27 NaN/Inf voxels",
        ),
        (lambda p: _write_bytes(p / "x.xyz", b"data"), "unknown volume format"),
    ],
)
def test_bad_inputs_raise_clear_errors(tmp_path, make, message):
    with pytest.raises(MedsrError, match=message):
        read_volume(make(tmp_path))


def test_existing_output_is_not_overwritten(tmp_path, phantom):
    path = write_volume(phantom, tmp_path / "p.nrrd")
    before = path.read_bytes()
    with pytest.raises(MedsrError, match="output exists"):
        write_volume(phantom.with_array(phantom.array + 1), path)
    assert path.read_bytes() == before
    write_volume(phantom.with_array(phantom.array + 1), path, overwrite=True)
    assert read_volume(path).array[0, 0, 0] == phantom.array[0, 0, 0] + 1


def test_failed_write_leaves_nothing(tmp_path):
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    volume = Volume(array=np.zeros((2, 2, 2), np.float32), affine=sheared)
    with pytest.raises(MedsrError, match="shear"):
        write_volume(volume, tmp_path / "s.mha")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rgb", [False, True])
def test_ome_tiff_keeps_the_origin_of_the_output_grid(tmp_path, rgb):
    """20 µm sections upsampled to 0.5 µm start 9.75 µm before the first section's centre: the
    OME plane positions carry that origin, so Fiji and napari place the output on its input."""
    from medsr.geometry import plan_output_grid

    sections = np.diag([0.5, 0.5, 20.0, 1])
    sections[:3, 3] = [3.25, -1.5, 40.0]
    grid = plan_output_grid((8, 6, 4), sections, spacing=0.5)
    assert grid.affine[2, 3] == pytest.approx(40.0 - 9.75)
    shape = (*grid.shape, 3) if rgb else grid.shape
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    volume = Volume(array=array, affine=grid.affine, meta={"unit": "um"})
    path = write_volume(volume, tmp_path / "v.ome.tif")
    _assert_same_geometry(volume, read_volume(path))
    with tifffile.TiffFile(path) as tif:
        planes = [el for el in ET.fromstring(tif.ome_metadata).iter() if el.tag.endswith("Plane")]
    assert len(planes) == grid.shape[2]
    for k, plane in enumerate(planes):
        assert float(plane.get("PositionZ")) == pytest.approx(40.0 - 9.75 + 0.5 * k)
        assert float(plane.get("PositionX")) == pytest.approx(3.25)
        assert {plane.get(f"Position{a}Unit") for a in "XYZ"} == {"µm"}


def test_ome_tiff_positions_in_another_unit_and_files_without_positions(tmp_path):
    stack = np.zeros((3, 4, 5), np.uint16)  # (Z, Y, X)
    sizes = {"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0}
    tifffile.imwrite(tmp_path / "plain.ome.tif", stack, ome=True, metadata={"axes": "ZYX", **sizes})
    plain = read_volume(tmp_path / "plain.ome.tif")
    np.testing.assert_allclose(plain.affine, np.diag([0.5, 0.5, 2.0, 1]))
    plane = {"PositionX": [0.001] * 3, "PositionY": [-0.002] * 3, "PositionZ": [0.01] * 3}
    plane.update({f"Position{a}Unit": ["mm"] * 3 for a in "XYZ"})
    tifffile.imwrite(
        tmp_path / "mm.ome.tif", stack, ome=True, metadata={"axes": "ZYX", **sizes, "Plane": plane}
    )
    placed = read_volume(tmp_path / "mm.ome.tif")
    assert placed.unit == "um"
    np.testing.assert_allclose(placed.affine[:3, 3], [1.0, -2.0, 10.0])


def _scaled_ct(path, slope=1.0, inter=-1024.0, dtype=np.int16):
    """A CT-like NIfTI: integers stored with scl_slope/scl_inter (values in HU)."""
    raw = np.rint(phantom_array((12, 10, 6), seed=4) * 20).astype(dtype)
    image = nib.Nifti1Image(raw, make_affine("LPS", (0.7, 0.7, 5.0)))
    image.header.set_slope_inter(slope, inter)
    nib.save(image, path)
    return raw


@pytest.mark.parametrize(("slope", "inter"), [(1.0, -1024.0), (0.5, 10.0)])
def test_scaled_nifti_keeps_its_stored_type_and_scaling(tmp_path, slope, inter):
    raw = _scaled_ct(tmp_path / "ct.nii.gz", slope, inter)
    volume = read_volume(tmp_path / "ct.nii.gz")
    assert volume.array.dtype == np.float32  # world units (HU), not float64
    np.testing.assert_array_equal(volume.array, raw * np.float32(slope) + np.float32(inter))
    path = write_volume(volume, tmp_path / "back.nii.gz")
    image = nib.load(path)
    assert image.get_data_dtype() == np.int16
    assert (image.dataobj.slope, image.dataobj.inter) == (slope, inter)
    np.testing.assert_array_equal(image.dataobj.get_unscaled(), raw)
    # values that the stored integers cannot hold: float32, exactly what was in memory
    shifted = volume.with_array(volume.array + np.float32(0.25 * slope))
    image = nib.load(write_volume(shifted, tmp_path / "off.nii.gz"))
    assert image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), shifted.array)


def test_scaled_nifti_through_upsample_keeps_stored_type_and_units(tmp_path):
    from medsr.cli import main
    from medsr.upsample.api import upsample_volume

    raw = _scaled_ct(tmp_path / "ct.nii.gz")
    out, floats = tmp_path / "iso.nii.gz", tmp_path / "iso_f.nii.gz"
    argv = ["upsample", str(tmp_path / "ct.nii.gz"), "--method", "bspline", "--quiet", "-o"]
    assert main([*argv, str(out)]) == 0
    image = nib.load(out)
    assert image.get_data_dtype() == np.int16
    assert (image.dataobj.slope, image.dataobj.inter) == (1.0, -1024.0)
    world = Volume(raw - 1024.0, make_affine("LPS", (0.7, 0.7, 5.0)))
    expected = upsample_volume(world, method="bspline", keep_dtype=False).array
    assert np.abs(np.asanyarray(image.dataobj) - expected).max() <= 0.5 + 1e-3
    assert main([*argv, str(floats), "--dtype", "float32"]) == 0
    assert nib.load(floats).get_data_dtype() == np.float32


def _nifti_with_forms(path, qform, qform_code, sform, sform_code):
    image = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), None)
    image.set_qform(qform, code=qform_code)
    image.set_sform(sform, code=sform_code)
    nib.save(image, path)
    return path


def test_nifti_codes_name_the_transform_that_is_written(tmp_path):
    """Both forms hold the affine medsr read (the sform when it has a code), so both carry that
    transform's code; an input without codes gets 'aligned' (2), never 'scanner'."""
    scanner, aligned = make_affine("LPS", (1, 1, 3)), make_affine("RAS", (1, 1, 3))
    path = _nifti_with_forms(tmp_path / "two.nii", scanner, 1, aligned, 2)
    back = nib.load(write_volume(read_volume(path), tmp_path / "two_out.nii")).header
    assert (int(back["qform_code"]), int(back["sform_code"])) == (2, 2)
    np.testing.assert_allclose(back.get_qform(), aligned, atol=1e-5)
    np.testing.assert_allclose(back.get_sform(), aligned, atol=1e-5)
    path = _nifti_with_forms(tmp_path / "none.nii", scanner, 0, aligned, 0)
    volume = read_volume(path)
    back = nib.load(write_volume(volume, tmp_path / "none_out.nii")).header
    assert (int(back["qform_code"]), int(back["sform_code"])) == (2, 2)
    np.testing.assert_allclose(back.get_sform(), volume.affine, atol=1e-5)
    np.testing.assert_allclose(back.get_qform(), volume.affine, atol=1e-5)
    path = _nifti_with_forms(tmp_path / "q.nii", scanner, 1, aligned, 0)
    back = nib.load(write_volume(read_volume(path), tmp_path / "q_out.nii")).header
    assert (int(back["qform_code"]), int(back["sform_code"])) == (1, 1)
    np.testing.assert_allclose(back.get_sform(), scanner, atol=1e-5)
    other = Volume(np.zeros((3, 4, 5), np.int16), scanner)  # NRRD, MHA, DICOM: scanner space
    back = nib.load(write_volume(other, tmp_path / "other.nii")).header
    assert (int(back["qform_code"]), int(back["sform_code"])) == (1, 1)


def test_a_failed_folder_rename_keeps_the_old_folder(tmp_path, monkeypatch):
    """The old folder is moved aside before the new one is renamed into place; when that rename
    fails, the old folder is moved back: never both gone."""
    import os

    import medsr.io.atomic as atomic

    old = tmp_path / "series"
    old.mkdir()
    (old / "IM00001.dcm").write_bytes(b"old")
    calls, real_replace = [], os.replace

    def failing_replace(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_replace(source, target)

    def write(staged):
        staged.mkdir()
        (staged / "IM00001.dcm").write_bytes(b"new")
        return staged

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_folder_atomically(old, write)
    assert (old / "IM00001.dcm").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["series"]  # no staging left
