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
