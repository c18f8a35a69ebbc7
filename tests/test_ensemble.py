"""The reconstruction's self-ensemble (`medsr.upsample.reconstruct`, ``ensemble``)."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import make_affine, phantom_array, random_generator

from medsr.cli import main
from medsr.geometry import neighbour_indices, plan_output_grid
from medsr.io import Volume
from medsr.nets import MISRGenerator
from medsr.upsample.api import upsample_volume
from medsr.upsample.checks import ENSEMBLE_BUDGET, default_ensemble
from medsr.upsample.ensemble import ENSEMBLE_FLIPS, ensemble_passes
from medsr.upsample.reconstruct import (
    plane_orientations,
    reconstruct,
    reconstruct_volume,
)

CPU = torch.device("cpu")


def _volume(thick: float = 3.5, shape=(12, 10, 6)) -> Volume:
    return Volume(array=phantom_array(shape), affine=make_affine("LPS", [1.0, 1.0, thick]))


def test_an_untrained_generator_is_bspline_whatever_the_ensemble():
    """Every pass of a generator that is cubic B-spline is cubic B-spline (the spline's edge rule
    is symmetric), so no ensemble moves it."""
    volume = _volume()
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    generator = MISRGenerator(num_features=8, num_blocks=1, hidden=8).eval()
    single = reconstruct_volume(volume, grid, generator, device=CPU, precision="fp32")
    for ensemble in (2, 4, 8):
        many = reconstruct_volume(
            volume, grid, generator, device=CPU, precision="fp32", ensemble=ensemble
        )
        np.testing.assert_allclose(many, single, rtol=0, atol=1e-3)


def _flipped_pass(generator, normalised, grid, spacing, flips) -> np.ndarray:
    """One orientation-averaged pass with `flips` applied by hand to the whole stack of planes
    (w, thick axis, neighbour order), decoded at mirrored positions and flipped back."""
    flip_w, flip_n, flip_p = flips
    factor = float(spacing[grid.axis] / grid.spacing)
    count = normalised.shape[grid.axis]
    positions = torch.from_numpy(np.asarray(grid.positions, np.float32))
    if flip_n:
        positions = (count - 1) - positions
    out = np.zeros(grid.shape, np.float32)
    for p, w, offset in plane_orientations(grid.axis, spacing):
        planes = np.transpose(normalised, (p, w, grid.axis))
        centres = np.arange(planes.shape[0])
        index = neighbour_indices(centres, generator.neighbours, offset, len(centres))
        lr = planes[index]  # (P, k, W, n)
        lr = lr[:, ::-1] if flip_p else lr
        lr = lr[:, :, ::-1] if flip_w else lr
        lr = lr[..., ::-1] if flip_n else lr
        with torch.no_grad():
            sr = generator(torch.from_numpy(lr.astype(np.float32).copy()), positions, factor)
        sr = sr[:, 0].numpy()
        np.transpose(out, (p, w, grid.axis))[:] += sr[:, ::-1] if flip_w else sr
    return out / 2


@pytest.mark.parametrize("ensemble", [2, 4, 8])
def test_the_ensemble_is_the_mean_of_its_flipped_passes(ensemble):
    generator = random_generator()
    volume = _volume()
    normalised = (volume.array - volume.array.min()) / np.ptp(volume.array)
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    out = reconstruct(
        normalised, grid, volume.spacing, generator, device=CPU, precision="fp32", ensemble=ensemble
    )
    passes = [
        _flipped_pass(generator, normalised, grid, volume.spacing, flips)
        for flips in ENSEMBLE_FLIPS[:ensemble]
    ]
    np.testing.assert_allclose(out, np.mean(passes, axis=0), rtol=0, atol=1e-5)
    # the flipped passes are real estimates of their own, not copies of the first
    assert np.abs(passes[1] - passes[0]).max() > 1e-3


def test_a_single_plane_generator_runs_each_distinct_pass_once(monkeypatch):
    """With k = 1 the neighbours' order is no symmetry: 8 passes are the 4 distinct flips, run
    once each, and give what 4 passes give."""
    import medsr.upsample.reconstruct as module

    torch.manual_seed(0)
    generator = MISRGenerator(neighbours=1, num_features=8, num_blocks=1, hidden=8, tail_knots=5)
    torch.nn.init.normal_(generator.decode[-1].weight, std=0.2)
    generator.eval()
    assert ensemble_passes(8, 1) == ENSEMBLE_FLIPS[:4]
    assert ensemble_passes(8, 3) == ENSEMBLE_FLIPS
    volume = _volume()
    normalised = (volume.array - volume.array.min()) / np.ptp(volume.array)
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    calls = []
    original = module.predict_flipped
    monkeypatch.setattr(
        module, "predict_flipped", lambda *a, **k: calls.append(a[5]) or original(*a, **k)
    )

    def run(ensemble: int) -> np.ndarray:
        calls.clear()
        return reconstruct(
            normalised,
            grid,
            volume.spacing,
            generator,
            device=CPU,
            precision="fp32",
            ensemble=ensemble,
        )

    four = run(4)
    four_calls = Counter(calls)
    eight = run(8)
    # the same passes, each once per batch and orientation, as many as 4 passes run
    assert Counter(calls) == four_calls and set(four_calls) == set(ENSEMBLE_FLIPS[:4])
    np.testing.assert_allclose(eight, four, rtol=0, atol=1e-6)


def test_one_pass_is_the_plain_reconstruction_to_the_bit():
    generator = random_generator()
    volume = _volume()
    normalised = (volume.array - volume.array.min()) / np.ptp(volume.array)
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    out = reconstruct(normalised, grid, volume.spacing, generator, device=CPU, precision="fp32")
    expected = _flipped_pass(generator, normalised, grid, volume.spacing, ENSEMBLE_FLIPS[0])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_the_orientations_disagreement_keeps_its_meaning_under_an_ensemble(monkeypatch):
    """With `disagreement`, the mean is the same up to the order of the float32 sums (each
    orientation's passes are summed first), and the half-difference is that of the two
    orientations' own ensemble means, each reconstructed alone."""
    import medsr.upsample.reconstruct as reconstruction

    generator = random_generator()
    volume = _volume()
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    options = dict(device=CPU, precision="fp32", ensemble=4)
    plain = reconstruct_volume(volume, grid, generator, **options)
    mean, half = reconstruct_volume(volume, grid, generator, disagreement=True, **options)
    np.testing.assert_allclose(mean, plain, rtol=1e-6, atol=1e-6 * np.ptp(volume.array))
    each = []
    for orientation in plane_orientations(grid.axis, volume.spacing):
        monkeypatch.setattr(reconstruction, "plane_orientations", lambda *_, o=orientation: [o])
        each.append(reconstruct_volume(volume, grid, generator, **options))
    tolerance = 1e-5 * np.ptp(volume.array)
    np.testing.assert_allclose(mean, (each[0] + each[1]) / 2, rtol=0, atol=tolerance)
    np.testing.assert_allclose(half, np.abs(each[1] - each[0]) / 2, rtol=0, atol=tolerance)
    assert half.max() > 10 * tolerance


@pytest.mark.parametrize(
    "flips, thick",
    [((True, False, False), 3.3), ((False, True, False), 3.0), ((False, False, True), 3.3)],
)
def test_each_pass_is_the_plain_reconstruction_of_the_flipped_volume(monkeypatch, flips, thick):
    """A pass flipped along w, the thick axis or the neighbours' order is the single-pass
    reconstruction of the volume flipped along that array axis, flipped back (one orientation;
    an integer factor for the thick axis, whose output grid is then its own mirror)."""
    import medsr.upsample.ensemble as ensemble_module
    import medsr.upsample.reconstruct as reconstruction

    generator = random_generator()
    volume = _volume(thick=thick)
    normalised = (volume.array - volume.array.min()) / np.ptp(volume.array)
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    p, w, offset = plane_orientations(grid.axis, volume.spacing)[0]
    monkeypatch.setattr(reconstruction, "plane_orientations", lambda *_: [(p, w, offset)])
    axis = [a for a, on in zip((w, grid.axis, p), flips, strict=True) if on][0]
    flipped = np.ascontiguousarray(np.flip(normalised, axis))
    options = dict(device=CPU, precision="fp32")
    expected = np.flip(reconstruct(flipped, grid, volume.spacing, generator, **options), axis)
    monkeypatch.setattr(ensemble_module, "ENSEMBLE_FLIPS", (flips,))
    out = reconstruct(normalised, grid, volume.spacing, generator, **options)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
    monkeypatch.setattr(ensemble_module, "ENSEMBLE_FLIPS", ((False, False, False),))
    plain = reconstruct(normalised, grid, volume.spacing, generator, **options)
    assert np.abs(out - plain).max() > 1e-3  # the pass is its own estimate


def test_an_ensemble_decoded_in_chunks_is_the_same(monkeypatch):
    import medsr.upsample.reconstruct as reconstruction

    generator = random_generator()
    volume = _volume()
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    whole = reconstruct_volume(volume, grid, generator, device=CPU, ensemble=8)
    monkeypatch.setattr(reconstruction, "DECODER_BUDGET", 1)  # one position per call
    chunked = reconstruct_volume(volume, grid, generator, device=CPU, ensemble=8)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)


def test_the_default_ensemble_spends_its_budget_on_small_outputs():
    assert default_ensemble((64, 64, 64)) == 4
    assert default_ensemble((197, 233, 189)) == 4  # the ICBM T1's grid
    assert default_ensemble((256, 256, 195)) == 2  # the 256 x 256 x 60 benchmark at x3.2
    voxels = ENSEMBLE_BUDGET  # one extra pass fits, three do not
    assert default_ensemble((voxels, 1, 1)) == 2
    assert default_ensemble((512, 512, 360)) == 1  # the chest CT at x10
    # RGB channels and a series' frames each cost a reconstruction: they count
    assert default_ensemble((197, 233, 189), count=3) == 2  # 26 M voxels
    assert default_ensemble((256, 256, 195), count=3) == 1  # 38 M voxels
    assert default_ensemble((64, 64, 64), count=100) == 2  # 26 M voxels
    assert default_ensemble((512, 512, 360), count=3) == 1


def test_the_ensemble_is_recorded_and_a_bad_one_refused_before_any_work(
    identity_checkpoint, monkeypatch
):
    import medsr.upsample.checks as checks

    volume = _volume()
    common = dict(method="misr", model=identity_checkpoint, fit_steps=0, device="cpu")
    result = upsample_volume(volume, ensemble=2, **common)
    assert result.meta["provenance"]["ensemble"] == 2
    result = upsample_volume(volume, **common)
    assert result.meta["provenance"]["ensemble"] == default_ensemble(result.spatial_shape)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the ensemble was checked")

    monkeypatch.setattr(checks, "load_model", no_model)
    monkeypatch.setattr("medsr.upsample.api.load_model", no_model)
    for bad in (3, 0, True, "4"):
        with pytest.raises(ValueError, match="ensemble must be one of"):
            upsample_volume(volume, ensemble=bad, **common)


def test_a_series_ensemble_counts_every_frame(tmp_path, identity_checkpoint):
    """A 4D series resolves its default ensemble for all its frames' outputs, refuses a bad one
    before its fit, and records the one it used."""
    import nibabel as nib

    from medsr.upsample.files import upsample_file

    frames = np.stack([phantom_array((12, 10, 6)) + 5 * t for t in range(3)], axis=-1)
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(frames.astype(np.float32), make_affine("LPS", [1, 1, 3.5])), path)
    common = dict(model=identity_checkpoint, device="cpu", fit_steps=2)
    with pytest.raises(ValueError, match="ensemble must be one of"):
        upsample_file(path, tmp_path / "bad.nii.gz", ensemble=5, **common)
    assert not (tmp_path / "bad.nii.gz").exists()
    out = tmp_path / "out.nii.gz"
    upsample_file(path, out, **common)
    record = json.loads(out.with_name(out.name + ".json").read_text())
    assert record["ensemble"] == 4 and record["fit_pixel_loss"] == "mse"


def test_the_monai_transform_refuses_a_bad_ensemble_when_built():
    from medsr.monai import ThroughPlaneUpsample

    with pytest.raises(ValueError, match="ensemble must be one of"):
        ThroughPlaneUpsample(ensemble=6)


def test_cli_ensemble_option(tmp_path, phantom_path, identity_checkpoint, capsys):
    out = tmp_path / "out.nii.gz"
    argv = ["upsample", str(phantom_path), "-o", str(out), "--quiet"]
    learned = ["--fit-steps", "0", "--model", str(identity_checkpoint)]
    assert main([*argv, *learned, "--ensemble", "8"]) == 0
    assert json.loads(out.with_name(out.name + ".json").read_text())["ensemble"] == 8
    with pytest.raises(SystemExit) as usage:
        main([*argv, *learned, "--overwrite", "--ensemble", "3"])
    assert usage.value.code == 2
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--method", "bspline", "--ensemble", "2"]) == 1
    assert "--ensemble averages the learned method's passes" in capsys.readouterr().err
