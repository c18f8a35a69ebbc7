"""Label maps (segmentations drawn on thick slices) onto the thin-slice grid.

Shape-based interpolation (Raya & Udupa, IEEE TMI 1990; Herman et al. 1992): each label becomes
the signed distance to its boundary within each thick slice (in-plane, in physical units), the
distances are interpolated linearly along the thick axis onto the output grid, and every output
voxel takes the label whose distance is largest (inside the farthest). Shapes morph smoothly from
slice to slice instead of jumping half-way as nearest-neighbour does; only label values present
in the input can appear, and the output keeps the input's integer type.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsr.errors import MedsrError
from medsr.geometry import OutputGrid
from medsr.interp import interpolate_along_axis, slab_average_matrix
from medsr.io import Volume

#: more distinct values than this is not a label map (an image given as --labels?)
MAX_LABELS = 512


def signed_distance_in_slices(mask: np.ndarray, axis: int, spacing: np.ndarray) -> np.ndarray:
    """Signed in-plane distance (positive inside) to the boundary of `mask`, slice by slice
    along `axis`, in physical units.

    A slice without the label next to one with it gets minus the absolute distance of that
    neighbour, so the label ends half-way between the two (as a drawn contour would be read);
    slices farther from the label get a large negative constant. A slice filled with the label
    (the background of an empty slice) is the mirror case: plus the absolute distance of a
    partly filled neighbour, else the large positive constant. A full or empty plane has no
    boundary, and a distance transform of it would measure to a point outside the array: the
    result would depend on where the structure lies in the slice.
    """
    in_plane = [float(s) for a, s in enumerate(spacing) if a != axis]
    far = float(
        np.hypot(*[n * s for n, s in zip(np.delete(mask.shape, axis), in_plane, strict=True)])
    )
    moved = np.moveaxis(mask, axis, 0)
    out = np.full(moved.shape, -far, np.float32)
    flat = moved.reshape(len(moved), -1)
    full = flat.all(axis=1)
    partial = flat.any(axis=1) & ~full
    out[full] = far
    for index in np.flatnonzero(partial):
        plane = moved[index]
        inside = ndimage.distance_transform_edt(plane, sampling=in_plane)
        outside = ndimage.distance_transform_edt(~plane, sampling=in_plane)
        out[index] = inside - outside
    for index in np.flatnonzero(~partial):
        neighbours = [i for i in (index - 1, index + 1) if 0 <= i < len(out) and partial[i]]
        if neighbours and full[index]:
            out[index] = np.abs(np.min([out[i] for i in neighbours], axis=0))
        elif neighbours:
            out[index] = -np.abs(np.max([out[i] for i in neighbours], axis=0))
    return np.moveaxis(out, 0, axis)


def _label_values(array: np.ndarray) -> np.ndarray:
    """The label values of a label map, ascending.

    Raises:
        MedsrError: not an integer map, or too many distinct values for a label map.
    """
    if array.ndim != 3 or array.dtype.kind not in "iub":
        raise MedsrError(f"a label map must hold integers, got {array.dtype} {array.shape}")
    values = np.unique(array)
    if len(values) > MAX_LABELS:
        raise MedsrError(f"{len(values)} distinct values: not a label map (at most {MAX_LABELS})")
    return values


def upsample_labels(volume: Volume, grid: OutputGrid) -> Volume:
    """A label map on `grid` by shape-based interpolation along the thick axis.

    Args:
        volume: integer label map (X, Y, Z) on the thick grid.
        grid: output grid (the image's, from `medsr.geometry.plan_output_grid`).

    Returns:
        The label map on `grid.affine`, in the input's dtype.

    Raises:
        MedsrError: not an integer map, or too many distinct values for a label map.
    """
    array = volume.array
    values = _label_values(array)
    best = np.full(grid.shape, -np.inf, np.float32)
    out = np.full(grid.shape, values[0], array.dtype)
    for value in values:
        distance = signed_distance_in_slices(array == value, grid.axis, volume.spacing)
        smooth = interpolate_along_axis(distance, grid.positions, grid.axis, "linear")
        better = smooth > best
        out[better] = value
        best[better] = smooth[better]
    return volume.with_array(out, grid.affine)


def majority_labels(volume: Volume, grid: OutputGrid) -> Volume:
    """A label map on a grid coarser than its own (``--allow-coarser``): each output voxel takes
    the label that covers most of its slab, never an average of label IDs.

    The share of each label is its overlap with the output slab (the weights of the image's slab
    average, `slab_average_matrix`). A tie goes to the lowest label value (the background 0
    before any structure), so the result does not depend on the order of the input slices.

    Returns:
        The label map on `grid.affine`, in the input's dtype.
    """
    array = volume.array
    values = _label_values(array)
    weights = slab_average_matrix(volume.spatial_shape[grid.axis], grid.positions)
    moved = np.moveaxis(array, grid.axis, 0)
    best = np.full((len(weights), *moved.shape[1:]), -np.inf)
    out = np.full(best.shape, values[0], array.dtype)
    for value in values:  # ascending: a later label must cover strictly more to win
        share = np.tensordot(weights, moved == value, axes=(1, 0))
        better = share > best + 1e-9
        out[better] = value
        best[better] = share[better]
    return volume.with_array(np.ascontiguousarray(np.moveaxis(out, 0, grid.axis)), grid.affine)


def nearest_labels(volume: Volume, grid: OutputGrid) -> Volume:
    """Nearest-neighbour resampling of a label map along the thick axis (the reference)."""
    count = volume.spatial_shape[grid.axis]
    index = np.clip(np.floor(grid.positions + 0.5).astype(int), 0, count - 1)
    return volume.with_array(np.take(volume.array, index, axis=grid.axis), grid.affine)


def dice(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice overlap of one label (1 when both are empty)."""
    a, b = pred == label, truth == label
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
