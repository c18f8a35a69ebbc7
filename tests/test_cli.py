import hashlib

import nibabel as nib
import numpy as np
import pytest
import tifffile
from conftest import make_affine

from medsr.cli import main
from medsr.geometry import world_extent
from medsr.io import Volume, read_volume, write_volume


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("method", ["linear", "bspline"])
def test_upsample_writes_overlaying_output(tmp_path, phantom_path, method, capsys):
    out = tmp_path / "out.nii.gz"
    assert main(["upsample", str(phantom_path), "-o", str(out), "--method", method]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    source, result = read_volume(phantom_path), read_volume(out)
    assert result.spatial_shape == (20, 18, 32)
    assert result.array.dtype == np.int16
    np.testing.assert_allclose(result.spacing, [1, 1, 1])
    for a, b in zip(
        world_extent(source.spatial_shape, source.affine, 2),
        world_extent(result.spatial_shape, result.affine, 2),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)
    header = nib.load(out).header
    np.testing.assert_allclose(header.get_qform(), header.get_sform(), atol=1e-5)


def test_default_output_name_and_float_dtype(phantom_path):
    assert (
        main(
            [
                "upsample",
                "--method",
                "bspline",
                str(phantom_path),
                "--scale",
                "2.5",
                "--dtype",
                "float32",
                "--quiet",
            ]
        )
        == 0
    )
    out = phantom_path.parent / "phantom_bspline.nii.gz"
    result = read_volume(out)
    assert result.array.dtype == np.float32 and result.spatial_shape[2] == 20


def test_info_prints_geometry(phantom_path, capsys):
    assert main(["info", str(phantom_path)]) == 0
    text = capsys.readouterr().out
    assert "20 x 18 x 8" in text and "1 x 1 x 4 mm" in text and "LPS" in text
    assert "thick axis:  2" in text and "anisotropy:  4" in text
    assert "output grid: 20 x 18 x 32, 1 mm along axis 2 (factor 4" in text
    assert "learned:     covered (misr works up to x16)" in text


def test_info_says_when_the_learned_method_does_not_cover_the_factor(tmp_path, capsys):
    from medsr.io import Volume, write_volume

    volume = Volume(array=np.zeros((8, 8, 6), np.int16), affine=np.diag([0.25, 0.25, 6.0, 1]))
    path = write_volume(volume, tmp_path / "thick.nii.gz")
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "factor 24" in text and "not covered: x24 is above misr's x16" in text


def test_tiff_with_input_spacing_writes_ome_tiff(tmp_path):
    tifffile.imwrite(
        tmp_path / "stack.tif", np.zeros((4, 6, 5), np.uint16), photometric="minisblack"
    )
    assert (
        main(
            [
                "upsample",
                "--method",
                "bspline",
                str(tmp_path / "stack.tif"),
                "--input-spacing",
                "0.5",
                "0.5",
                "2",
                "--input-unit",
                "um",
                "--quiet",
            ]
        )
        == 0
    )
    result = read_volume(tmp_path / "stack_bspline.ome.tif")
    assert result.unit == "um" and result.spatial_shape == (5, 6, 16)
    np.testing.assert_allclose(result.spacing, [0.5, 0.5, 0.5])


def _nifti(path, array, spacing=(1, 1, 4)):
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)
    return path


BAD_INPUTS = {
    "missing": (lambda p: p / "nope.nii.gz", "input not found"),
    "corrupt gzip": (
        lambda p: (p / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08garbage") and p / "bad.nii.gz",
        "cannot read",
    ),
    "2D": (lambda p: _nifti(p / "flat.nii", np.zeros((5, 5), np.float32)), "expected a 3D volume"),
    "5D": (
        lambda p: _nifti(p / "odd.nii", np.zeros((5, 5, 5, 2, 2), np.float32)),
        "expected a 3D volume",
    ),
    "NaN": (
        lambda p: _nifti(
            p / "nan.nii",
            np.where(np.eye(5)[..., None] > 0, np.nan, 1).repeat(3, 2).astype(np.float32),
        ),
        "15 NaN/Inf voxels",
    ),
    "isotropic": (
        lambda p: _nifti(p / "iso.nii", np.ones((5, 5, 5), np.float32), (1, 1, 1)),
        "already isotropic",
    ),
    "TIFF without spacing": (
        lambda p: (
            tifffile.imwrite(p / "s.tif", np.zeros((3, 4, 4), np.uint8), photometric="minisblack")
            or p / "s.tif"
        ),
        "no spacing in the TIFF metadata",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line_and_exit_1(tmp_path, capsys, case):
    make, message = BAD_INPUTS[case]
    source = make(tmp_path)
    before = {p.name: _digest(p) for p in tmp_path.iterdir()}
    out = tmp_path / "out.nii.gz"
    assert main(["upsample", "--method", "bspline", str(source), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("medsr: error:") and len(err.splitlines()) == 1
    assert not out.exists()
    assert {p.name: _digest(p) for p in tmp_path.iterdir()} == before


def test_existing_output_and_output_equal_to_input_are_refused(tmp_path, phantom_path, capsys):
    out = tmp_path / "out.nii.gz"
    write_volume(Volume(array=np.zeros((2, 2, 2), np.int16), affine=np.eye(4)), out)
    before = _digest(out), _digest(phantom_path)
    assert main(["upsample", "--method", "bspline", str(phantom_path), "-o", str(out)]) == 1
    assert "output exists" in capsys.readouterr().err
    assert (
        main(
            [
                "upsample",
                "--method",
                "bspline",
                str(phantom_path),
                "-o",
                str(phantom_path),
                "--overwrite",
            ]
        )
        == 1
    )
    assert "is the input" in capsys.readouterr().err
    assert (_digest(out), _digest(phantom_path)) == before
    assert (
        main(
            [
                "upsample",
                "--method",
                "bspline",
                str(phantom_path),
                "-o",
                str(out),
                "--overwrite",
                "--quiet",
            ]
        )
        == 0
    )
    assert read_volume(out).spatial_shape == (20, 18, 32)


def test_isotropic_input_is_resampled_when_asked(tmp_path):
    source = _nifti(tmp_path / "iso.nii", np.ones((5, 5, 5), np.float32), (1, 1, 1))
    assert (
        main(["upsample", "--method", "bspline", str(source), "--spacing", "0.5", "--quiet"]) == 0
    )
    assert read_volume(tmp_path / "iso_bspline.nii").spatial_shape == (5, 5, 10)
    assert (
        main(
            [
                "upsample",
                "--method",
                "bspline",
                str(source),
                "--scale",
                "2",
                "--axis",
                "0",
                "-o",
                str(tmp_path / "x.nii"),
                "--quiet",
            ]
        )
        == 0
    )
    assert read_volume(tmp_path / "x.nii").spatial_shape == (10, 5, 5)


def test_unknown_method_is_a_usage_error(phantom_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["upsample", str(phantom_path), "--method", "nearest"])
    assert exit_info.value.code == 2


def test_oblique_lia_input_overlays(tmp_path):
    affine = make_affine("oblique", (0.8, 3.0, 0.9))  # thick axis in the middle
    source = write_volume(
        Volume(array=np.ones((6, 5, 7), np.float32), affine=affine), tmp_path / "obl.nrrd"
    )
    assert main(["upsample", "--method", "bspline", str(source), "--quiet"]) == 0
    result = read_volume(tmp_path / "obl_bspline.nrrd")
    assert result.spatial_shape == (6, round(5 * 3.0 / 0.8), 7)
    for a, b in zip(
        world_extent((6, 5, 7), affine, 1),
        world_extent(result.spatial_shape, result.affine, 1),
        strict=True,
    ):
        assert np.linalg.norm(a - b) <= 0.8 / 4 + 1e-6


@pytest.mark.parametrize("case", ["record", "dicom-record", "transforms", "labels-record"])
def test_an_existing_sidecar_is_refused_without_overwrite(tmp_path, phantom_path, capsys, case):
    """Every file written beside an output (provenance record, transforms) is checked before any
    work: a BIDS sidecar named as a DICOM folder's record is not replaced."""
    command = ["upsample", str(phantom_path), "--method", "bspline"]
    out = tmp_path / "q.nii.gz"
    if case == "record":
        sidecar = tmp_path / "q.nii.gz.json"
    elif case == "dicom-record":
        out, sidecar = tmp_path / "sub-01_T1w", tmp_path / "sub-01_T1w.json"
        command += ["--format", "dicom"]
    elif case == "transforms":
        sidecar = tmp_path / "q.nii.gz.transforms.json"
        command += ["--align"]
    else:
        labels = write_volume(
            Volume(
                (read_volume(phantom_path).array > 500).astype(np.uint8),
                read_volume(phantom_path).affine,
            ),
            tmp_path / "seg.nii.gz",
        )
        sidecar = tmp_path / "q_labels.nii.gz.json"
        command += ["--labels", str(labels)]
    sidecar.write_text('{"mine": 1}\n', encoding="utf-8")
    assert main([*command, "-o", str(out)]) == 1
    error = capsys.readouterr().err
    assert str(sidecar) in error and "--overwrite" in error and len(error.strip().splitlines()) == 1
    assert sidecar.read_text(encoding="utf-8") == '{"mine": 1}\n'
    assert not out.exists()
    assert main([*command, "-o", str(out), "--overwrite"]) == 0
    assert "mine" not in sidecar.read_text(encoding="utf-8")


def test_a_folder_output_without_format_dicom_names_the_option(tmp_path, phantom_path, capsys):
    folder = tmp_path / "existing"
    folder.mkdir()
    assert main(["upsample", str(phantom_path), "--method", "bspline", "-o", str(folder)]) == 1
    error = capsys.readouterr().err
    assert "or a folder with --format dicom" in error and len(error.strip().splitlines()) == 1
    (tmp_path / "scan.unknown").write_bytes(b"x")
    assert main(["info", str(tmp_path / "scan.unknown")]) == 1
    assert "or a folder)" in capsys.readouterr().err  # an input: any folder is read
