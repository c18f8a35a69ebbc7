"""The default's work on a float32 CPU: fit steps and passes sized to a time budget."""

import numpy as np
import pytest

import medsr.runtime
from medsr.upsample import budget
from medsr.upsample.budget import FLOAT32_MIN_FIT_STEPS, FLOAT32_SECONDS, Work, float32_plan
from medsr.upsample.checks import (
    DEFAULT_FIT_STEPS,
    ENSEMBLE_SIZES,
    FAST_FIT_STEPS,
    default_ensemble,
    default_work,
)

#: the benchmark scans of docs/benchmarks.md: 256 x 256 x 60 at x3.25, the chest CT at x10
SCAN = Work(256 * 256 * 60, 256 * 256 * 195, 1, 3.25)
CT = Work(512 * 512 * 36, 512 * 512 * 360, 1, 10.0)
SMALL = Work(128 * 128 * 62, 128 * 128 * 186, 1, 3.0)
#: the ICBM T1's grid at x4
MEDIUM = Work(197 * 233 * 47, 197 * 233 * 189, 1, 4.0)


def test_the_cost_model_adds_up_and_grows_with_every_term():
    assert SCAN.seconds(0, 1) == pytest.approx(
        budget.SECONDS_FIXED + SCAN.reconstruction_seconds(1)
    )
    assert SCAN.seconds(100, 1) - SCAN.seconds(0, 1) == pytest.approx(100 * SCAN.step_seconds())
    assert SCAN.reconstruction_seconds(2) > SCAN.reconstruction_seconds(1) > 0
    assert CT.step_seconds() > SCAN.step_seconds()  # the fit's decoder runs at the thin slices
    frames = Work(SCAN.input_voxels, SCAN.output_voxels, 3, SCAN.factor)
    assert frames.reconstruction_seconds(1) == pytest.approx(3 * SCAN.reconstruction_seconds(1))


def test_the_plan_fills_the_budget_with_steps_before_passes():
    steps, passes = float32_plan(MEDIUM, None, (1, 2, 4), DEFAULT_FIT_STEPS)
    assert passes == 1  # a second pass would leave fewer steps than the most
    assert FLOAT32_MIN_FIT_STEPS < steps < DEFAULT_FIT_STEPS
    assert MEDIUM.seconds(steps, 1) <= FLOAT32_SECONDS < MEDIUM.seconds(steps + 1, 1)
    # where the most steps leave time (a small scan, a low most): passes, as long as they fit
    steps, passes = float32_plan(SMALL, None, (1, 2, 4), 100)
    assert steps == 100 and passes > 1
    assert SMALL.seconds(steps, passes) <= FLOAT32_SECONDS
    bigger = [n for n in (1, 2, 4) if n > passes]
    assert all(SMALL.seconds(steps, n) > FLOAT32_SECONDS for n in bigger)


def test_a_reconstruction_beyond_the_budget_keeps_the_fewest_steps_and_one_pass():
    for work in (SCAN, CT):  # the 256 x 256 x 60 scan leaves too little for the fewest
        assert work.seconds(FLOAT32_MIN_FIT_STEPS, 1) > FLOAT32_SECONDS
        assert float32_plan(work, None, (1, 2, 4), DEFAULT_FIT_STEPS) == (FLOAT32_MIN_FIT_STEPS, 1)
    assert float32_plan(CT, None, (1,), 30) == (30, 1)  # never more than the most


def test_given_steps_or_passes_are_kept():
    assert float32_plan(MEDIUM, 7, (1, 2, 4), DEFAULT_FIT_STEPS) == (7, 2)  # 7 steps leave time
    assert float32_plan(SCAN, 0, (1,), DEFAULT_FIT_STEPS) == (0, 1)
    steps, passes = float32_plan(SMALL, None, (8,), DEFAULT_FIT_STEPS)
    assert passes == 8 and FLOAT32_MIN_FIT_STEPS <= steps < DEFAULT_FIT_STEPS


@pytest.mark.parametrize("native", [False, True])
def test_default_work_plans_only_a_float32_cpu_fit(monkeypatch, native):
    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: native)
    shape, grid = (256, 256, 60), (256, 256, 195)
    work = default_work({"device": "cpu"}, shape, grid, 3.25)
    if native:  # bf16 fit: its steps and the size rule, unchanged
        assert work == (FAST_FIT_STEPS, default_ensemble(grid))
    else:
        assert work == float32_plan(SCAN, None, (1, 2), DEFAULT_FIT_STEPS)
    # what is given is kept; float32 asked for on a bf16 CPU is planned too
    given = {"device": "cpu", "fit_steps": 3, "ensemble": 4}
    assert default_work(given, shape, grid, 3.25) == (3, 4)
    fp32 = default_work({"device": "cpu", "precision": "fp32"}, shape, grid, 3.25)
    assert fp32 == float32_plan(SCAN, None, (1, 2), DEFAULT_FIT_STEPS)
    with pytest.raises(ValueError, match="ensemble"):
        default_work({"device": "cpu", "precision": "fp32", "ensemble": 3}, shape, grid, 3.25)
    assert set(ENSEMBLE_SIZES) >= {work[1]}


def test_the_api_and_a_series_record_the_planned_work(monkeypatch):
    """The float32 plan reaches the fit and the reconstruction, and the provenance says what
    ran; a series counts every frame's reconstruction."""
    from medsr.io import Volume
    from medsr.upsample.api import upsample_volume
    from medsr.upsample.series4d import series_work

    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: False)
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    volume = Volume(rng.random((24, 22, 8)).astype(np.float32) * 100, affine)
    # a budget that leaves 3 steps and one pass on this small scan
    monkeypatch.setattr(budget, "FLOAT32_MIN_FIT_STEPS", 1)
    work = Work(24 * 22 * 8, 24 * 22 * 32, 1, 4.0)
    seconds = work.seconds(3, 1) + 0.5 * work.step_seconds()
    monkeypatch.setattr(budget, "FLOAT32_SECONDS", seconds)
    out = upsample_volume(volume, method="misr", device="cpu", scale=4.0)
    record = out.meta["provenance"]
    assert (record["fit_steps"], record["fit_steps_run"], record["ensemble"]) == (3, 3, 1)
    assert record["fit_precision"] == "fp32"
    from medsr.geometry import plan_output_grid

    grid = plan_output_grid(volume.spatial_shape, volume.affine, scale=4.0)
    frames = Work(work.input_voxels, work.output_voxels, 5000, 4.0)  # every frame's passes
    served = series_work({"device": "cpu"}, volume, grid, 5000)
    planned = float32_plan(frames, None, (1, 2, 4), DEFAULT_FIT_STEPS)
    assert (served["fit_steps"], served["ensemble"]) == planned
    assert planned[0] < 3
