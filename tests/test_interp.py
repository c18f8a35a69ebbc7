import numpy as np
import pytest
from conftest import make_affine
from scipy import ndimage

from medsr.geometry import plan_output_grid
from medsr.interp import interpolate_along_axis
from medsr.io import Volume
from medsr.upsample.baseline import upsample_baseline


def _ramp_volume(axis: int, count: int = 30) -> Volume:
    shape = [5, 6, 7]
    shape[axis] = count
    ramp = np.arange(count, dtype=np.float32) * 3.0 + 1.0
    array = np.broadcast_to(np.expand_dims(ramp, [a for a in range(3) if a != axis]), shape)
    spacing = [1.0, 1.0, 1.0]
    spacing[axis] = 4.0
    return Volume(array=np.array(array), affine=make_affine("LIA", spacing))


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("method", ["linear", "bspline"])
def test_ramp_is_reproduced(axis, method):
    volume = _ramp_volume(axis)
    grid = plan_output_grid(volume.spatial_shape, volume.affine, spacing=1.0)
    out = upsample_baseline(volume, grid, method, keep_dtype=False).array
    profile = np.moveaxis(out, axis, 0)[:, 0, 0]
    expected = grid.positions * 3.0 + 1.0
    # between the first and last slice centres linear is exact; the B-spline's mirror boundary
    # bends a ramp by an error that decays as (2 - sqrt(3))**d, d slices from an end (< 1e-5 at 9)
    margin = 0 if method == "linear" else 9
    inside = (grid.positions >= margin) & (
        grid.positions <= volume.spatial_shape[axis] - 1 - margin
    )
    assert inside.sum() > 10
    np.testing.assert_allclose(profile[inside], expected[inside], atol=1e-4)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_bspline_equals_scipy_map_coordinates(axis):
    rng = np.random.default_rng(1)
    array = rng.random((6, 7, 8))
    positions = np.linspace(-0.45, array.shape[axis] - 0.55, 23)
    out = interpolate_along_axis(array, positions, axis, "bspline")
    grids = [np.arange(n, dtype=float) for n in array.shape]
    grids[axis] = positions
    coords = np.meshgrid(*grids, indexing="ij")
    expected = ndimage.map_coordinates(array, coords, order=3, mode="mirror")
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("method", ["linear", "bspline"])
def test_constant_stays_constant_and_scale_one_is_identity(method, phantom):
    constant = phantom.with_array(np.full(phantom.array.shape, 417, np.int16))
    grid = plan_output_grid(constant.spatial_shape, constant.affine, scale=2.5)
    assert np.all(upsample_baseline(constant, grid, method).array == 417)
    grid = plan_output_grid(phantom.spatial_shape, phantom.affine, scale=1)
    np.testing.assert_array_equal(upsample_baseline(phantom, grid, method).array, phantom.array)


def test_integer_output_is_rounded_and_clipped():
    array = np.zeros((3, 3, 6), np.uint8)
    array[..., 3:] = 255  # a step: cubic B-spline overshoots above 255 and below 0
    volume = Volume(array=array, affine=np.diag([1, 1, 4, 1.0]))
    grid = plan_output_grid(volume.spatial_shape, volume.affine, scale=4)
    floating = upsample_baseline(volume, grid, "bspline", keep_dtype=False).array
    assert floating.max() > 255 and floating.min() < 0
    out = upsample_baseline(volume, grid, "bspline").array
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.clip(np.rint(floating), 0, 255))


def test_rgb_channels_are_interpolated_independently():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    volume = Volume(array=rgb, affine=np.diag([1, 1, 3, 1.0]))
    grid = plan_output_grid(volume.spatial_shape, volume.affine, scale=3)
    out = upsample_baseline(volume, grid, "linear").array
    assert out.shape == (4, 5, 18, 3) and out.dtype == np.uint8
    for channel in range(3):
        single = volume.with_array(rgb[..., channel])
        np.testing.assert_array_equal(
            out[..., channel], upsample_baseline(single, grid, "linear").array
        )
