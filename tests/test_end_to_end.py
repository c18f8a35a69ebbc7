"""Slow end-to-end checks on the real development data (run with ``pytest -m slow``)."""

from pathlib import Path

import pytest

from medsr.evaluate.report import run_evaluation

MRI = Path(__file__).resolve().parents[2] / "shared" / "data" / "mri"


@pytest.mark.slow
def test_default_misr_beats_bspline_on_real_b0(tmp_path):
    volume = MRI / "heudiconv_b0_1.5mm_run1.nii.gz"
    if not volume.exists():
        pytest.skip("development data not present")
    rows = run_evaluation(
        [volume],
        tmp_path,
        factor=3,
        axis=2,
        methods=("misr", "bspline"),
        misr_options={"fit_steps": 100, "device": "cpu"},
    )
    scores = {r["method"]: r for r in rows}
    assert scores["misr"]["psnr"] > scores["bspline"]["psnr"]
    assert scores["misr"]["ssim"] > scores["bspline"]["ssim"]
    assert scores["misr"]["hfen"] < scores["bspline"]["hfen"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "factor", "axis"),
    [("heudiconv_b0_1.5mm_run1.nii.gz", 3.7, 1), ("inia19_macaque_t1_0.5mm.nii.gz", 10.0, 2)],
)
def test_default_beats_bspline_at_non_integer_and_large_factors(tmp_path, name, factor, axis):
    volume = MRI / name
    if not volume.exists():
        pytest.skip("development data not present")
    rows = run_evaluation(
        [volume],
        tmp_path,
        factor=factor,
        axis=axis,
        methods=("misr", "bspline"),
        misr_options={"device": "cpu"},  # the default steps
    )
    scores = {r["method"]: r for r in rows}
    assert scores["misr"]["psnr"] > scores["bspline"]["psnr"]
    assert scores["misr"]["ssim"] > scores["bspline"]["ssim"]
