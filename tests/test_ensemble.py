"""The reconstruction's self-ensemble (`medsr.upsample.reconstruct`, ``ensemble``)."""

import json

import numpy as np
import pytest
import torch
from conftest import make_affine, phantom_array

from medsr.cli import main
from medsr.geometry import neighbour_indices, plan_output_grid
from medsr.io import Volume
from medsr.nets import MISRGenerator
from medsr.upsample.api import upsample_volume
from medsr.upsample.reconstruct import (
    ENSEMBLE_BUDGET,
    ENSEMBLE_FLIPS,
    default_ensemble,
    plane_orientations,
    reconstruct,
    reconstruct_volume,
)

CPU = torch.device("cpu")


def _volume(thick: float = 3.5, shape=(12, 10, 6)) -> Volume:
    return Volume(array=phantom_array(shape), affine=make_affine("LPS", [1.0, 1.0, thick]))


def _random_generator() -> MISRGenerator:
    """A generator whose residual is far from zero and from any symmetry of the flips."""
    torch.manual_seed(0)
    generator = MISRGenerator(num_features=8, num_blocks=1, hidden=8, tail_knots=5)
    torch.nn.init.normal_(generator.decode[-1].weight, std=0.2)
    torch.nn.init.normal_(generator.tail.weight, std=0.2)
    return generator.eval()


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
    generator = _random_generator()
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


def test_one_pass_is_the_plain_reconstruction_to_the_bit():
    generator = _random_generator()
    volume = _volume()
    normalised = (volume.array - volume.array.min()) / np.ptp(volume.array)
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    out = reconstruct(normalised, grid, volume.spacing, generator, device=CPU, precision="fp32")
    expected = _flipped_pass(generator, normalised, grid, volume.spacing, ENSEMBLE_FLIPS[0])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_the_orientations_disagreement_keeps_its_meaning_under_an_ensemble():
    """With `disagreement`, the mean is the same up to the order of the float32 sums (each
    orientation's passes are summed first) and the difference is half that of the two
    orientations' own ensemble means."""
    generator = _random_generator()
    volume = _volume()
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    plain = reconstruct_volume(volume, grid, generator, device=CPU, precision="fp32", ensemble=4)
    mean, half = reconstruct_volume(
        volume, grid, generator, device=CPU, precision="fp32", ensemble=4, disagreement=True
    )
    np.testing.assert_allclose(mean, plain, rtol=1e-6, atol=1e-6 * np.ptp(volume.array))
    assert half.min() >= 0 and half.max() > 0
    # the two orientations' means lie mean +- half, each within the intensity range's rounding
    assert np.all(half <= np.abs(mean - volume.array.min()) + np.ptp(volume.array))


def test_the_default_ensemble_spends_its_budget_on_small_outputs():
    assert default_ensemble((64, 64, 64)) == 4
    assert default_ensemble((256, 256, 195)) == 4  # the 256 x 256 x 60 benchmark at x3.2
    voxels = ENSEMBLE_BUDGET  # one extra pass fits, three do not
    assert default_ensemble((voxels, 1, 1)) == 2
    assert default_ensemble((512, 512, 360)) == 1  # the chest CT at x10


def test_the_ensemble_is_recorded_and_a_bad_one_refused(identity_checkpoint):
    volume = _volume()
    common = dict(method="misr", model=identity_checkpoint, fit_steps=0, device="cpu")
    result = upsample_volume(volume, ensemble=2, **common)
    assert result.meta["provenance"]["ensemble"] == 2
    result = upsample_volume(volume, **common)
    assert result.meta["provenance"]["ensemble"] == default_ensemble(result.spatial_shape)
    with pytest.raises(ValueError, match="ensemble must be one of"):
        upsample_volume(volume, ensemble=3, **common)


def test_cli_ensemble_option(tmp_path, phantom_path, identity_checkpoint, capsys):
    out = tmp_path / "out.nii.gz"
    argv = ["upsample", str(phantom_path), "-o", str(out), "--quiet", "--fit-steps", "0"]
    argv += ["--model", str(identity_checkpoint)]
    assert main([*argv, "--ensemble", "8"]) == 0
    assert json.loads(out.with_name(out.name + ".json").read_text())["ensemble"] == 8
    with pytest.raises(SystemExit) as usage:
        main([*argv, "--overwrite", "--ensemble", "3"])
    assert usage.value.code == 2
    assert main([*argv, "--overwrite", "--method", "bspline", "--ensemble", "2"]) == 1
    assert "--ensemble" in capsys.readouterr().err
