import numpy as np
import pytest
import torch

from medsr.geometry import slab_positions
from medsr.interp import interpolate_along_axis
from medsr.nets import MISRGenerator, PlaneDiscriminator
from medsr.nets.blocks import bspline_sample_last_axis, gather_last_axis, gather_layout


@pytest.mark.parametrize("neighbours", [1, 3])
@pytest.mark.parametrize("factor", [1.3, 2.0, 4.5, 10.0, 16.0])
def test_generator_writes_any_factor_onto_the_requested_positions(neighbours, factor):
    generator = MISRGenerator(neighbours=neighbours, num_features=8, num_blocks=1, hidden=8)
    positions = torch.from_numpy(slab_positions(7, factor).astype(np.float32))
    out = generator(torch.randn(2, neighbours, 16, 7), positions, factor)
    assert out.shape == (2, 1, 16, int(np.floor(7 * factor + 1e-6)))


def test_generator_3d_slabs():
    generator = MISRGenerator(neighbours=1, num_features=4, num_blocks=1, hidden=4, spatial_dims=3)
    positions = torch.from_numpy(slab_positions(4, 2.5).astype(np.float32))
    assert generator(torch.randn(1, 1, 5, 6, 4), positions, 2.5).shape == (1, 1, 5, 6, 10)


@pytest.mark.parametrize("factor", [1.7, 4.0, 12.3])
def test_untrained_generator_is_the_bspline_baseline(factor):
    generator = MISRGenerator(neighbours=3, num_features=8, num_blocks=1).double()
    lr = torch.randn(2, 3, 10, 6, dtype=torch.float64)
    positions = slab_positions(6, factor)
    out = generator(lr, torch.from_numpy(positions), factor)
    expected = interpolate_along_axis(lr[:, 1].numpy(), positions, 2, "bspline")
    np.testing.assert_allclose(out[:, 0].detach().numpy(), expected, atol=1e-5)


def test_decoder_output_depends_on_offset_and_factor():
    torch.manual_seed(0)
    generator = MISRGenerator(neighbours=1, num_features=4, num_blocks=1, hidden=8)
    torch.nn.init.normal_(generator.decode[-1].weight)
    lr = torch.rand(1, 1, 4, 6)
    positions = torch.tensor([1.0, 1.25, 1.5])
    out = generator(lr, positions, 4.0) - bspline_sample_last_axis(lr, positions)
    assert not torch.allclose(out[..., 0], out[..., 1])  # offset inside the slab matters
    other = generator(lr, positions, 8.0) - bspline_sample_last_axis(lr, positions)
    assert not torch.allclose(out, other)  # so does the factor


def test_slab_positions_divide_each_slab():
    positions = slab_positions(3, 4.0)
    assert len(positions) == 12
    np.testing.assert_allclose(positions[:4], [-0.375, -0.125, 0.125, 0.375])
    assert len(slab_positions(5, 2.5)) == 12  # 12.5 thin slices: the whole ones


def test_bspline_sample_of_constant_and_ramp():
    ramp = torch.arange(12, dtype=torch.float64).expand(2, 1, 3, 12)
    positions = slab_positions(12, 3.0)
    out = bspline_sample_last_axis(ramp, positions)[0, 0, 0].numpy()
    inside = (positions > 4) & (positions < 7)
    np.testing.assert_allclose(out[inside], positions[inside], atol=1e-3)
    constant = bspline_sample_last_axis(torch.full((1, 1, 2, 5), 3.0), slab_positions(5, 4.0))
    np.testing.assert_allclose(constant.numpy(), 3.0, rtol=1e-6)


def test_gather_last_axis():
    x = torch.arange(10.0).reshape(1, 1, 2, 5)
    out = gather_last_axis(x, torch.tensor([0, 0, 4]))
    assert out.tolist() == [[[[0.0, 0.0, 4.0], [5.0, 5.0, 9.0]]]]


def test_generator_refuses_even_k():
    with pytest.raises(ValueError, match="odd"):
        MISRGenerator(neighbours=2)


def test_discriminator_returns_patch_logits():
    logits = PlaneDiscriminator(channels=8, num_layers=2)(torch.randn(3, 1, 32, 24))
    assert logits.shape[:2] == (3, 1) and logits.ndim == 4


def test_smore_baseline_shapes_and_fit_runs():
    from conftest import make_affine, phantom_array

    from medsr.io import Volume
    from medsr.nets.smore import SmoreNet
    from medsr.train.smore import fit_smore

    positions = torch.from_numpy(slab_positions(5, 3.0).astype(np.float32))
    assert SmoreNet()(torch.randn(2, 1, 16, 5), positions, 3.0).shape == (2, 1, 16, 15)
    scan = Volume(array=phantom_array((40, 36, 8)), affine=make_affine("RAS", (1, 1, 3)))
    network = fit_smore(scan, seconds=2, device=torch.device("cpu"))
    assert network.neighbours == 1 and not network.training


def test_untrained_generator_is_exact_bspline_under_autocast():
    # the base is computed in float32 outside autocast: mixed precision touches the residual only
    torch.manual_seed(0)
    generator = MISRGenerator(neighbours=3, num_features=8, num_blocks=1, hidden=8)
    lr = torch.rand(2, 3, 10, 6) * 1000
    positions = torch.from_numpy(slab_positions(6, 3.7).astype(np.float32))
    expected = interpolate_along_axis(lr[:, 1].double().numpy(), positions.numpy(), 2, "bspline")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generator(lr, positions, 3.7)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out[:, 0].detach().numpy(), expected, rtol=1e-6, atol=1e-4)


def _old_gather_last_axis(x, index):
    return x.index_select(-1, index)  # the implementation before the (..., n, W) layout


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 3, 4, 6, 11), (3, 1, 12)])
@pytest.mark.parametrize("laid_out", [False, True])
def test_gather_last_axis_equals_the_innermost_index_select(shape, laid_out):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    index = torch.sort(torch.randint(1, shape[-1] - 1, (13,))).values
    source = gather_layout(x) if laid_out else x
    out = gather_last_axis(source, index)
    expected = _old_gather_last_axis(x, index)
    assert out.shape == expected.shape and torch.equal(out, expected)
    weights = torch.randn(expected.shape)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x)
    assert torch.equal(grad, expected_grad)
    unsorted = torch.tensor([shape[-1] - 1, 0, 2, 0])
    assert torch.equal(gather_last_axis(source, unsorted), _old_gather_last_axis(x, unsorted))


def test_gather_last_axis_refuses_an_index_outside():
    with pytest.raises(IndexError):
        gather_last_axis(torch.zeros(1, 2, 3, 4), torch.tensor([0, 4]))


def test_gather_layout_keeps_values_and_lays_rows_out():
    x = torch.randn(2, 3, 5, 7)
    laid = gather_layout(x)
    assert torch.equal(laid, x) and laid.stride(-2) == 1


def test_encode_lays_the_projections_out_for_the_gather():
    """`encode` hands the decoder projections in the (..., n, W) layout (whole rows per gather);
    the decoded values are those of the plain layout."""

    torch.manual_seed(0)
    generator = MISRGenerator(num_features=8, num_blocks=1, hidden=8).eval()
    torch.nn.init.normal_(generator.decode[-1].weight, std=0.1)
    lr = torch.rand(2, 3, 12, 7)
    positions = torch.linspace(-0.4, 6.4, 23)
    left, right, centre, log_factor = generator.encode(lr, 3.3)
    assert left.stride(-2) == 1 and right.stride(-2) == 1
    plain = (left.contiguous(), right.contiguous(), centre, log_factor)
    assert plain[0].stride(-1) == 1
    with torch.no_grad():
        torch.testing.assert_close(
            generator.predict_at((left, right, centre, log_factor), positions),
            generator.predict_at(plain, positions),
            rtol=0,
            atol=1e-6,
        )
