import numpy as np
import pytest
import torch

from medsr.baselines import interpolate_along_axis
from medsr.models import MISRGenerator, PlaneDiscriminator
from medsr.models.blocks import bspline_upsample_last_axis, shuffle_last_axis


@pytest.mark.parametrize("neighbours", [1, 3])
@pytest.mark.parametrize("scale", [2, 3, 5])
def test_generator_shapes(neighbours, scale):
    generator = MISRGenerator(neighbours=neighbours, num_features=8, num_blocks=1, scales=(2, 3, 5))
    out = generator(torch.randn(2, neighbours, 16, 7), scale)
    assert out.shape == (2, 1, 16, 7 * scale)


def test_generator_3d_slabs():
    generator = MISRGenerator(
        neighbours=1, num_features=4, num_blocks=1, scales=(2,), spatial_dims=3
    )
    assert generator(torch.randn(1, 1, 5, 6, 4), 2).shape == (1, 1, 5, 6, 8)


def test_untrained_generator_is_the_bspline_baseline():
    generator = MISRGenerator(neighbours=3, num_features=8, num_blocks=1, scales=(4,))
    lr = torch.randn(2, 3, 10, 6, dtype=torch.float64)
    out = generator.double()(lr, 4)
    positions = (np.arange(24) + 0.5) / 4 - 0.5
    expected = interpolate_along_axis(lr[:, 1].numpy(), positions, 2, "bspline")
    np.testing.assert_allclose(out[:, 0].detach().numpy(), expected, atol=1e-5)


def test_shuffle_places_channel_j_at_position_i_times_scale_plus_j():
    x = torch.arange(2 * 3 * 4).reshape(1, 3, 2, 4).float()  # (N, scale=3, W=2, n=4)
    out = shuffle_last_axis(x, 3)
    assert out.shape == (1, 1, 2, 12)
    for i in range(4):
        for j in range(3):
            assert out[0, 0, 1, i * 3 + j] == x[0, j, 1, i]


def test_bspline_upsample_of_constant_and_ramp():
    ramp = torch.arange(12, dtype=torch.float64).expand(2, 1, 3, 12)
    out = bspline_upsample_last_axis(ramp, 3)[0, 0, 0].numpy()
    positions = (np.arange(36) + 0.5) / 3 - 0.5
    inside = (positions > 4) & (positions < 7)
    np.testing.assert_allclose(out[inside], positions[inside], atol=1e-3)
    constant = bspline_upsample_last_axis(torch.full((1, 1, 2, 5), 3.0), 4)
    np.testing.assert_allclose(constant.numpy(), 3.0, rtol=1e-6)


def test_generator_refuses_unknown_scale_and_even_k():
    with pytest.raises(ValueError, match="no output head"):
        MISRGenerator(scales=(2,), num_features=4, num_blocks=1)(torch.randn(1, 3, 8, 4), 3)
    with pytest.raises(ValueError, match="odd"):
        MISRGenerator(neighbours=2)


def test_discriminator_returns_patch_logits():
    logits = PlaneDiscriminator(channels=8, num_layers=2)(torch.randn(3, 1, 32, 24))
    assert logits.shape[:2] == (3, 1) and logits.ndim == 4


def test_smore_baseline_shapes_and_fit_runs():
    from conftest import make_affine, phantom_array

    from medsr.io import Volume
    from medsr.smore import SmoreNet, fit_smore

    assert SmoreNet()(torch.randn(2, 1, 16, 5), 3).shape == (2, 1, 16, 15)
    scan = Volume(array=phantom_array((40, 36, 8)), affine=make_affine("RAS", (1, 1, 3)))
    network = fit_smore(scan, scale=3, seconds=2, device=torch.device("cpu"))
    assert network.neighbours == 1 and not network.training
