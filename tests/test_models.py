import numpy as np
import pytest
import torch

from medsr.geometry import slab_positions
from medsr.interp import interpolate_along_axis
from medsr.nets import MISRGenerator, PlaneDiscriminator
from medsr.nets.blocks import bspline_sample_last_axis


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


def _reference_decoder(generator, lr, positions, factor):
    """The decoder as its design reads (docs/training.md): the 1x1 projections of the samples
    left and right of each position, gathered along the last axis in the (N, C, ..., W, n)
    layout, plus the query's projection, through the 1x1 convolutions; plus the offset tail's
    hat interpolation of the nearest sample's knots; plus cubic B-spline."""
    log_factor = np.log(factor)
    features = generator.head(torch.cat([lr, torch.full_like(lr[:, :1], log_factor)], dim=1))
    features = features + generator.body(features)
    left_proj, right_proj = generator.project(features).chunk(2, dim=1)
    count = lr.shape[-1]
    left = torch.clamp(torch.floor(positions), 0, count - 2).long()
    right = torch.clamp(left + 1, max=count - 1)
    offset = positions - left
    query = generator.query(torch.stack([offset, torch.full_like(offset, log_factor)], 1)).T
    query = query.reshape(1, -1, *([1] * (lr.dim() - 3)), len(positions))
    residual = generator.decode(left_proj[..., left] + right_proj[..., right] + query)
    knots = generator.tail(features)  # (N, J, ..., W, n)
    nearest = torch.clamp(torch.round(positions), 0, count - 1).long()
    grid = torch.linspace(-0.5, 0.5, knots.shape[1])
    hat = torch.clamp(
        1 - ((positions - nearest)[None] - grid[:, None]).abs() * (len(grid) - 1), min=0
    )
    hat = hat.reshape(1, knots.shape[1], *([1] * (lr.dim() - 3)), len(positions))
    residual = residual + (knots[..., nearest] * hat).sum(dim=1, keepdim=True)
    centre = lr[:, generator.neighbours // 2 : generator.neighbours // 2 + 1]
    return bspline_sample_last_axis(centre, positions) + residual


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_channels_last_decoder_is_the_1x1_convolution_decoder(spatial_dims):
    """`predict_at` gathers rows of channels-last maps and applies its 1x1 layers as matrix
    products: the values and the gradients are those of the convolutions on the plain layout."""
    torch.manual_seed(0)
    generator = MISRGenerator(num_features=8, num_blocks=1, hidden=8, spatial_dims=spatial_dims)
    torch.nn.init.normal_(generator.decode[-1].weight, std=0.1)
    torch.nn.init.normal_(generator.tail.weight, std=0.1)
    shape = (2, 3, 12, 7) if spatial_dims == 2 else (2, 3, 4, 5, 7)
    lr = torch.rand(shape)
    positions = torch.linspace(-0.4, 6.4, 23)
    out = generator(lr, positions, 3.3)
    expected = _reference_decoder(generator, lr, positions, 3.3)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    weights = torch.randn(out.shape)
    params = [p for p in generator.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * weights).sum(), params)
    expected_grads = torch.autograd.grad((expected * weights).sum(), params)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_encode_lays_the_projections_out_for_the_decoder():
    generator = MISRGenerator(num_features=8, num_blocks=1, hidden=8, tail_knots=5)
    encoded = generator.encode(torch.rand(2, 3, 12, 7), 3.0)
    # (N, n, W, C): the samples along dim 1, a contiguous row of W x C each
    assert encoded.left.shape == encoded.right.shape == (2, 7, 12, 8)
    assert encoded.tail.shape == (2, 7, 12, 5)
    assert all(t.is_contiguous() for t in (encoded.left, encoded.right, encoded.tail))


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 6, 7, 8])
def test_offset_tail_returns_its_knots_and_interpolates_between_them(factor):
    """Knot j of sample i is the residual at i - 0.5 + j / (J - 1); between knots the tail is
    linear. So at an integer factor r <= J - 1 every output position of a slab can take its own
    value, as with the first version's per-factor sub-pixel head."""
    from medsr.nets.generator import offset_tail

    count, num_knots = 6, 9
    knots = torch.randn(2, count, 5, num_knots, dtype=torch.float64)  # (N, n, W, J)
    grid = torch.linspace(-0.5, 0.5, num_knots, dtype=torch.float64)
    sample, knot = 3, 6
    at_knot = offset_tail(knots, torch.tensor([sample + grid[knot].item()], dtype=torch.float64))
    assert at_knot.shape == (2, 1, 5, 1)
    torch.testing.assert_close(at_knot[:, 0, :, 0], knots[:, sample, :, knot])
    # a ramp over the knots of every sample is reproduced at any offset
    ramp = (torch.arange(count)[:, None] + grid[None]).to(torch.float64)  # (n, J)
    knots = ramp.expand(1, 1, count, num_knots).permute(0, 2, 1, 3).contiguous()
    positions = torch.linspace(-0.5, count - 0.5, 37, dtype=torch.float64)
    torch.testing.assert_close(offset_tail(knots, positions)[0, :, 0, 0], positions)
    # at an integer factor up to 8 the positions of one slab are independent values
    positions = torch.tensor(
        [sample - 0.5 + (p + 0.5) / factor for p in range(factor)], dtype=torch.float64
    )
    rows = []
    for j in range(num_knots):
        one_hot = torch.zeros(1, count, 1, num_knots, dtype=torch.float64)
        one_hot[0, sample, 0, j] = 1.0
        rows.append(offset_tail(one_hot, positions)[0, :, 0, 0])
    assert torch.linalg.matrix_rank(torch.stack(rows)) == factor


def test_tail_gives_the_decoder_spatial_context():
    """The tail's 3x3 convolution sees the neighbouring in-plane columns: a change in one column
    moves the output of its neighbours (the 1x1 decoder alone cannot)."""
    torch.manual_seed(0)
    generator = MISRGenerator(num_features=8, num_blocks=0, hidden=8).eval()
    torch.nn.init.normal_(generator.tail.weight, std=0.3)
    lr = torch.rand(1, 3, 9, 5)
    positions = torch.linspace(0, 4, 9)
    with torch.no_grad():
        before = generator(lr, positions, 2.0)
        changed = lr.clone()
        changed[:, :, 4] += 1.0
        after = generator(changed, positions, 2.0)
    moved = (after - before).abs().amax(dim=(0, 1, 3))
    assert moved[3] > 0 and moved[5] > 0 and moved[0] == 0


def test_checkpoint_from_before_the_tail_loads_unchanged(tmp_path):
    """A checkpoint whose config names no tail_knots (written before the tail) loads as the model
    it was, without a tail (so a fit cannot grow one either): outputs equal. A checkpoint that
    names tail_knots must hold the tail's weights."""
    from medsr.config import Config, config_to_dict
    from medsr.errors import MedsrError
    from medsr.nets.checkpoint import load_generator

    torch.manual_seed(0)
    old = MISRGenerator(num_features=8, num_blocks=1, hidden=8, tail_knots=0).eval()
    torch.nn.init.normal_(old.decode[-1].weight, std=0.1)
    config = config_to_dict(Config())
    config["model"] |= {"num_features": 8, "num_blocks": 1, "hidden": 8}
    del config["model"]["tail_knots"]
    torch.save({"generator": old.state_dict(), "config": config}, tmp_path / "old.pt")
    loaded, loaded_config = load_generator(tmp_path / "old.pt")
    assert loaded.tail is None and loaded_config.model.tail_knots == 0
    lr, positions = torch.rand(2, 3, 10, 6), torch.linspace(-0.5, 5.5, 19)
    with torch.no_grad():
        torch.testing.assert_close(loaded(lr, positions, 3.0), old(lr, positions, 3.0))
    config["model"]["tail_knots"] = 9
    torch.save({"generator": old.state_dict(), "config": config}, tmp_path / "new.pt")
    with pytest.raises(MedsrError, match="tail"):
        load_generator(tmp_path / "new.pt")


def _random_generator(seed=0):
    torch.manual_seed(seed)
    generator = MISRGenerator(neighbours=3, num_features=8, num_blocks=1, hidden=8)
    for parameter in generator.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    return generator


def test_a_channels_last_generator_equals_the_contiguous_one():
    """The CPU's faster layout (`Trainer`, `reconstruct`) changes no value or gradient beyond
    float32 rounding; `encode` lays a plain input out as the weights are."""
    import copy

    plain = _random_generator()
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    assert fast.head.weight.is_contiguous(memory_format=torch.channels_last)
    layouts = []
    fast.head.register_forward_pre_hook(
        lambda module, inputs: layouts.append(
            inputs[0].is_contiguous(memory_format=torch.channels_last)
        )
    )
    lr = torch.rand(2, 3, 12, 7)
    positions = torch.from_numpy(slab_positions(7, 2.5).astype(np.float32))
    outputs = [model(lr, positions, 2.5) for model in (plain, fast)]
    assert layouts == [True]
    for out in outputs:
        out.square().mean().backward()
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(plain.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_under_cpu_autocast_only_the_encoder_runs_in_bf16():
    """bf16 autocast on the CPU (`--precision bf16`, ``train.cpu_bf16``): the encoder's maps
    come back in float32 and the decoder decodes them in float32, exactly as outside autocast;
    the whole stays close to float32 (bf16 rounding of the convolutions only)."""
    generator = _random_generator()
    lr = torch.rand(2, 3, 12, 7)
    positions = torch.from_numpy(slab_positions(7, 3.0).astype(np.float32))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            encoded = generator.encode(lr, 3.0)
            inside = generator.predict_at(encoded, positions)
            whole = generator(lr, positions, 3.0)
        outside = generator.predict_at(encoded, positions)
        fp32 = generator(lr, positions, 3.0)
    assert all(t.dtype == torch.float32 for t in (encoded.left, encoded.right, encoded.tail))
    torch.testing.assert_close(inside, outside, rtol=0, atol=0)
    torch.testing.assert_close(whole, outside, rtol=0, atol=0)
    residual = fp32 - bspline_sample_last_axis(lr[:, 1:2], positions)
    difference = (whole - fp32).abs().max().item()
    assert 0 < difference < 0.02 * residual.abs().max().item()  # bf16 ran, and stayed close
