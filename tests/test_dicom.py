"""DICOM folders as scanners export them: several series, one slice, uneven positions, gaps."""

import json

import numpy as np
import pytest
from conftest import write_dicom_series

from medsr.cli import main
from medsr.errors import MedsrError
from medsr.io import read_volume
from medsr.io.itk import list_dicom_series


def test_series_are_listed_and_several_without_a_choice_is_an_error(tmp_path, capsys):
    folder = write_dicom_series(tmp_path / "exam", uid="1.2.3.1", number=3, description="T2 AX")
    write_dicom_series(folder, uid="1.2.3.2", number=4, description="LOCALIZER", positions=[0.0])
    found = {s.number: s for s in list_dicom_series(folder)}
    assert set(found) == {"3", "4"} and len(found["3"].files) == 5
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "2 DICOM series" in out and "'T2 AX': 5 slice(s)" in out and "LOCALIZER" in out
    code = main(["upsample", str(folder), "-o", str(tmp_path / "o.nii.gz"), "--method", "linear"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "holds 2 DICOM series; choose one with --series" in err and "1.2.3.2" in err
    out = tmp_path / "t2.nii.gz"
    assert (
        main(["upsample", str(folder), "--series", "3", "-o", str(out), "--method", "linear"]) == 0
    )
    assert read_volume(out).spatial_shape == (10, 12, 25)
    with pytest.raises(MedsrError, match="no single DICOM series '9'"):
        read_volume(folder, series="9")


def test_a_single_slice_is_an_error(tmp_path, capsys):
    folder = write_dicom_series(tmp_path / "one", positions=[0.0])
    code = main(["upsample", str(folder), "-o", str(tmp_path / "o.nii.gz"), "--method", "linear"])
    assert code == 1 and "1 slice(s) along its thick axis" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_uneven_positions_are_an_error_that_names_them(tmp_path):
    folder = write_dicom_series(tmp_path / "uneven", positions=[0.0, 4.0, 8.0, 14.0, 18.0])
    with pytest.raises(MedsrError, match=r"uneven slice positions.*slices 3->4 \(6 mm\)"):
        read_volume(folder)


def test_slice_spacing_from_positions_and_thickness_as_the_fit_profile(
    tmp_path, identity_checkpoint
):
    folder = write_dicom_series(
        tmp_path / "gap", positions=[0.0, 5.0, 10.0, 15.0, 20.0], thickness=3.0
    )
    volume = read_volume(folder)
    assert volume.spacing[2] == pytest.approx(5.0) and volume.meta["slice_thickness"] == 3.0
    out = tmp_path / "o.nii.gz"
    argv = ["upsample", str(folder), "-o", str(out), "--model", str(identity_checkpoint)]
    assert main([*argv, "--fit-steps", "1", "--quiet"]) == 0
    record = json.loads((tmp_path / "o.nii.gz.json").read_text(encoding="utf-8"))
    assert record["slice_thickness_ratio"] == pytest.approx(0.6)
    out2 = tmp_path / "o2.nii.gz"
    argv = ["upsample", str(folder), "-o", str(out2), "--model", str(identity_checkpoint)]
    assert main([*argv, "--fit-steps", "1", "--slice-thickness", "5mm", "--quiet"]) == 0
    record = json.loads((tmp_path / "o2.nii.gz.json").read_text(encoding="utf-8"))
    assert record["slice_thickness_ratio"] == pytest.approx(1.0)
    assert np.isfinite(read_volume(out2).array).all()


def test_files_without_an_extension_are_read(tmp_path):
    folder = write_dicom_series(tmp_path / "export", extension="")
    assert not any(p.suffix for p in folder.iterdir())
    assert read_volume(folder).spatial_shape == (10, 12, 5)
