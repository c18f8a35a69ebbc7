"""The slice profile estimated from a scan's own data (`medsr.upsample.profile`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

import medsr.upsample.adapt as adapt
import medsr.upsample.profile as profile_module
from medsr.config import Config
from medsr.degrade import simulate_thick_slices
from medsr.io import Volume
from medsr.nets.checkpoint import build_generator
from medsr.train.pairs import PlaneSource
from medsr.upsample.profile import (
    BOXCAR_RATIO,
    BOXCAR_RATIO_MATCHED,
    GAUSSIAN_RATIO,
    MATCHED_MIN_FACTOR,
    _misfit,
    decide,
    estimate_slice_profile,
    undecided_profiles,
)


def _texture(seed: int, shape=(48, 48, 72), sigma=1.2) -> np.ndarray:
    """Isotropic texture (smoothed white noise) in [0, 1]: the same statistics along every axis,
    the estimator's premise."""
    field = gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    return ((field - field.min()) / (field.max() - field.min())).astype(np.float32)


def _sources(
    thick: np.ndarray, factor: float, inplane=(1.0, 1.0), spacing: float | None = None
) -> list[PlaneSource]:
    """The fit's two in-plane orientations of a volume thick along its last axis, its slices
    `spacing` apart (default: `factor`, an output at the in-plane spacing)."""
    spacing = factor if spacing is None else spacing
    first = PlaneSource(
        np.transpose(thick, (2, 1, 0)), (spacing, inplane[1], inplane[0]), "a0", factor, 1
    )
    second = PlaneSource(
        np.transpose(thick, (2, 0, 1)), (spacing, inplane[0], inplane[1]), "a1", factor, 1
    )
    return [first, second]


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("profile", ["boxcar", "gaussian"])
def test_the_acquisitions_profile_is_found_on_isotropic_texture(factor, profile):
    thick = simulate_thick_slices(_texture(factor), 2, factor, profile=profile)
    estimate = estimate_slice_profile(_sources(thick, factor), factor, 1.0, 0.0)
    assert estimate.profile == profile, estimate.scores
    assert set(estimate.scores) == {"boxcar", "gaussian", "sinc"}


def test_the_scans_noise_put_back_keeps_a_noisy_boxcar_a_boxcar():
    factor, sigma = 3, 0.03
    thick = simulate_thick_slices(_texture(7), 2, factor, profile="boxcar")
    noisy = thick + np.random.default_rng(1).normal(0, sigma, thick.shape).astype(np.float32)
    assert estimate_slice_profile(_sources(noisy, factor), factor, 1.0, sigma).profile == "boxcar"


def test_differing_in_plane_spacings_and_short_axes_are_left_undecided():
    thick = simulate_thick_slices(_texture(3), 2, 3, profile="gaussian")
    estimate = estimate_slice_profile(_sources(thick, 3, inplane=(1.0, 1.5)), 3, 1.0, 0.0)
    assert estimate.profile is None and "in-plane spacings differ" in estimate.reason
    short = simulate_thick_slices(_texture(3, shape=(48, 48, 24)), 2, 3, profile="gaussian")
    estimate = estimate_slice_profile(_sources(short, 3), 3, 1.0, 0.0)  # 8 slices: 4 bins
    assert estimate.profile is None and "frequency bins" in estimate.reason


@pytest.mark.parametrize("factor", [2, 3])
def test_a_sinc_acquisition_is_never_taken_for_a_gaussian(factor):
    thick = simulate_thick_slices(_texture(5), 2, factor, profile="sinc")
    assert estimate_slice_profile(_sources(thick, factor), factor, 1.0, 0.0).profile != "gaussian"


def test_blank_constant_and_mismatched_scans_are_left_undecided():
    factor = 3
    constant = np.full((48, 48, 24), 0.5, np.float32)
    estimate = estimate_slice_profile(_sources(constant, factor), factor, 1.0, 0.0)
    assert estimate.profile is None and "varies" in estimate.reason
    blank = np.zeros((48, 48, 24), np.float32)
    assert estimate_slice_profile(_sources(blank, factor), factor, 1.0, 0.0).profile is None
    # an isotropic volume upsampled by an explicit factor: its through-plane lines are as sharp
    # as its in-plane ones, unlike any thickening of them
    sharp = _texture(2)
    estimate = estimate_slice_profile(_sources(sharp, factor, spacing=1.0), factor, 1.0, 0.0)
    assert estimate.profile is None and "no candidate fits" in estimate.reason, estimate.scores


def _scores(gaussian_level, gaussian_power, box=1.0):
    boxcar = {"level": box, "power": box}
    return {
        "boxcar": boxcar,
        "sinc": {"level": 9.0, "power": 9.0},
        "gaussian": {"level": gaussian_level, "power": gaussian_power},
    }


def test_the_rule_names_a_profile_only_past_its_thresholds():
    below, above = 0.99, 1.01
    assert decide(_scores(GAUSSIAN_RATIO * below, 1.0)).profile == "gaussian"
    assert decide(_scores(GAUSSIAN_RATIO * above, BOXCAR_RATIO * above)).profile == "boxcar"
    assert decide(_scores(GAUSSIAN_RATIO * above, BOXCAR_RATIO * below)).profile is None
    # the best boxcar-like candidate is the reference: sinc when it fits better than the boxcar
    scores = _scores(GAUSSIAN_RATIO * above, BOXCAR_RATIO * below)
    scores["sinc"] = {"level": 0.5, "power": 0.5}
    assert decide(scores).profile == "boxcar"


def test_a_target_at_the_in_plane_spacing_names_the_boxcar_sooner():
    between = _scores(GAUSSIAN_RATIO * 1.01, (BOXCAR_RATIO_MATCHED + BOXCAR_RATIO) / 2)
    assert BOXCAR_RATIO_MATCHED < BOXCAR_RATIO
    assert decide(between, matched=True).profile == "boxcar"
    assert decide(between).profile is None
    below = _scores(GAUSSIAN_RATIO * 1.01, BOXCAR_RATIO_MATCHED * 0.99)
    assert decide(below, matched=True).profile is None


def _matched_seen(monkeypatch) -> list[bool]:
    """What `estimate_slice_profile` passes `decide` as ``matched``, call by call."""
    seen = []
    real = profile_module.decide

    def spy(scores, matched=False):
        seen.append(matched)
        return real(scores, matched)

    monkeypatch.setattr(profile_module, "decide", spy)
    return seen


@pytest.mark.parametrize(
    ("thick_spacing", "matched"),
    [(3.0, True), (3.1, True), (3.2, False), (4.5, False), (1.0, False)],
)
def test_matched_means_the_output_spacing_is_the_in_plane_spacing(
    monkeypatch, thick_spacing, matched
):
    seen = _matched_seen(monkeypatch)
    thick = simulate_thick_slices(_texture(3), 2, 3, profile="boxcar")
    # x3 from slices `thick_spacing` apart: an output of thick_spacing / 3 against 1 mm in-plane
    # (1.0: an isotropic volume upsampled by an explicit factor, an output finer than in-plane)
    estimate_slice_profile(_sources(thick, 3, spacing=thick_spacing), 3, 1.0, 0.0)
    assert seen == [matched]


@pytest.mark.parametrize(("factor", "matched"), [(1.5, False), (2.0, True)])
def test_matched_holds_only_from_the_tuned_factors(monkeypatch, factor, matched):
    seen = _matched_seen(monkeypatch)
    thick = simulate_thick_slices(_texture(4, shape=(48, 48, 96)), 2, factor, profile="boxcar")
    estimate_slice_profile(_sources(thick, factor), factor, 1.0, 0.0)
    assert seen == [matched] and MATCHED_MIN_FACTOR == 2.0


@pytest.mark.parametrize(("thick_mm", "matched"), [(3.0, True), (1.0, False)])
def test_the_fits_sources_give_the_thick_spacing_first(monkeypatch, thick_mm, matched):
    seen = _matched_seen(monkeypatch)
    scan = Volume(_texture(6, shape=(40, 40, 32)) * 100.0, np.diag([1.0, 1.0, thick_mm, 1.0]))
    sources = adapt.scan_sources(scan, axis=2, factor=3.0)
    assert sources[0].spacing[0] == thick_mm
    estimate_slice_profile(sources, 3.0, 1.0, 0.0)
    assert seen == [matched]


def test_the_power_score_forgives_a_power_law_the_level_score_does_not():
    difference = 0.3 - 0.7 * np.log(np.arange(1, 11))
    assert _misfit(difference, "power") < 1e-20
    assert _misfit(difference, "level") > 0.1
    assert _misfit(difference - difference.mean() + 2.0, "level") == pytest.approx(
        _misfit(difference, "level")
    )


def _scan(profile: str) -> Volume:
    """A thick-slice scan (1 x 1 x 3 mm) of isotropic texture, as `medsr upsample` reads one."""
    thick = simulate_thick_slices(_texture(11, shape=(40, 40, 96)), 2, 3, profile=profile)
    return Volume(thick * 1000.0, np.diag([1.0, 1.0, 3.0, 1.0]))


def test_the_fit_uses_and_records_the_estimate_unless_told(monkeypatch, tiny_config):
    told = []
    real = adapt.adaptation_config

    def spy(config, steps, seed, thickness_ratio=None, profile=None, *rest):
        told.append(profile)
        return real(config, steps, seed, thickness_ratio, profile, *rest)

    monkeypatch.setattr(adapt, "adaptation_config", spy)
    guarded, planes = [], adapt.guard_planes

    def guard_spy(sources, slab, neighbours, ratio, profile=None, noise=0.0):
        guarded.append(profile)
        return planes(sources, slab, neighbours, ratio, profile, noise)

    monkeypatch.setattr(adapt, "guard_planes", guard_spy)
    generator = build_generator(tiny_config)
    scan, guard = _scan("gaussian"), {}
    options = dict(axis=2, factor=3.0, steps=1, device=torch.device("cpu"), calibrate=False)
    adapt.adapt_to_scan(generator, tiny_config, scan, guard=guard, **options)
    assert told == ["gaussian"]
    assert guarded == ["gaussian"]  # the held-back slices are thickened as the fit thickens
    assert guard["slice_profile_estimate"]["profile"] == "gaussian"
    assert guard["fit_profiles"] == {"gaussian": 1}  # the provenance says what the fit drew
    assert set(guard["slice_profile_estimate"]["scores"]["sinc"]) == {"level", "power"}

    guard = {}  # a profile the scan states is used as it is, and nothing is estimated
    adapt.adapt_to_scan(generator, tiny_config, scan, guard=guard, profile="boxcar", **options)
    assert told[-1] == "boxcar" and "slice_profile_estimate" not in guard

    monkeypatch.setattr(adapt, "ESTIMATE_PROFILE", False)
    guard = {}
    adapt.adapt_to_scan(generator, tiny_config, scan, guard=guard, **options)
    assert told[-1] is None and "slice_profile_estimate" not in guard
    # undecided (here: not estimated), the trained profiles with the boxcar drawn more often
    weight = adapt.UNDECIDED_BOXCAR_WEIGHT
    assert tiny_config.data.profiles == ("boxcar", "gaussian") and weight == 3
    assert guard["fit_profiles"] == {"boxcar": 3, "gaussian": 1}
    guard = {}  # nothing fitted (the prior alone, calibrated): nothing drawn, nothing recorded
    no_fit = dict(options, steps=0, calibrate=True)
    adapt.adapt_to_scan(generator, tiny_config, scan, guard=guard, **no_fit)
    assert "residual_gain" in guard and "fit_profiles" not in guard


def test_an_undecided_fit_draws_the_boxcar_like_profiles_more_often():
    assert undecided_profiles(("boxcar", "gaussian"), 3) == ("boxcar",) * 3 + ("gaussian",)
    assert undecided_profiles(("gaussian", "sinc"), 2) == ("gaussian", "sinc", "sinc")
    assert undecided_profiles(("gaussian",), 3) == ("gaussian",)  # nothing boxcar-like trained
    assert undecided_profiles(("boxcar", "gaussian"), 1) == ("boxcar", "gaussian")  # even
    with pytest.raises(ValueError, match="at least 1"):
        undecided_profiles(("boxcar",), 0)
    config = adapt.adaptation_config(Config(), 5, 0)  # the shipped family: 3 boxcar to 1
    assert config.data.profiles == ("boxcar", "boxcar", "boxcar", "gaussian")
    assert adapt.adaptation_config(Config(), 5, 0, profile="gaussian").data.profiles == (
        "gaussian",
    )


def test_a_series_fitted_on_its_mean_compares_the_means_own_noise(monkeypatch, tiny_config):
    """The fit puts one frame's noise back (`noise`), but the estimate compares the fitted
    volume's own slices, so it takes their noise."""
    from medsr.train.noise import scan_noise
    from medsr.train.pairs import sources_self_supervised

    seen = []
    real = adapt.estimate_slice_profile

    def spy(sources, factor, ratio, noise):
        seen.append(noise)
        return real(sources, factor, ratio, noise)

    monkeypatch.setattr(adapt, "estimate_slice_profile", spy)
    scan = _scan("boxcar")
    scan = scan.with_array(scan.array + np.random.default_rng(3).normal(0, 20, scan.array.shape))
    grey = scan.with_array(adapt.grey_array(scan))
    own = scan_noise(sources_self_supervised(grey, "scan", axis=2, factor=3.0)[0].array)
    options = dict(axis=2, factor=3.0, steps=1, device=torch.device("cpu"), calibrate=False)
    adapt.adapt_to_scan(build_generator(tiny_config), tiny_config, grey, noise=0.5, **options)
    assert own > 0 and seen == [pytest.approx(own)]


def test_a_time_bound_counts_the_estimate(monkeypatch, tiny_config):
    """``--fit-seconds`` bounds the whole fit: time the slice-profile estimate took is not
    spent again on steps."""
    import time

    real = adapt.estimate_slice_profile

    def slow(*args):
        time.sleep(2.0)
        return real(*args)

    monkeypatch.setattr(adapt, "estimate_slice_profile", slow)
    options = dict(axis=2, factor=3.0, steps=10**6, device=torch.device("cpu"), calibrate=False)
    _, steps = adapt.adapt_to_scan(
        build_generator(tiny_config), tiny_config, _scan("boxcar"), seconds=2.0, **options
    )
    assert steps <= 1
