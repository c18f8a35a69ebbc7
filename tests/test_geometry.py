import numpy as np
import pytest
from conftest import make_affine

from medsr.errors import MedsrError
from medsr.geometry import anisotropy, orientation_codes, plan_output_grid, thick_axis, world_extent

ORIENTATIONS = ["RAS", "LPS", "LIA", "oblique"]


def _spacing_with_thick(axis: int, thick: float = 3.6, fine: float = 0.5) -> list[float]:
    spacing = [fine, fine * 1.1, fine * 0.9]
    spacing[axis] = thick
    return spacing


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_thick_axis_found_from_header(orientation, axis):
    affine = make_affine(orientation, _spacing_with_thick(axis))
    assert thick_axis(affine) == axis
    in_plane = [s for i, s in enumerate(_spacing_with_thick(axis)) if i != axis]
    assert anisotropy(affine) == pytest.approx(3.6 / min(in_plane))


def test_ties_go_to_the_last_axis():
    assert thick_axis(np.diag([1.0, 1.0, 1.0, 1.0])) == 2
    assert thick_axis(make_affine("LIA", (3.0, 3.0, 1.0))) == 1
    assert anisotropy(np.diag([2.0, 2.0, 2.0, 1.0])) == pytest.approx(1.0)


def test_orientation_codes_follow_array_axes():
    assert orientation_codes(make_affine("LIA", (1, 1, 1))) == "LIA"


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_output_covers_input_extent(orientation, axis):
    shape = [9, 10, 11]
    affine = make_affine(orientation, _spacing_with_thick(axis))
    grid = plan_output_grid(shape, affine, spacing=0.5)
    count = round(shape[axis] * 3.6 / 0.5)
    assert grid.shape[axis] == count
    assert [n for i, n in enumerate(grid.shape) if i != axis] == [
        n for i, n in enumerate(shape) if i != axis
    ]
    # spacing along the thick axis is exact, in-plane columns and direction unchanged
    out_spacing = np.linalg.norm(grid.affine[:3, :3], axis=0)
    assert out_spacing[axis] == pytest.approx(0.5)
    for other in {0, 1, 2} - {axis}:
        np.testing.assert_allclose(grid.affine[:3, other], affine[:3, other])
    np.testing.assert_allclose(grid.affine[:3, axis] / 0.5, affine[:3, axis] / 3.6, atol=1e-12)
    # slab faces: the output's outer faces lie within half an output voxel of the input's
    in_start, in_end = world_extent(shape, affine, axis)
    out_start, out_end = world_extent(grid.shape, grid.affine, axis)
    assert np.linalg.norm(out_start - in_start) <= 0.25 + 1e-9
    assert np.linalg.norm(out_end - in_end) <= 0.25 + 1e-9
    np.testing.assert_allclose(out_start - in_start, in_end - out_end, atol=1e-9)  # centred


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_thin_slices_divide_each_slab(orientation, axis):
    """Integer factor 4: slab i holds output slices 4i..4i+3 at i - 3/8, -1/8, +1/8, +3/8."""
    shape = [6, 7, 8]
    affine = make_affine(orientation, _spacing_with_thick(axis, thick=2.0, fine=0.5))
    grid = plan_output_grid(shape, affine, scale=4)
    expected = np.repeat(np.arange(shape[axis]), 4) + np.tile(
        [-0.375, -0.125, 0.125, 0.375], shape[axis]
    )
    np.testing.assert_allclose(grid.positions, expected, atol=1e-12)
    for j in (0, 5, grid.shape[axis] - 1):
        out_index = np.zeros(4)
        out_index[axis], out_index[3] = j, 1
        in_index = np.zeros(4)
        in_index[axis], in_index[3] = expected[j], 1
        np.testing.assert_allclose(grid.affine @ out_index, affine @ in_index, atol=1e-9)


def test_non_integer_ratio_keeps_exact_spacing():
    affine = make_affine("RAS", (0.5, 0.5, 3.6))
    grid = plan_output_grid((4, 4, 25), affine)  # default: finest in-plane spacing
    assert grid.spacing == pytest.approx(0.5)
    assert grid.shape[2] == 180  # 25 * 3.6 / 0.5 = 180 exactly
    grid = plan_output_grid((4, 4, 24), make_affine("RAS", (0.5, 0.5, 3.3)))
    assert grid.shape[2] == round(24 * 3.3 / 0.5)  # 158.4 -> 158
    assert grid.step == pytest.approx(0.5 / 3.3)


def test_scale_one_is_identity():
    affine = make_affine("LIA", (1, 1, 3))
    grid = plan_output_grid((5, 6, 7), affine, scale=1)
    np.testing.assert_allclose(grid.positions, np.arange(7), atol=1e-12)
    np.testing.assert_allclose(grid.affine, affine, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{"spacing": -1.0}, {"scale": 0.0}, {"spacing": 1, "scale": 2}])
def test_bad_targets_are_refused(kwargs):
    with pytest.raises(MedsrError):
        plan_output_grid((4, 4, 4), np.diag([1, 1, 3, 1.0]), **kwargs)
