import csv
import json
import struct

import numpy as np
import pytest
from conftest import make_affine, phantom_array

from medsr.cli import main
from medsr.evaluate.figures import world_plane
from medsr.evaluate.report import _markdown
from medsr.evaluate.simulate import score, simulate_acquisition
from medsr.evaluate.tables import write_tables
from medsr.io import Volume, read_volume, write_volume


@pytest.fixture
def hr_files(tmp_path):
    paths = []
    for seed in (0, 1):
        volume = Volume(
            array=phantom_array((26, 24, 24), seed=seed) + 20,
            affine=make_affine("LIA", (1.0, 1.0, 1.0)),
        )
        paths.append(write_volume(volume, tmp_path / f"hr{seed}.nii.gz"))
    return paths


def _png_size(path):
    with open(path, "rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_volume_against_itself_is_infinite_psnr_and_reported_so(tmp_path):
    truth = phantom_array((20, 20, 20)) + 20
    mask = truth > 50
    scores = score(truth, truth, mask=mask, axis=2)
    assert scores["psnr"] == float("inf") and scores["ssim"] == pytest.approx(1.0)
    assert scores["hfen"] == 0.0 and scores["sharpness"] == pytest.approx(1.0)
    rows = [{"volume": "v", "method": "truth", **scores, "seconds": 0.0}]
    write_tables(rows, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))[0]["psnr"] == "inf"
    assert list(csv.DictReader((tmp_path / "metrics.csv").open()))[0]["psnr"] == "inf"
    assert "inf (identical)" in _markdown(rows, [], [])


def test_bspline_row_equals_what_upsample_writes(tmp_path, hr_files):
    report = tmp_path / "report"
    assert (
        main(
            [
                "evaluate",
                str(hr_files[0]),
                "--factor",
                "3",
                "--axis",
                "1",
                "--methods",
                "bspline",
                "--out",
                str(report),
                "--quiet",
            ]
        )
        == 0
    )
    row = list(csv.DictReader((report / "metrics.csv").open()))[0]
    acquisition = simulate_acquisition(read_volume(hr_files[0]), factor=3, axis=1)
    thick = write_volume(acquisition.thick, tmp_path / "thick.nii.gz")
    out = tmp_path / "thick_bspline.nii.gz"
    assert (
        main(
            [
                "upsample",
                str(thick),
                "-o",
                str(out),
                "--method",
                "bspline",
                "--spacing",
                "1",
                "--axis",
                "1",
                "--dtype",
                "float32",
                "--quiet",
            ]
        )
        == 0
    )
    from medsr.evaluate.simulate import evaluation_mask

    truth = acquisition.truth.array
    expected = score(read_volume(out).array, truth, mask=evaluation_mask(truth), axis=1)
    assert float(row["psnr"]) == pytest.approx(expected["psnr"], abs=1e-3)
    assert float(row["ssim"]) == pytest.approx(expected["ssim"], abs=1e-5)


def test_report_files_figures_and_means(tmp_path, hr_files):
    report = tmp_path / "report"
    assert (
        main(
            [
                "evaluate",
                *map(str, hr_files),
                "--factor",
                "2.5",
                "--profile",
                "gaussian",
                "--methods",
                "linear,bspline",
                "--out",
                str(report),
                "--quiet",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((report / "metrics.csv").open()))
    assert [(r["volume"], r["method"]) for r in rows] == [
        ("hr0", "linear"),
        ("hr0", "bspline"),
        ("hr1", "linear"),
        ("hr1", "bspline"),
        ("mean", "linear"),
        ("mean", "bspline"),
    ]
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "Otsu foreground mask" in text and "data range" in text and "hr0_planes.png" in text
    width_two, height_two = _png_size(report / "hr0_planes.png")
    report3 = tmp_path / "report3"
    assert (
        main(
            [
                "evaluate",
                str(hr_files[0]),
                "--factor",
                "2.5",
                "--methods",
                "linear,bspline,misr",
                "--fit-seconds",
                "0",
                "--out",
                str(report3),
                "--quiet",
            ]
        )
        == 0
    )
    width_three, height_three = _png_size(report3 / "hr0_planes.png")
    # one column per panel (input, truth, methods): 4 -> 5 columns, same rows
    assert width_three > width_two * 1.15 and height_three == height_two


def test_empty_mask_is_a_clear_error(tmp_path, hr_files, capsys):
    empty = write_volume(
        Volume(array=np.zeros((26, 24, 24), np.uint8), affine=make_affine("LIA", (1, 1, 1))),
        tmp_path / "mask.nii.gz",
    )
    assert (
        main(
            [
                "evaluate",
                str(hr_files[0]),
                "--factor",
                "3",
                "--methods",
                "linear",
                "--mask",
                str(empty),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 1
    )
    assert "mask has no voxels" in capsys.readouterr().err


def test_world_plane_is_the_same_anatomy_on_any_grid():
    array = phantom_array((10, 12, 14))
    volume = Volume(array=array, affine=make_affine("RAS", (1, 1, 2)))
    np.testing.assert_allclose(world_plane(volume, volume, 0, 4, 1), array[4], atol=1e-5)
    flipped_affine = volume.affine @ np.array(
        [[-1, 0, 0, 9], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]
    )
    flipped = Volume(array=array[::-1].copy(), affine=flipped_affine)
    np.testing.assert_allclose(world_plane(flipped, volume, 0, 4, 1), array[4], atol=1e-5)


def test_compare_writes_a_figure(tmp_path, phantom_path):
    out = tmp_path / "up.nii.gz"
    assert (
        main(["upsample", str(phantom_path), "-o", str(out), "--method", "bspline", "--quiet"]) == 0
    )
    figure = tmp_path / "fig.png"
    assert main(["compare", str(phantom_path), str(out), "--out", str(figure), "--quiet"]) == 0
    width, height = _png_size(figure)
    assert width > 200 and height > 200


def test_colour_brightfield_truth_gets_a_tissue_mask():
    from medsr.evaluate.simulate import evaluation_mask

    rgb = np.full((20, 20, 12, 3), 240, np.uint8)  # white slide
    rgb[5:15, 5:15, 3:9] = (120, 60, 140)  # stained tissue, darker than the background
    mask = evaluation_mask(rgb)
    assert mask.shape == rgb.shape and mask[10, 10, 6].all() and not mask[0, 0, 0].any()


def test_compare_over_an_existing_figure_needs_overwrite(tmp_path, phantom_path, capsys):
    out = tmp_path / "up.nii.gz"
    assert (
        main(["upsample", str(phantom_path), "-o", str(out), "--method", "bspline", "--quiet"]) == 0
    )
    figure = tmp_path / "fig.png"
    figure.write_bytes(b"the user's own figure")
    argv = ["compare", str(phantom_path), str(out), "--out", str(figure), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "output exists" in err and "--overwrite" in err, err
    assert figure.read_bytes() == b"the user's own figure"
    assert main([*argv, "--overwrite"]) == 0
    assert _png_size(figure)[0] > 200
    assert not list(tmp_path.glob(".medsr-tmp-*"))  # written through a staging folder


def test_evaluate_over_an_existing_report_needs_overwrite(tmp_path, hr_files, capsys):
    report = tmp_path / "report"
    argv = ["evaluate", str(hr_files[0]), "--factor", "2", "--methods", "linear"]
    argv += ["--out", str(report), "--quiet"]
    assert main(argv) == 0
    written = {p.name: p.read_bytes() for p in report.iterdir()}
    assert set(written) == {"report.md", "metrics.csv", "metrics.json", "hr0_planes.png"}
    for name in written:  # any one of the report's files stops a second run
        others = {n: b for n, b in written.items() if n != name}
        for other in others:
            (report / other).unlink()
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"output exists: '{report / name}'" in err, err
        assert sorted(p.name for p in report.iterdir()) == [name]
        for other, data in others.items():
            (report / other).write_bytes(data)
    (report / "metrics.csv").write_text("stale", encoding="utf-8")
    assert main([*argv, "--overwrite"]) == 0
    assert (report / "metrics.csv").read_text(encoding="utf-8").startswith("volume,method")
