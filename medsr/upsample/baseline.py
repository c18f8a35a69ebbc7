"""The interpolation baselines on a `Volume`: linear and cubic B-spline upsampling onto an
`OutputGrid`, and slab averaging onto a coarser one (the arithmetic is `medsr.interp`)."""

from __future__ import annotations

import numpy as np

from medsr.geometry import OutputGrid
from medsr.intensity import restore_dtype
from medsr.interp import BaselineMethod, interpolate_along_axis, slab_average_matrix
from medsr.io.volume import Volume


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
