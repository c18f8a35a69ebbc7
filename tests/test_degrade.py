import numpy as np
import pytest
from conftest import make_affine, phantom_array

from medsr.degrade import simulate_thick_slices, slice_profile_weights, thick_slice_affine
from medsr.geometry import plan_output_grid
from medsr.intensity import restore_dtype


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_boxcar_equals_block_average_for_integer_factors(axis, factor):
    array = phantom_array((12, 13, 14))
    thick = simulate_thick_slices(array, axis, factor)
    count = array.shape[axis] // factor
    blocks = np.take(array, np.arange(count * factor), axis=axis)
    shape = list(blocks.shape)
    shape[axis : axis + 1] = [count, factor]
    np.testing.assert_allclose(thick, blocks.reshape(shape).mean(axis=axis + 1), atol=1e-4)


@pytest.mark.parametrize("profile", ["boxcar", "gaussian", "sinc"])
@pytest.mark.parametrize("factor", [2.5, 3.6, 5.0])
def test_profiles_preserve_mean_intensity(profile, factor):
    weights = slice_profile_weights(40, factor, profile=profile)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    array = np.full((3, 3, 40), 7.5, np.float32)
    np.testing.assert_allclose(
        simulate_thick_slices(array, 2, factor, profile=profile), 7.5, rtol=1e-6
    )
    # profile centred on the slab; weights sit at thin-slice centres, so the discrete centroid
    # differs from the continuous one by a fraction of a partially covered thin slice
    centres = weights @ np.arange(40)
    expected = (np.arange(len(centres)) + 0.5) * factor - 0.5
    inner = slice(2, -2)  # the Gaussian tails are cut at the volume's ends
    np.testing.assert_allclose(centres[inner], expected[inner], atol=0.1)


@pytest.mark.parametrize("factor", [4.0, 5.5])
def test_sinc_profile_is_the_truncated_sinc_pulse_with_side_lobes(factor):
    from scipy.integrate import quad
    from scipy.special import sici

    from medsr.degrade import SINC_TIME_BANDWIDTH

    count, thickness = 40, factor
    weights = slice_profile_weights(count, factor, profile="sinc")
    c = SINC_TIME_BANDWIDTH / thickness

    def profile(z):  # ideal slab convolved with c sinc(c z), written out independently
        return sici(np.pi * c * (z + thickness / 2))[0] - sici(np.pi * c * (z - thickness / 2))[0]

    row = 3
    centre = (row + 0.5) * factor - 0.5
    expected = []
    for j in range(count):
        low, high = np.clip([j - 0.5 - centre, j + 0.5 - centre], -thickness, thickness)
        expected.append(quad(profile, low, high)[0] if high > low else 0.0)
    expected = np.asarray(expected) / np.sum(expected)
    np.testing.assert_allclose(weights[row], expected, atol=1e-7)
    distance = np.abs(np.arange(count) - centre)
    outside = weights[row][(distance - 0.5 >= thickness / 2 - 1e-9) & (distance < thickness)]
    assert np.any(outside < -1e-3) and np.any(outside > 1e-3)  # side lobes into the neighbours
    assert np.all(weights[row][distance > thickness + 0.5] == 0)  # cut at one thickness


def test_sinc_profile_is_refused_by_name_only():
    with pytest.raises(ValueError, match="'sinc'"):
        slice_profile_weights(10, 2, profile="sync")


def test_gap_narrows_the_boxcar():
    weights = slice_profile_weights(12, 4, thickness=2)  # 2-slice boxcar, 2-slice gap
    np.testing.assert_allclose(weights[0], [0, 0.5, 0.5, 0] + [0] * 8, atol=1e-12)


def test_thick_affine_matches_the_slab_convention():
    affine = make_affine("LIA", (1.0, 1.0, 1.0))
    thick = thick_slice_affine(affine, 1, 4)
    # the thick volume's output grid at the thin spacing lands on the thin slices
    grid = plan_output_grid((5, 6, 7), thick, spacing=1.0, axis=1)
    np.testing.assert_allclose(grid.affine, affine, atol=1e-12)


def test_restore_dtype_rounds_and_clips():
    out = restore_dtype(np.array([[-3.4, 2.5, 70000.0]]), np.uint16)
    assert out.dtype == np.uint16 and out.tolist() == [[0, 2, 65535]]
    assert restore_dtype(np.array([1.5]), np.float32).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.uint16])
def test_restore_dtype_in_place_gives_the_same_integers_in_the_floats_own_memory(dtype):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    floats = rng.uniform(info.min - 50.0, min(info.max, 2e6) + 50.0, (7, 5, 6)).astype(np.float32)
    expected = restore_dtype(floats.copy(), dtype)
    given = floats.copy()
    out = restore_dtype(given, dtype, in_place=True)
    assert out.dtype == dtype and out.shape == floats.shape
    np.testing.assert_array_equal(out, expected)
    assert np.shares_memory(out, given)  # no second buffer
    # not overwritable (a strided view, float64): a new array, the input left as it was
    view = floats[:, ::2]
    out = restore_dtype(view, dtype, in_place=True)
    np.testing.assert_array_equal(out, expected[:, ::2])
    assert not np.shares_memory(out, floats)
