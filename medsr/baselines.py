"""Linear and cubic B-spline interpolation along the thick axis: the reference methods.

Both interpolate only along the thick axis, at the output slice positions of an `OutputGrid`,
so they return exactly the grid the learned method returns. The cubic B-spline is the
third-order spline of scipy.ndimage (prefilter + cubic B-spline basis, mirror boundary), which
is what full 3D `scipy.ndimage.map_coordinates(order=3)` gives at integer in-plane positions,
computed separably: one 1D prefilter and four taps per output slice.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from medsr.geometry import OutputGrid
from medsr.io import Volume
from medsr.transforms import restore_dtype

BaselineMethod = Literal["linear", "bspline"]


def _mirror(index: np.ndarray, count: int) -> np.ndarray:
    """Reflect indices about the first and last sample centres (scipy's 'mirror' mode)."""
    if count == 1:
        return np.zeros_like(index)
    period = 2 * (count - 1)
    index = np.mod(index, period)
    return np.where(index >= count, period - index, index)


def interpolation_taps(
    positions: np.ndarray, count: int, method: BaselineMethod
) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights for each output position.

    Args:
        positions: continuous input indices, shape (M,).
        count: number of input samples along the axis.
        method: ``"linear"`` (2 taps, clamped at the end centres) or ``"bspline"`` (4 taps on the
            prefiltered coefficients, mirrored).

    Returns:
        (indices, weights), both shape (M, taps).
    """
    if method == "linear":
        clamped = np.clip(positions, 0, count - 1)
        lower = np.minimum(np.floor(clamped).astype(np.int64), max(count - 2, 0))
        frac = clamped - lower
        upper = np.minimum(lower + 1, count - 1)
        return np.stack([lower, upper], 1), np.stack([1 - frac, frac], 1)
    if method == "bspline":
        base = np.floor(positions).astype(np.int64)
        t = positions - base
        weights = (
            np.stack(
                [(1 - t) ** 3, 4 - 6 * t**2 + 3 * t**3, 1 + 3 * t + 3 * t**2 - 3 * t**3, t**3], 1
            )
            / 6
        )
        indices = _mirror(base[:, None] + np.arange(-1, 3)[None, :], count)
        return indices, weights
    raise ValueError(f"unknown interpolation method {method!r}; use 'linear' or 'bspline'")


def interpolate_along_axis(
    array: np.ndarray, positions: np.ndarray, axis: int, method: BaselineMethod
) -> np.ndarray:
    """Sample `array` at continuous indices `positions` along `axis` (float32 result).

    Memory: the result, plus one float64 copy of the input for the B-spline coefficients.
    """
    count = array.shape[axis]
    if method == "bspline" and count > 1:
        samples = ndimage.spline_filter1d(
            array, order=3, axis=axis, mode="mirror", output=np.float64
        )
    else:
        samples = array
    samples = np.moveaxis(samples, axis, 0)
    indices, weights = interpolation_taps(np.asarray(positions, np.float64), count, method)
    out = np.empty((len(positions), *samples.shape[1:]), dtype=np.float32)
    for j in range(len(positions)):
        plane = weights[j, 0] * samples[indices[j, 0]]
        for tap in range(1, indices.shape[1]):
            plane += weights[j, tap] * samples[indices[j, tap]]
        out[j] = plane
    return np.moveaxis(out, 0, axis)


def interpolation_matrix(
    count: int, positions: np.ndarray, method: BaselineMethod = "bspline"
) -> np.ndarray:
    """(M, count) matrix applying `interpolate_along_axis` to `count` samples.

    Interpolation is linear in the samples, so interpolating the identity gives the matrix;
    networks use it to apply the exact baseline to tensors.
    """
    return interpolate_along_axis(np.eye(count), np.asarray(positions, np.float64), 0, method)


def slab_average_matrix(count: int, positions: np.ndarray) -> np.ndarray:
    """(M, count) weights that integrate the input's slabs over each coarser output slab.

    Input slab `i` spans ``i - 0.5 .. i + 0.5``; output slab `j` spans its centre plus or minus
    half the output step (all in input-slice units). Each weight is the overlap length over the
    output slab's length inside the input's extent: an anti-aliased (box-integrated) resampling,
    not a decimation.
    """
    positions = np.asarray(positions, np.float64)
    step = float(positions[1] - positions[0]) if len(positions) > 1 else float(count)
    lower = np.clip(positions - step / 2, -0.5, count - 0.5)[:, None]
    upper = np.clip(positions + step / 2, -0.5, count - 0.5)[:, None]
    faces = np.arange(count) - 0.5
    overlap = np.clip(np.minimum(upper, faces + 1) - np.maximum(lower, faces), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def average_slabs(volume: Volume, grid: OutputGrid, *, keep_dtype: bool = True) -> Volume:
    """`volume` resampled onto a grid coarser than its own by integrating over each slab."""
    weights = slab_average_matrix(volume.spatial_shape[grid.axis], grid.positions)
    moved = np.moveaxis(np.asarray(volume.array, np.float32), grid.axis, 0)
    result = np.moveaxis(np.tensordot(weights.astype(np.float32), moved, axes=(1, 0)), 0, grid.axis)
    if keep_dtype:
        result = restore_dtype(result, volume.array.dtype, volume.meta.get("scaling"))
    return volume.with_array(np.ascontiguousarray(result), grid.affine)


def upsample_baseline(
    volume: Volume, grid: OutputGrid, method: BaselineMethod, *, keep_dtype: bool = True
) -> Volume:
    """Interpolate `volume` onto `grid` with a baseline method.

    Args:
        volume: input volume, (X, Y, Z) or (X, Y, Z, 3).
        grid: output grid from `medsr.geometry.plan_output_grid`.
        method: ``"linear"`` or ``"bspline"``.
        keep_dtype: return the input dtype (integers rounded and clipped) instead of float32.

    Returns:
        The upsampled `Volume` on `grid.affine`, intensities in the input's units.
    """
    result = interpolate_along_axis(volume.array, grid.positions, grid.axis, method)
    if keep_dtype:
        result = restore_dtype(result, volume.array.dtype, volume.meta.get("scaling"))
    return volume.with_array(result, grid.affine)
