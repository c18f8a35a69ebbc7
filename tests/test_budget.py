"""The default's work on a float32 CPU: fit steps, passes and orientations sized to a time
budget."""

import numpy as np
import pytest

import medsr.runtime
from medsr.upsample import budget
from medsr.upsample.budget import (
    FLOAT32_MIN_FIT_STEPS,
    FLOAT32_PASS_STEPS,
    FLOAT32_SECONDS,
    Work,
    default_work,
    float32_plan,
)
from medsr.upsample.checks import DEFAULT_FIT_STEPS, FAST_FIT_STEPS, default_ensemble

#: the benchmark scans of docs/benchmarks.md: 256 x 256 x 60 at x3.25, the chest CT at x10
SCAN = Work(256 * 256 * 60, 256 * 256 * 195)
CT = Work(512 * 512 * 36, 512 * 512 * 360)
#: a validation scan thickened x4 along axis 0, and the ICBM T1's grid at x4
VALIDATION = Work(32 * 128 * 62, 128 * 128 * 62)
MEDIUM = Work(197 * 233 * 47, 197 * 233 * 189)
ALL = (1, 2, 4)


def test_the_plan_takes_passes_that_leave_enough_steps_then_fills_with_steps():
    steps, passes, views = float32_plan(VALIDATION, None, ALL, DEFAULT_FIT_STEPS)
    assert (passes, views) == (4, 2)  # cheap passes: 4 of them still leave FLOAT32_PASS_STEPS steps
    assert VALIDATION.seconds(FLOAT32_PASS_STEPS, 4) <= FLOAT32_SECONDS
    assert FLOAT32_PASS_STEPS <= steps < DEFAULT_FIT_STEPS
    assert VALIDATION.seconds(steps, 4) <= FLOAT32_SECONDS < VALIDATION.seconds(steps + 1, 4)
    # the ICBM T1's grid: a second pass would leave fewer steps than that, so one, and steps
    steps, passes, views = float32_plan(MEDIUM, None, ALL, DEFAULT_FIT_STEPS)
    assert (passes, views) == (1, 2) and MEDIUM.seconds(FLOAT32_PASS_STEPS, 2) > FLOAT32_SECONDS
    assert FLOAT32_MIN_FIT_STEPS < steps < FLOAT32_PASS_STEPS
    assert MEDIUM.seconds(steps, 1) <= FLOAT32_SECONDS < MEDIUM.seconds(steps + 1, 1)


def test_a_reconstruction_beyond_the_budget_drops_an_orientation_before_steps():
    # the 256 x 256 x 60 scan: both orientations would leave too little for the fewest steps;
    # one leaves more, and the fit takes them
    assert SCAN.seconds(FLOAT32_MIN_FIT_STEPS, 1, 2) > FLOAT32_SECONDS
    steps, passes, views = float32_plan(SCAN, None, ALL, DEFAULT_FIT_STEPS)
    assert (passes, views) == (1, 1) and FLOAT32_MIN_FIT_STEPS < steps < FLOAT32_PASS_STEPS
    assert SCAN.seconds(steps, 1, 1) <= FLOAT32_SECONDS < SCAN.seconds(steps + 1, 1, 1)
    # the chest CT: not even one orientation fits with them: one, and the fewest steps
    assert CT.seconds(FLOAT32_MIN_FIT_STEPS, 1, 1) > FLOAT32_SECONDS
    assert float32_plan(CT, None, ALL, DEFAULT_FIT_STEPS) == (FLOAT32_MIN_FIT_STEPS, 1, 1)
    assert float32_plan(CT, None, (1,), 30) == (30, 1, 1)  # never more than the most
    # where both orientations are asked for, the fewest steps and one pass
    assert float32_plan(CT, None, ALL, DEFAULT_FIT_STEPS, (2,)) == (FLOAT32_MIN_FIT_STEPS, 1, 2)


def test_given_steps_or_passes_are_kept():
    assert float32_plan(MEDIUM, 0, ALL, DEFAULT_FIT_STEPS) == (0, 2, 2)  # the prior alone
    assert float32_plan(SCAN, 0, ALL, DEFAULT_FIT_STEPS) == (0, 1, 2)  # both fit without a fit
    assert float32_plan(MEDIUM, 7, ALL, DEFAULT_FIT_STEPS)[0] == 7
    plan = float32_plan(MEDIUM, None, (8,), DEFAULT_FIT_STEPS, (2,))
    assert plan == (FLOAT32_MIN_FIT_STEPS, 8, 2)  # 8 passes take the budget


@pytest.mark.parametrize("native", [False, True])
def test_default_work_plans_only_a_float32_cpu_fit(monkeypatch, native):
    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: native)
    shape, grid = (197, 233, 47), (197, 233, 189)  # the ICBM T1's grid at x4 (MEDIUM)
    work = default_work({"device": "cpu"}, shape, grid)
    if native:  # a bf16 fit: its steps and the size rule, unchanged
        assert work == (FAST_FIT_STEPS, default_ensemble(grid), 2) == (800, 4, 2)
    else:
        assert work == (154, 1, 2)  # MEDIUM's plan
    # what is given is kept; float32 asked for on a bf16 CPU is planned too
    given = {"device": "cpu", "fit_steps": 3, "ensemble": 4}
    assert default_work(given, shape, grid) == (3, 4, 2)
    assert default_work({**given, "orientations": 1}, shape, grid) == (3, 4, 1)
    fp32 = {"device": "cpu", "precision": "fp32"}
    assert default_work(fp32, shape, grid) == (154, 1, 2)
    assert default_work({**fp32, "fit_steps": 0}, shape, grid) == (0, 2, 2)
    with pytest.raises(ValueError, match="ensemble"):
        default_work({**fp32, "ensemble": 3}, shape, grid)
    with pytest.raises(ValueError, match="orientations"):
        default_work({**fp32, "orientations": 3}, shape, grid)
    with pytest.raises(ValueError, match="confidence"):
        default_work({**fp32, "orientations": 1, "confidence": True}, shape, grid)


def test_default_work_keeps_both_orientations_where_they_are_asked_for(monkeypatch):
    """Beyond the budget the default reconstructs one orientation, but not where the ensemble
    is given (averaging asked for) or the confidence map needs both; on a bf16 CPU always
    both."""
    shape, grid = (256, 256, 60), (256, 256, 195)  # SCAN
    fp32 = {"device": "cpu", "precision": "fp32"}
    assert default_work(fp32, shape, grid).orientations == 1
    assert default_work({**fp32, "ensemble": 1}, shape, grid).orientations == 1  # no averaging
    assert default_work({**fp32, "ensemble": 2}, shape, grid).orientations == 2
    assert default_work({**fp32, "confidence": True}, shape, grid).orientations == 2
    # more steps asked for do not cost an orientation: both weighed at the fewest steps
    small, small_grid = (32, 128, 62), (128, 128, 62)  # VALIDATION
    assert VALIDATION.seconds(400, 1, 2) > FLOAT32_SECONDS
    assert default_work({**fp32, "fit_steps": 400}, small, small_grid) == (400, 1, 2)
    assert default_work({**fp32, "fit_steps": 400}, shape, grid) == (400, 1, 1)
    assert default_work({**fp32, "orientations": 2}, shape, grid) == (FLOAT32_MIN_FIT_STEPS, 1, 2)
    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: True)
    assert default_work({"device": "cpu"}, shape, grid).orientations == 2


def test_a_series_plans_per_frame_within_the_passes_allowed_for_all(monkeypatch):
    """A series fitted once spends one frame's budget on its fit, while the size rule for the
    passes counts every frame (as on a CPU with native bf16)."""
    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: False)
    shape, grid = (32, 128, 62), (128, 128, 62)
    options = {"device": "cpu"}
    assert default_work(options, shape, grid) == (228, 4, 2)  # VALIDATION's plan
    assert default_ensemble(grid, 20) == 2  # 20 frames: at most 2 passes
    assert default_work(options, shape, grid, frames=20) == (257, 2, 2)  # 2 passes leave these


def test_the_api_and_a_series_record_the_planned_work(monkeypatch):
    """The float32 plan reaches the fit and the reconstruction, and the provenance says what
    ran; a series resolves its frames' steps and passes once, for all of them."""
    from medsr.geometry import plan_output_grid
    from medsr.io import Volume
    from medsr.upsample.api import upsample_volume
    from medsr.upsample.series4d import series_work

    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: False)
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    volume = Volume(rng.random((24, 22, 8)).astype(np.float32) * 100, affine)
    # a budget that leaves 3 steps and one pass on this small scan
    monkeypatch.setattr(budget, "FLOAT32_MIN_FIT_STEPS", 1)
    monkeypatch.setattr(budget, "FLOAT32_PASS_STEPS", 3)
    work = Work(24 * 22 * 8, 24 * 22 * 32)
    seconds = work.seconds(3, 1) + 0.01  # a second pass (0.04 s here) does not fit
    monkeypatch.setattr(budget, "FLOAT32_SECONDS", seconds)
    out = upsample_volume(volume, method="misr", device="cpu", scale=4.0)
    record = out.meta["provenance"]
    assert (record["fit_steps"], record["fit_steps_run"], record["ensemble"]) == (3, 3, 1)
    assert record["fit_precision"] == "fp32"
    assert record["orientations"] == 2
    grid = plan_output_grid(volume.spatial_shape, volume.affine, scale=4.0)
    served = series_work({"device": "cpu"}, volume, grid, 5)
    assert (served["fit_steps"], served["ensemble"], served["orientations"]) == (3, 1, 2)


def test_a_default_of_one_orientation_reaches_the_record_and_confidence_keeps_both(monkeypatch):
    """Where the budget holds one orientation, the API reconstructs one and records it, a series
    resolves it for all its frames; with the confidence map both, at the fewest steps."""
    from medsr.geometry import plan_output_grid
    from medsr.io import Volume
    from medsr.upsample.api import upsample_volume
    from medsr.upsample.series4d import series_work

    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: False)
    rng = np.random.default_rng(2)
    volume = Volume(rng.random((24, 22, 8)).astype(np.float32) * 100, np.diag([1, 1, 4.0, 1]))
    work = Work(24 * 22 * 8, 24 * 22 * 32)
    monkeypatch.setattr(budget, "FLOAT32_MIN_FIT_STEPS", 2)
    monkeypatch.setattr(budget, "FLOAT32_SECONDS", work.seconds(2, 1, 1) + 0.01)
    assert work.seconds(2, 1, 2) > budget.FLOAT32_SECONDS  # both do not fit with 2 steps
    record = upsample_volume(volume, method="misr", device="cpu", scale=4.0).meta["provenance"]
    assert (record["orientations"], record["fit_steps_run"], record["ensemble"]) == (1, 2, 1)
    out = upsample_volume(volume, method="misr", device="cpu", scale=4.0, confidence=True)
    record = out.meta["provenance"]
    assert (record["orientations"], record["fit_steps_run"]) == (2, 2)
    assert out.meta["confidence"].array.max() > 0  # the orientations' disagreement is there
    grid = plan_output_grid(volume.spatial_shape, volume.affine, scale=4.0)
    assert series_work({"device": "cpu"}, volume, grid, 3)["orientations"] == 1
    assert series_work({"device": "cpu"}, volume, grid, 3, confidence=True)["orientations"] == 2


def test_the_cli_leaves_the_default_to_the_plan(monkeypatch, tmp_path):
    """`medsr upsample` without --fit-steps / --ensemble runs the float32 plan for the scan it
    reads (the CLI used to fix 400 steps before reading it); given values are kept."""
    import json

    from medsr.cli import main
    from medsr.io import Volume, write_volume

    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(budget, "FLOAT32_MIN_FIT_STEPS", 1)
    monkeypatch.setattr(budget, "FLOAT32_PASS_STEPS", 2)
    work = Work(24 * 22 * 8, 24 * 22 * 32)
    monkeypatch.setattr(budget, "FLOAT32_SECONDS", work.seconds(2, 1) + 0.01)
    rng = np.random.default_rng(1)
    source = tmp_path / "thick.nii.gz"
    write_volume(
        Volume(rng.random((24, 22, 8)).astype(np.float32), np.diag([1, 1, 4.0, 1])), source
    )
    for extra, expected in (([], (2, 1)), (["--fit-steps", "1", "--ensemble", "2"], (1, 2))):
        out = tmp_path / f"out{len(extra)}.nii.gz"
        assert main(["upsample", str(source), "-o", str(out), "--quiet", *extra]) == 0
        record = json.loads(out.with_name(out.name + ".json").read_text())
        assert (record["fit_steps_run"], record["ensemble"]) == expected
        assert record["orientations"] == 2  # both fit the budget here
