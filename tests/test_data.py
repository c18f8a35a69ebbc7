import numpy as np
import pytest
from conftest import make_affine, phantom_array

from medsr.config import DataConfig
from medsr.degrade import add_rician_noise, thicken_last_axis
from medsr.errors import MedsrError
from medsr.io import Volume
from medsr.train.pairs import (
    MIN_PATCH_SLICES,
    build_sampler,
    held_out_block,
    sources_from_volume,
    sources_self_supervised,
    stratified_subset,
)

CLEAN = {"noise_max": 0.0, "gamma_range": (1.0, 1.0), "gain_range": (1.0, 1.0)}
#: contiguous boxcar slices in small batches of whole patches: pairs whose noise can be read off
BOXCAR_BATCHES = {
    "profiles": ("boxcar",),
    "thickness_ratios": (1.0, 1.0),
    "patch_width": 32,
    "patch_slices": 6,
    "batch_size": 8,
    "validation_fraction": 0.0,
}


def test_sources_are_views_of_one_normalised_copy(hr_volume):
    sources = sources_from_volume(hr_volume, "hr")
    assert len(sources) == 6  # 3 thick axes x 2 neighbour axes (both orientations)
    base = sources[0].array.base
    assert all(np.shares_memory(s.array, base) for s in sources)


def test_pairs_are_the_truth_and_its_simulated_thick_slices(hr_volume):
    config = DataConfig(
        profiles=("boxcar",), thickness_ratios=(1.0, 1.0), patch_width=10, batch_size=4, **CLEAN
    )
    sampler = build_sampler([(hr_volume, "hr")], config, neighbours=3)
    for seed in range(5):
        lr, hr, positions, factor = sampler.sample(np.random.default_rng(seed))
        assert config.min_factor <= factor <= config.max_factor
        assert lr.shape[:3] == (4, 3, 10) and hr.shape[:3] == (4, 1, 10)
        assert hr.shape[-1] == len(positions) == int(np.floor(lr.shape[-1] * factor + 1e-6))
        # the centre plane's thick slices are the boxcar means of the target's thin slices
        thin = hr[:, 0].numpy()
        whole = int(np.floor(factor))
        if whole == factor:
            np.testing.assert_allclose(
                lr[:, 1, :, 0].numpy(), thin[..., :whole].mean(-1), atol=1e-5
            )


def test_factors_are_drawn_log_uniformly_over_the_range():
    volume = Volume(array=phantom_array((20, 20, 200)), affine=np.eye(4))
    config = DataConfig(min_factor=2.0, max_factor=16.0, batch_size=1, patch_width=8)
    sampler = build_sampler([(volume, "long")], config, neighbours=1)
    rng = np.random.default_rng(0)
    factors = np.array([sampler.draw_factor(sampler.sources[-1], rng) for _ in range(2000)])
    assert factors.min() >= 2.0 and factors.max() <= 16.0
    # log-uniform: as many draws in [2, 5.66) as in [5.66, 16)
    assert abs(np.mean(factors < np.sqrt(32)) - 0.5) < 0.05


def test_short_sources_limit_the_factor():
    volume = Volume(array=phantom_array((20, 20, 12)), affine=np.eye(4))
    sampler = build_sampler([(volume, "short")], DataConfig(), neighbours=1)
    for source in sampler.sources:
        assert source.max_factor() == source.array.shape[2] / MIN_PATCH_SLICES


def test_self_supervised_sources_keep_the_scan_factor():
    scan = Volume(array=phantom_array((20, 18, 6)), affine=make_affine("LIA", (0.5, 0.5, 2.2)))
    sources = sources_self_supervised(scan, "scan")
    assert len(sources) == 2 and {s.offset(4.4) for s in sources} == {1}
    assert [s.factor for s in sources] == pytest.approx([4.4, 4.4])
    config = DataConfig(self_supervised=True, patch_width=8, batch_size=2)
    sampler = build_sampler([(scan, "scan")], config, neighbours=3)
    lr, hr, positions, factor = sampler.sample(np.random.default_rng(1))
    assert factor == pytest.approx(4.4) and hr.shape[-1] == len(positions)


def test_thick_scans_among_high_resolution_volumes_teach_their_own_factor(hr_volume):
    scan = Volume(array=phantom_array((20, 18, 6)), affine=make_affine("RAS", (0.5, 0.5, 3.0)))
    sampler = build_sampler([(hr_volume, "hr"), (scan, "scan")], DataConfig(), neighbours=3)
    assert [s.factor for s in sampler.sources].count(6.0) == 2


def test_neighbours_are_one_thick_spacing_apart(hr_volume):
    sources = sources_from_volume(hr_volume, "hr")
    assert {s.offset(4.0) for s in sources} == {4}


def test_two_dimensional_images_are_sources():
    image = Volume(array=phantom_array((40, 30, 1)), affine=np.eye(4))
    sources = sources_from_volume(image, "image")
    assert len(sources) == 2 and all(s.array.shape[0] == 1 for s in sources)


def test_validation_planes_are_fixed_and_inside_the_held_out_block(hr_volume):
    config = DataConfig(batch_size=64, patch_width=8, validation_fraction=0.25)
    sampler = build_sampler([(hr_volume, "hr")], config, neighbours=1)
    source = sampler.sources[0]
    assert sampler.held_out(source) == held_out_block(source.array.shape, 0.25)
    planes = sampler.validation_planes()
    assert planes and all(p[1].shape[-1] == len(p[2]) for p in planes)
    first = sampler.validation_planes()
    for a, b in zip(first, planes, strict=True):  # fixed: the same planes every time
        assert np.array_equal(a[0].numpy(), b[0].numpy())


def test_the_held_out_block_is_a_share_of_every_axis_used():
    assert held_out_block((24, 22, 20), 0.0) is None
    assert held_out_block((24, 22, 20), 0.1) == (13, 12, 11)  # 11 x 10 x 9: 9.4 % of the voxels
    assert held_out_block((40, 30, 1), 0.1) == (27, 21, 0)  # a 2D image: 13 x 9 of 40 x 30
    assert held_out_block((2, 2, 2), 0.9) == (1, 1, 1)  # never a whole axis


def _marked(shape, block, spacing=(1.0, 1.0, 1.0)):
    """Zeros, and ones in the block: a training patch that touches the block is not zero."""
    array = np.zeros(shape, np.float32)
    array[tuple(slice(start, None) for start in block)] = 1.0
    return Volume(array, make_affine("RAS", spacing))


def test_the_held_out_block_never_appears_in_training_patches():
    # the blocks of `held_out_block` at 0.1, written out: every orientation of each volume
    # (3 thick axes x 2 neighbour axes; a 2D image's two axes; a thick scan's in-plane axes)
    # must keep out of the same voxels
    volumes = [
        (_marked((24, 22, 20), (13, 12, 11)), "hr"),
        (_marked((40, 30, 1), (27, 21, 0)), "image"),
        (_marked((20, 18, 6), (11, 10, 3), (0.5, 0.5, 3.0)), "scan"),
    ]
    config = DataConfig(
        batch_size=16, patch_width=8, patch_slices=6, max_factor=8.0, validation_fraction=0.1,
        **CLEAN,
    )  # fmt: skip
    sampler = build_sampler(volumes, config, neighbours=3)
    assert len(sampler.sources) == 6 + 2 + 2
    rng = np.random.default_rng(0)
    for _ in range(400):
        lr, hr, _, _ = sampler.sample(rng)
        assert lr.abs().max() == 0 and hr.abs().max() == 0
    planes = sampler.validation_planes(max_sources=10)
    assert planes  # ... and validation targets lie inside the block only
    assert all(float(hr.min()) == pytest.approx(1.0) for _, hr, _, _ in planes)


def test_rician_noise_is_non_negative_and_biased_up_in_the_background():
    rng = np.random.default_rng(0)
    noisy = add_rician_noise(np.zeros((100, 100), np.float32), 0.1, rng)
    assert noisy.min() >= 0 and 0.1 < noisy.mean() < 0.15  # sigma * sqrt(pi / 2) = 0.125


def test_thickening_preserves_a_constant():
    thick = thicken_last_axis(np.full((2, 3, 20), 5.0, np.float32), 2.5, 3.0, "gaussian")
    assert thick.shape == (2, 3, 8)
    np.testing.assert_allclose(thick, 5.0, rtol=1e-5)


def test_wrong_source_is_refused():
    thick = Volume(array=phantom_array((8, 8, 8)), affine=np.diag([1, 1, 3, 1.0]))
    with pytest.raises(MedsrError, match="--self-supervised"):
        sources_from_volume(thick, "thick")
    iso = Volume(array=phantom_array((8, 8, 8)), affine=np.eye(4))
    with pytest.raises(MedsrError, match="nearly isotropic"):
        sources_self_supervised(iso, "iso")


def test_the_queried_positions_are_one_from_each_equal_run():
    rng = np.random.default_rng(0)
    for count, size in [(90, 32), (78, 32), (33, 32), (24, 24), (5, 1)]:
        chosen = stratified_subset(count, size, rng)
        assert len(chosen) == size and np.all(np.diff(chosen) > 0)
        assert 0 <= chosen[0] and chosen[-1] < count
        runs = np.floor(chosen * size / count).astype(int)  # the run each index falls in
        np.testing.assert_array_equal(runs, np.arange(size))
    # the offsets inside a run are random: over many draws every index of a run is chosen
    draws = np.stack([stratified_subset(90, 32, rng) for _ in range(400)])
    assert len(np.unique(draws)) == 90
    with pytest.raises(ValueError, match="size"):
        stratified_subset(4, 5, rng)


def test_a_query_budget_trains_the_decoder_on_a_subset_of_the_same_pair(hr_volume):
    import dataclasses

    config = DataConfig(
        profiles=("boxcar",), thickness_ratios=(1.0, 1.0), patch_width=10, batch_size=4, **CLEAN
    )
    full = build_sampler([(hr_volume, "hr")], config, neighbours=3)
    budget = build_sampler(
        [(hr_volume, "hr")], dataclasses.replace(config, query_positions=5), neighbours=3
    )
    for seed in range(4):
        lr, hr, positions, factor = full.sample(np.random.default_rng(seed))
        lr_q, hr_q, positions_q, factor_q = budget.sample(np.random.default_rng(seed))
        # the same patch and thick input (the subset is drawn after them), the target at 5
        # of its thin positions
        assert factor_q == factor
        np.testing.assert_array_equal(lr_q.numpy(), lr.numpy())
        assert hr_q.shape == (*hr.shape[:-1], 5) and len(positions_q) == 5
        chosen = np.searchsorted(positions.numpy(), positions_q.numpy())
        np.testing.assert_array_equal(positions.numpy()[chosen], positions_q.numpy())
        np.testing.assert_array_equal(hr.numpy()[..., chosen], hr_q.numpy())
        assert hr_q.is_contiguous()


def test_config_ranges_are_checked():
    with pytest.raises(MedsrError, match="min_factor"):
        DataConfig(min_factor=4.0, max_factor=2.0)
    with pytest.raises(MedsrError, match="validation_fraction"):
        DataConfig(validation_fraction=1.5)
    with pytest.raises(MedsrError, match="thickness_ratios"):
        DataConfig(thickness_ratios=(1.2, 0.8))
    with pytest.raises(MedsrError, match="query_positions"):
        DataConfig(query_positions=-1)


def _mostly_empty_scan() -> Volume:
    """A small object in a large empty field: 8 % of the in-plane area, thick axis 2."""
    array = np.zeros((64, 64, 12), np.float32)
    array[24:42, 24:42] = 100.0 + np.random.default_rng(0).normal(0, 1, (18, 18, 12))
    return Volume(array=array, affine=np.diag([1.0, 1.0, 4.0, 1.0]))


def _foreground_share(foreground_sampling: bool) -> float:
    import dataclasses

    from medsr.config import DataConfig
    from medsr.train.pairs import PairSampler, sources_self_supervised

    config = DataConfig(
        self_supervised=True, patch_width=8, patch_slices=4, batch_size=16, validation_fraction=0.0
    )
    config = dataclasses.replace(config, foreground_sampling=foreground_sampling)
    volume = _mostly_empty_scan()
    sampler = PairSampler(sources_self_supervised(volume, "scan", axis=2, factor=4.0), config, 3)
    rng = np.random.default_rng(0)
    shares = []
    for _ in range(20):
        _, hr, _, _ = sampler.sample(rng)
        shares.append(np.mean(hr.numpy().max(axis=(1, 2, 3)) > 0.5))  # patch touches the object
    return float(np.mean(shares))


def test_an_undecided_fits_draws_follow_its_weighted_profiles(monkeypatch):
    """The fit's weighted tuple (`medsr.upsample.profile.undecided_profiles`) reaches the
    sampler's draws as weights: three boxcar batches per Gaussian one."""
    import dataclasses

    import medsr.train.pairs as pairs
    from medsr.config import Config
    from medsr.train.pairs import PairSampler, sources_self_supervised
    from medsr.upsample.adapt import adaptation_config

    config = adaptation_config(Config(), 10, 0).data
    assert config.profiles == ("boxcar", "boxcar", "boxcar", "gaussian")
    drawn, real = [], pairs.thicken_like_scan

    def spy(patches, factor, thickness, profile, noise, rng):
        drawn.append(profile)
        return real(patches, factor, thickness, profile, noise, rng)

    monkeypatch.setattr(pairs, "thicken_like_scan", spy)
    config = dataclasses.replace(config, patch_width=8, patch_slices=4, batch_size=1)
    sources = sources_self_supervised(_mostly_empty_scan(), "scan", axis=2, factor=4.0)
    sampler, rng = PairSampler(sources, config, 3), np.random.default_rng(0)
    for _ in range(400):
        sampler.sample(rng)
    assert set(drawn) == {"boxcar", "gaussian"}
    assert drawn.count("boxcar") / len(drawn) == pytest.approx(0.75, abs=0.06)


def test_foreground_sampling_puts_most_patches_on_the_object():
    uniform, weighted = _foreground_share(False), _foreground_share(True)
    assert uniform < 0.4  # uniform patches mostly see the empty field
    assert weighted > 0.8 and weighted > uniform + 0.4
    assert weighted < 1.0  # a few background patches remain


def test_the_fit_samples_the_foreground():
    from medsr.config import Config
    from medsr.upsample.adapt import adaptation_config

    assert adaptation_config(Config(), 10, 0).data.foreground_sampling
    assert not Config().data.foreground_sampling  # training runs: off unless asked
    # the fit learns from the scan's own content: never smoothed, whatever the prior trained with
    trained = Config(data=DataConfig(blur_max=2.0))
    assert adaptation_config(trained, 10, 0).data.blur_max == 0


def test_thickening_keeps_the_share_of_noise_its_weights_say():
    from medsr.degrade import thickened_noise_share

    # a boxcar of four whole slices averages white noise to a quarter of its variance
    assert thickened_noise_share(40, 4.0, 4.0, "boxcar") == pytest.approx(0.25)
    # wider profiles average more; a slice one thin slice thick, centred on one, keeps all of it
    assert thickened_noise_share(30, 3.0, 1.0, "boxcar") == pytest.approx(1.0)
    wide, narrow = (thickened_noise_share(40, 4.0, t, "gaussian") for t in (6.0, 3.0))
    assert np.all(wide < narrow)
    # per thick slice: a profile cut by the patch's ends averages less there
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 1.0, (400, 64, 40)).astype(np.float32)
    measured = thicken_last_axis(noise, 4.0, 8.0, "gaussian").var(axis=(0, 1))
    shares = thickened_noise_share(40, 4.0, 8.0, "gaussian")
    assert shares.shape == (10,) and shares[0] > 1.3 * shares[5] and shares[-1] > 1.3 * shares[5]
    np.testing.assert_allclose(measured, shares, rtol=0.05)


def test_the_scans_noise_is_put_back_on_the_inputs_it_thickens():
    """Thick slices made from the scan's in-plane slices carry the scan's voxel noise in full
    (`DataConfig.input_noise`), as the scan's own thick slices do; without it, what thickening
    left of it."""
    from medsr.config import DataConfig
    from medsr.train.pairs import PairSampler, sources_self_supervised

    sigma = 0.05
    rng = np.random.default_rng(1)
    flat = Volume(
        array=(0.5 + rng.normal(0.0, sigma, (48, 48, 16))).astype(np.float32),
        affine=np.diag([1.0, 1.0, 4.0, 1.0]),
    )
    sources = sources_self_supervised(flat, "flat", axis=2, factor=4.0)
    scale = float(sources[0].array.std() / flat.array.std())  # what the sources normalise by
    stds = {}
    for noise in (0.0, sigma):
        config = DataConfig(
            self_supervised=True,
            **BOXCAR_BATCHES,
            input_noise=noise * scale if noise else 0.0,
            **CLEAN,
        )
        lr, hr, _, _ = PairSampler(sources, config, 3).sample(np.random.default_rng(0))
        stds[noise] = (float(lr.numpy().std()), float(hr.numpy().std()))
    (thickened, truth), (restored, truth_again) = stds[0.0], stds[sigma]
    assert truth == pytest.approx(truth_again)  # the target is the scan's slice, untouched
    # variances: 4 slices keep a quarter; put back, the scan's own (not 1 + 1/4 of it)
    assert thickened**2 == pytest.approx(truth**2 / 4, rel=0.06)
    assert restored**2 == pytest.approx(truth**2, rel=0.06)
    with pytest.raises(MedsrError, match="input_noise"):
        DataConfig(input_noise=-0.1)


def test_smoothed_content_is_drawn_in_a_share_of_batches_input_and_target_alike(hr_volume):
    config = DataConfig(
        profiles=("boxcar",), thickness_ratios=(1.0, 1.0), patch_width=16, batch_size=4, **CLEAN
    )
    blurred = DataConfig(**{**config.__dict__, "blur_max": 2.0})
    plain, smooth = (build_sampler([(hr_volume, "hr")], c, neighbours=3) for c in (config, blurred))

    def roughness(hr):  # along both plane axes: w and a (the axis made thick)
        array = hr.numpy()
        return float(np.mean(np.diff(array, axis=-2) ** 2) + np.mean(np.diff(array, axis=-1) ** 2))

    smoother = 0
    for seed in range(60):
        _, hr_plain, _, factor = plain.sample(np.random.default_rng(seed))
        lr, hr, _, _ = smooth.sample(np.random.default_rng(seed))
        rough, now = roughness(hr_plain), roughness(hr)
        smoother += now < 0.9 * rough
        assert now <= rough * (1 + 1e-6)  # never rougher; the same plane otherwise
        # the input is thickened from the smoothed truth, not from the original
        expected = thicken_last_axis(hr[:, 0].numpy(), factor, factor, "boxcar")[..., :-1]
        got = lr[:, 1, :, : expected.shape[-1]].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert 12 <= smoother <= 28  # about a third of 60 batches (BLUR_SHARE; a half would be 30)
    with pytest.raises(MedsrError, match="blur_max"):
        DataConfig(blur_max=-1.0)


def test_smoothing_spreads_along_both_plane_axes_and_never_across_planes():
    from medsr.train.content import smooth_planes

    patches = np.zeros((1, 3, 21, 21), np.float32)
    patches[0, 1, 10, 10] = 1.0
    out = smooth_planes(patches, 1.5)
    assert out[0, 1].sum() == pytest.approx(1.0, abs=1e-5)  # mass kept in its own plane
    assert not out[0, 0].any() and not out[0, 2].any()  # neighbour planes untouched
    assert out[0, 1, 10, 12] > 0.01 and out[0, 1, 12, 10] > 0.01  # along w and along a
    np.testing.assert_allclose(out[0, 1], out[0, 1].T, atol=1e-7)  # the same sigma on both


def test_the_noise_put_back_is_the_scans_in_every_thick_slice():
    """A Gaussian cut by the patch's ends averages less there: each thick slice, end slices too,
    gets the variance that brings it to the scan's sigma squared."""
    from medsr.train.noise import restore_thick_noise, thicken_like_scan

    sigma, rng = 0.05, np.random.default_rng(3)
    thin = rng.normal(0.0, sigma, (400, 64, 40)).astype(np.float32)
    lr = thicken_like_scan(thin, 4.0, 8.0, "gaussian", sigma, rng)
    np.testing.assert_allclose(lr.var(axis=(0, 1)), sigma**2, rtol=0.05)
    with pytest.raises(ValueError, match="thick slices"):
        restore_thick_noise(lr[..., :3], sigma, (40, 4.0, 8.0, "gaussian"), rng)


def test_a_share_of_noisy_batches_carries_the_noise_on_the_thick_input_in_full():
    """`DataConfig.thick_noise_share`: in that share of the noisy batches the thick input
    carries the drawn noise in full (a real thick slice's voxel noise), in the others what
    thickening left of it."""
    import dataclasses

    flat = Volume(array=np.full((48, 48, 64), 0.5, np.float32), affine=np.eye(4))
    base = DataConfig(
        min_factor=4.0,
        max_factor=4.0,
        **BOXCAR_BATCHES,
        gamma_range=(1.0, 1.0),
        gain_range=(1.0, 1.0),
        noise_max=0.2,
    )

    def ratios(share: float) -> list[float]:
        config = dataclasses.replace(base, thick_noise_share=share)
        sampler = build_sampler([(flat, "flat")], config, 3)
        rng = np.random.default_rng(0)
        out = []
        for _ in range(30):
            lr, hr, _, _ = sampler.sample(rng)
            if float(hr.numpy().std()) > 0.01:  # a noisy batch
                out.append(float(lr.numpy().std()) / float(hr.numpy().std()))
        return out

    averaged, full = ratios(0.0), ratios(1.0)
    assert averaged and full
    # 4 thin slices per thick one: a quarter of the variance is left, half the std; in full: all
    assert max(averaged) < 0.6 and min(full) > 0.85
    half = ratios(0.5)
    assert any(r < 0.6 for r in half) and any(r > 0.85 for r in half)
    with pytest.raises(MedsrError, match="thick_noise_share"):
        DataConfig(thick_noise_share=1.5)


def test_without_thick_noise_the_batch_noise_draws_what_it_drew_before():
    """`draw_noise` with ``thick_noise_share`` 0 takes the random draws of the inline code it
    replaced (a 2/3 draw, the level, the Rician noise), so existing configs make the same pairs
    and leave the generator where it was."""
    from medsr.train.noise import draw_noise

    patches = np.full((2, 3, 8, 12), 0.5, np.float32)
    config = DataConfig(noise_max=0.05)
    for seed in range(6):
        ours, before = np.random.default_rng(seed), np.random.default_rng(seed)
        noisy, input_noise = draw_noise(patches, config, ours)
        expected = patches
        if before.random() < 2 / 3:
            expected = add_rician_noise(patches, before.uniform(0, 0.05), before)
        np.testing.assert_array_equal(noisy, expected)
        assert input_noise == 0.0
        assert ours.random() == before.random()  # the stream goes on from the same place
