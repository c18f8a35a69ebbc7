"""The benchmark split (pipelines/configs/split.yaml) and the MRI benchmark's quick path."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_affine, phantom_array

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipelines"))

import benchmark_mri  # noqa: E402
from split import CONFIGS, check_lists, held_out_volumes, read_list, read_split  # noqa: E402

from medsr.evaluate.simulate import evaluation_mask, robust_data_range  # noqa: E402
from medsr.io import Volume, read_volume, write_volume  # noqa: E402

B0_RUNS = [f"heudiconv_b0_1.5mm_run{run}.nii.gz" for run in (1, 2, 3)]


def test_split_keeps_the_test_subjects_out_of_training_and_the_lists_follow_it():
    split = read_split()
    tests = held_out_volumes(split)
    assert {"nilearn_icbm152_2009a_t1_1mm.nii.gz", "inia19_macaque_t1_0.5mm.nii.gz"} <= set(tests)
    assert set(B0_RUNS) <= set(tests)  # one subject, one session: all three runs
    assert set(benchmark_mri.VOLUMES) <= set(tests)
    assert [e["path"] for e in split["validation"]] == ["mri/itk_t1_2x2x3mm.nii.gz"]
    data, validation = CONFIGS / "default_model_data.txt", CONFIGS / "default_model_validation.txt"
    check_lists(split, data, validation)
    listed = [line for path in (data, validation) for line in read_list(path)]
    assert not [line for line in listed if Path(line).name in tests]


def test_a_training_list_with_a_test_volume_is_refused(tmp_path):
    split = read_split()
    data = tmp_path / "data.txt"
    lines = (CONFIGS / "default_model_data.txt").read_text(encoding="utf-8").splitlines()
    data.write_text(
        "\n".join([*lines, "../../../shared/data/mri/" + B0_RUNS[2]]) + "\n", encoding="utf-8"
    )
    with pytest.raises(ValueError, match="run3"):
        check_lists(split, data, CONFIGS / "default_model_validation.txt")


def test_a_subject_in_two_roles_is_refused(tmp_path):
    text = (CONFIGS / "split.yaml").read_text(encoding="utf-8")
    moved = text.replace("validation:\n  - path: mri/itk", "validation:\n  - path: mri/itk_x")
    moved = moved.replace(
        "    subject: ITK KmeansTest T1 subject (not a test subject)",
        "    subject: ICBM 152 2009a population template",
    )
    (tmp_path / "split.yaml").write_text(moved, encoding="utf-8")
    with pytest.raises(ValueError, match="more than one role"):
        read_split(tmp_path / "split.yaml")


def test_robust_data_range_ignores_a_few_bright_voxels():
    truth = np.tile(np.linspace(0, 100, 1000, dtype=np.float32), (10, 1))
    mask = np.ones(truth.shape, bool)
    spiked = truth.copy()
    spiked[0, :5] = 5000  # 0.05 % of the voxels
    assert robust_data_range(spiked, mask) == pytest.approx(robust_data_range(truth, mask), 0.01)
    assert robust_data_range(truth, mask) == pytest.approx(99.0, abs=0.2)


def test_cases_cover_every_volume_condition_and_factor_group():
    cases = benchmark_mri.all_cases()
    assert {c.condition for c in cases} == {"family", "sinc", "gap", "noise"}
    assert {c.axis for c in cases} == {0, 1, 2} and 10.0 in {c.factor for c in cases}
    assert {c.factor for c in cases} >= {2.0, 2.5, 3.0, 3.7, 4.0, 5.0, 6.0, 6.5, 8.0}
    subset = benchmark_mri.representative_cases()
    for volume in benchmark_mri.VOLUMES:
        assert {c.condition for c in subset if c.volume == volume} == {
            "family",
            "sinc",
            "gap",
            "noise",
        }
    gap = next(c for c in cases if c.condition == "gap")
    assert gap.thickness == pytest.approx(0.6 * gap.factor)


def test_noise_is_added_to_the_thick_slices_after_thickening():
    volume = Volume(array=phantom_array((24, 22, 30)), affine=make_affine("RAS", (1, 1, 1)))
    clean = benchmark_mri.Case("v", 3.0, 2, "family", "boxcar")
    noisy = benchmark_mri.Case("v", 3.0, 2, "noise", "boxcar")
    thick, truth, mask, data_range = benchmark_mri.acquire(volume, clean, seed=0)
    thick_noisy, truth_noisy, _, _ = benchmark_mri.acquire(volume, noisy, seed=0)
    np.testing.assert_array_equal(truth, truth_noisy)  # the truth stays clean
    assert np.all(mask == evaluation_mask(truth))
    residual = thick_noisy.array - thick.array
    expected = benchmark_mri.NOISE_FRACTION * data_range
    assert 0.5 * expected < residual[thick.array > 0.5 * truth.max()].std() < 1.5 * expected


def test_quick_benchmark_runs_on_a_tiny_synthetic_volume(tmp_path):
    array = phantom_array((20, 18, 18)) + 10
    write_volume(
        Volume(array=array, affine=make_affine("RAS", (1, 1, 1))), tmp_path / "tiny.nii.gz"
    )
    out = tmp_path / "rows.csv"
    argv = ["--quick", "--data", str(tmp_path), "--volumes", "tiny.nii.gz", "--in-process"]
    argv += ["--threads", "1"]  # tiny planes: one thread does the work without waiting
    argv += ["--fit-steps", "1", "--out", str(out), "--markdown", str(tmp_path / "table.md")]
    threads = torch.get_num_threads()
    try:
        assert benchmark_mri.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # the in-process CLI set it for this whole process
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 4 * len(benchmark_mri.METHODS)
    assert {r["condition"] for r in rows} == {"family", "sinc", "gap", "noise"}
    for row in rows:
        assert np.isfinite(float(row["psnr"])) and 0 < float(row["ssim"]) <= 1
        assert float(row["data_range"]) > 0 and int(row["mask_voxels"]) > 0
        if not row["method"].startswith("misr"):  # no fit guard (too small for one here, too)
            assert row["guard"] == "" and row["gain"] == "", row
    table = (tmp_path / "table.md").read_text(encoding="utf-8")
    assert "| x2-x3.7 | misr_prior |" in table and "| all cases | bspline |" in table
    # --resume of a finished run runs nothing and rebuilds the same tables from the CSV
    assert benchmark_mri.main([*argv, "--resume"]) == 0
    assert (tmp_path / "table.md").read_text(encoding="utf-8") == table
    assert list(csv.DictReader(out.open(encoding="utf-8"))) == rows
    # tables of rows without B-spline (``--methods misr``) say NaN instead of failing
    without = [r for r in benchmark_mri.read_rows(out) if r["method"] != "bspline"]
    assert "| nan |" in benchmark_mri.markdown(without).replace("+nan", "nan")
    # without --resume or --overwrite an existing CSV is refused before any work
    with pytest.raises(SystemExit, match="exists"):
        benchmark_mri.main(argv)
    assert list(csv.DictReader(out.open(encoding="utf-8"))) == rows
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_fit_curves_points_parse_models_rates_and_the_first_version():
    import fit_curves

    points = fit_curves.points("tail=run/latest.pt,lr=5e-4,schedule=cosine", [0, 100], [45], 3.0)
    assert [p[0] for p in points] == [
        ["--model", "run/latest.pt", "--fit-steps", "0"],
        ["--model", "run/latest.pt", "--fit-steps", "100"],
    ]
    fit = {"ADAPTATION_LEARNING_RATE": 5e-4, "ADAPTATION_LR_SCHEDULE": "cosine"}
    assert points[0][3] == fit and points[1][1]["steps"] == 100
    with pytest.raises(ValueError, match="unknown fit option"):
        fit_curves.points("tail=run/latest.pt,rate=5e-4", [0], [45], 3.0)
    shipped = fit_curves.points("shipped=default", [200], [45], 3.0)
    assert shipped[0][0] == ["--fit-steps", "200"] and shipped[0][3] is None
    first = fit_curves.points("first=first-version:/tmp/old", [200], [15, 45], 3.0)
    assert [p[0] for p in first] == [["--fit-seconds", "15"], ["--fit-seconds", "45"]]
    assert first[0][2] == "/tmp/old" and first[1][1]["fit_seconds"] == 45
    # the acquisition a header or the user would state: thickness in units of the thick spacing
    told = fit_curves.points("told=default,thickness=1.25,profile=sinc,lr=1e-3", [200], [45], 8.0)
    assert told[0][0] == [
        "--slice-thickness",
        "10",
        "--slice-profile",
        "sinc",
        "--fit-steps",
        "200",
    ]
    assert told[0][3] == {"ADAPTATION_LEARNING_RATE": 1e-3}
    assert fit_curves.points("n=default,noise=off", [0], [45], 3.0)[0][3] == {
        "MATCH_SCAN_NOISE": False
    }
    assert fit_curves.points("g=default,fitgain=on", [800], [45], 3.0)[0][3] == {
        "CALIBRATE_AFTER_FIT": True
    }
    with pytest.raises(ValueError, match="on or off"):
        fit_curves.points("n=default,noise=yes", [0], [45], 3.0)
    with pytest.raises(ValueError, match="no fit options"):
        fit_curves.points("f=first-version:/tmp/old,thickness=1", [0], [45], 3.0)


def test_fit_curves_tells_a_condition_what_the_mri_benchmark_tells_it():
    """A gap's thickness in the same millimetres as `benchmark_mri.method_argv` (fit_curves
    knows the thick spacing, the benchmark the thin one); the sinc profile to fitted points only,
    as the benchmark tells `misr` and not `misr_prior`."""
    import fit_curves

    options = {"threads": None, "fit_steps": None}
    thin, factor = 0.7, 4.0
    gap = benchmark_mri.Case("v.nii.gz", factor, 0, "gap", "boxcar")
    for method, steps in (("misr", 800), ("misr_prior", 0)):
        expected = benchmark_mri.method_argv(method, Path("in"), Path("out"), gap, thin, options)
        told = fit_curves.condition_argv(gap, factor * thin, fitted=steps > 0)
        where = expected.index("--slice-thickness")
        assert told == expected[where : where + 2] and "--slice-profile" not in expected
    sinc = benchmark_mri.Case("v.nii.gz", 5.0, 0, "sinc", "sinc")
    for method, steps in (("misr", 800), ("misr_prior", 0)):
        expected = benchmark_mri.method_argv(method, Path("in"), Path("out"), sinc, thin, options)
        told = fit_curves.condition_argv(sinc, 5.0 * thin, fitted=steps > 0)
        assert told == (["--slice-profile", "sinc"] if "--slice-profile" in expected else [])
        assert bool(told) == (steps > 0)
    points = fit_curves.points("m=default", [0, 800], [45], 5.0 * thin, sinc)
    assert [p[0] for p in points] == [
        ["--fit-steps", "0"],
        ["--slice-profile", "sinc", "--fit-steps", "800"],
    ]
    with pytest.raises(SystemExit):  # a sinc condition acquired with another profile
        fit_curves.main(["--volume", "v.nii.gz", "--factor", "5", "--condition", "sinc"]
                        + ["--model", "m=default", "--out", "unused.csv"])  # fmt: skip


def test_the_benchmarks_read_the_guard_gain_and_estimate_from_the_provenance(tmp_path):
    import fit_curves

    record = tmp_path / "out.nii.gz.json"
    none = {"guard": "", "gain": "", "estimated_profile": ""}
    assert benchmark_mri.guard_fields(record) == none  # none written
    record.write_text('{"fit_guard": {"choice": "prior", "residual_gain": 0.61}}')
    assert benchmark_mri.guard_fields(record) == none | {"guard": "prior", "gain": 0.61}
    estimate = '{"profile": "gaussian", "reason": "r", "scores": {}}'
    record.write_text(
        f'{{"fit_guard": {{"choice": "adapted", "slice_profile_estimate": {estimate}}}}}'
    )
    assert benchmark_mri.guard_fields(record)["estimated_profile"] == "gaussian"
    record.write_text('{"fit_guard": {"slice_profile_estimate": {"profile": null}}}')
    assert benchmark_mri.guard_fields(record)["estimated_profile"] == ""  # undecided
    record.write_text('{"method": "bspline"}')
    assert benchmark_mri.guard_fields(record) == none
    # a fit that held nothing back (a short axis) was kept without a guard: the row says so
    record.write_text('{"fit_guard": {"choice": "adapted", "planes": 0, "reason": "few"}}')
    assert benchmark_mri.guard_fields(record)["guard"] == "unguarded"
    assert fit_curves.FIELDS[-3:] == ("guard", "gain", "estimated_profile")


def test_fit_curves_refuses_to_append_under_another_header(tmp_path):
    import fit_curves

    out = tmp_path / "curves.csv"
    fit_curves.check_out(out)  # none yet
    out.write_text(",".join(fit_curves.FIELDS) + "\n", encoding="utf-8")
    fit_curves.check_out(out)  # this script's own
    out.write_text(",".join(fit_curves.FIELDS[:-1]) + "\n", encoding="utf-8")  # before the estimate
    with pytest.raises(SystemExit, match="other columns"):
        fit_curves.check_out(out)


def test_the_smoothed_validation_volume_is_a_gaussian_of_2_mm(tmp_path):
    import make_validation_volumes as make

    spacing = (2.0, 2.0, 3.0)
    impulse = np.zeros((21, 21, 15), np.float32)
    impulse[10, 10, 7] = 1.0
    blurred = make.smoothed(impulse, spacing)
    for axis, step in enumerate(spacing):  # the spread of each axis, in mm, is the sigma
        profile = blurred.sum(axis=tuple(a for a in range(3) if a != axis))
        centre = len(profile) // 2
        mm = (np.arange(len(profile)) - centre) * step
        assert np.sqrt(np.sum(profile * mm**2) / profile.sum()) == pytest.approx(2.0, rel=0.05)
    data, out = tmp_path / "data", tmp_path / "val"
    data.mkdir()
    write_volume(
        Volume(array=phantom_array((20, 18, 12)) * 100, affine=make_affine("LSA", spacing)),
        data / make.SOURCE,
    )
    assert make.main(["--data", str(data), "--out", str(out)]) == 0
    smooth = read_volume(out / make.SMOOTH)
    np.testing.assert_allclose(smooth.affine, read_volume(data / make.SOURCE).affine)
    assert (out / make.SOURCE).read_bytes() == (data / make.SOURCE).read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        make.main(["--data", str(data), "--out", str(out)])


def test_probe_rss_makes_the_ct_crop_and_times_a_command(tmp_path, capsys):
    import probe_rss
    import SimpleITK as sitk

    data = tmp_path / "data"
    (data / "ct").mkdir(parents=True)
    image = sitk.GetImageFromArray(np.arange(50 * 6 * 7, dtype=np.int16).reshape(50, 6, 7))
    image.SetSpacing((0.5, 0.5, 5.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(data / probe_rss.CT))
    out = tmp_path / "ct36.nii.gz"
    assert probe_rss.main(["--make-ct36", str(out), "--data", str(data)]) == 0
    crop = read_volume(out)
    assert crop.array.shape == (7, 6, 36) and crop.array.dtype == np.int16
    # the crop starts at slice 12: its origin moved 12 slices of 5 mm along the slice axis
    assert crop.affine[2, 3] == pytest.approx(3.0 + 12 * 5.0)
    assert probe_rss.main(["--", "info", str(out)]) == 0
    assert "peak RSS" in capsys.readouterr().out


def test_the_peak_rss_is_the_commands_own_not_the_benchmarks():
    """Linux keeps the RSS high-water mark across fork and exec: a `medsr` forked straight from
    a benchmark that holds 400 MiB reported at least 400 MiB. Through the launcher it reports
    its own (`medsr --help` needs far less)."""
    held = np.ones(400 * 2**20 // 8)  # touched: in this process's RSS
    seconds, peak = benchmark_mri.run_method(["--help"], in_process=False)
    assert held[-1] == 1 and seconds > 0
    assert 5 < peak < 300
    with pytest.raises(RuntimeError, match="failed"):
        benchmark_mri.run_method(["no-such-command"], in_process=False)


def test_benchmark_rows_merged_from_two_runs_read_back(tmp_path):
    """Rows merged from runs of other methods (the interpolations keep no peak RSS) read back:
    an empty number is NaN, not an error."""
    learned = {"case": 0, "volume": "v", "factor": 4.0, "axis": 1, "condition": "family"}
    learned |= {"profile": "boxcar", "factor_group": "x4-x6.5", "thickness": 4.0, "method": "misr"}
    learned |= {"mask_voxels": 10, "data_range": 1.0, "psnr": 30.0, "ssim": 0.9, "hfen": 0.1}
    learned |= {"sharpness": 0.8, "seconds": 20.0, "peak_mib": 500.0, "guard": "adapted"}
    learned |= {"gain": 0.9}
    spline = {key: value for key, value in learned.items() if key not in ("guard", "gain")}
    spline |= {"method": "bspline", "psnr": 28.0, "peak_mib": ""}
    path = tmp_path / "rows.csv"
    benchmark_mri.write_rows(path, [learned, spline])
    rows = benchmark_mri.read_rows(path)
    assert rows[0]["peak_mib"] == 500.0 and np.isnan(rows[1]["peak_mib"])
    assert rows[1]["gain"] == "" and rows[0]["gain"] == 0.9
    assert "| 0 | v | 4 |" in benchmark_mri.markdown(rows)


def test_fit_curves_reconstructs_one_orientation_alone_or_both(tmp_path):
    """``,orientation=0|1`` makes the point's process reconstruct that orientation alone (the
    experiment behind `plane_orientations`' rule): the two average to both, which differ."""
    import fit_curves
    from conftest import make_affine, phantom_array

    from medsr.io import Volume, read_volume, write_volume

    point = fit_curves.points("o=default,orientation=1,orientations=2", [0], [45], 3.0)[0]
    assert point[0] == ["--orientations", "2", "--fit-steps", "0"]
    assert point[3] == {fit_curves.ORIENTATION: 1}
    with pytest.raises(ValueError, match="orientation"):
        fit_curves.points("o=default,orientation=2", [0], [45], 3.0)
    volume = Volume(phantom_array((14, 12, 6)), make_affine("LPS", [1.0, 1.0, 3.5]))
    source = write_volume(volume, tmp_path / "thick.nii.gz")
    outputs = []
    for orientation in (0, 1, None):
        out = tmp_path / f"o{orientation}.nii.gz"
        argv = ["upsample", str(source), "-o", str(out), "--quiet", "--fit-steps", "0"]
        fit = None if orientation is None else {fit_curves.ORIENTATION: orientation}
        fit_curves.medsr([*argv, "--dtype", "float32"], fit=fit)
        outputs.append(read_volume(out).array)
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-3
    np.testing.assert_allclose((outputs[0] + outputs[1]) / 2, outputs[2], atol=1e-4)
