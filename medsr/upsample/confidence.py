"""The confidence map of the learned reconstruction: where it guesses and where it interpolates.

For every output voxel, ``u = G_1 * ( |o1 - o2| / 2 + |misr - bspline| )``: o1 and o2 are the two
through-plane orientations' reconstructions before they are averaged (`medsr.upsample.reconstruct`;
each the mean of its self-ensemble's passes),
misr their average (the output), bspline the exact cubic B-spline on the same grid
(`medsr.interp`), and G_1 a Gaussian of sigma 1 output voxel along every axis. The first term is
where the two orientations disagree, the second where the network departs from smooth
interpolation; each ranks the error, their smoothed sum ranks it best (issue 17, measured in
docs/benchmarks.md). ``u`` is in the input's intensity units: about how far, in those units, the
value may be off; larger is less certain. It is a ranking signal, not a calibrated error bar.

Output slices whose centre lies on an input slice centre (a whole continuous index along the
thick axis, within `MEASURED_TOLERANCE`: with an odd integer factor, every factor-th slice) are
measured, not reconstructed, and hold 0. Colour inputs get one map: at each voxel the largest of
the channels' sums, then smoothed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsr.geometry import OutputGrid
from medsr.interp import interpolate_along_axis
from medsr.io.volume import Volume

#: Gaussian sigma of the map, in output voxels (every axis)
CONFIDENCE_SIGMA = 1.0

#: an output slice within this many input slices of an input slice centre is measured
MEASURED_TOLERANCE = 1e-6

#: what the map is, for its provenance record
ESTIMATOR = "gaussian(sigma 1 output voxel) of (|o1 - o2| / 2 + |misr - bspline|)"


def measured_slices(grid: OutputGrid) -> np.ndarray:
    """Indices of the output slices (along `grid.axis`) that lie on an input slice centre."""
    positions = np.asarray(grid.positions, np.float64)
    return np.flatnonzero(np.abs(positions - np.round(positions)) <= MEASURED_TOLERANCE)


def confidence_map(
    volume: Volume, grid: OutputGrid, reconstruction: np.ndarray, disagreement: np.ndarray
) -> np.ndarray:
    """The map `u` on `grid` (float32, the input's intensity units, 0 on measured slices).

    Args:
        volume: the input, (X, Y, Z) or (X, Y, Z, 3).
        grid: the output grid.
        reconstruction: the learned output on `grid`, float32 in the input's units, before any
            rounding to the input's dtype.
        disagreement: ``|o1 - o2| / 2`` of the two orientations, same shape and units.

    Returns:
        float32 array of `grid.shape` (one map for colour: the channels' largest).
    """
    raw = interpolate_along_axis(volume.array, grid.positions, grid.axis, "bspline")
    raw -= reconstruction  # in place: the B-spline buffer becomes the unsmoothed map
    np.abs(raw, out=raw)
    raw += disagreement
    if raw.ndim == 4:
        raw = raw.max(axis=3)
    ndimage.gaussian_filter(raw, CONFIDENCE_SIGMA, output=raw, mode="reflect")
    index = [slice(None)] * 3
    index[grid.axis] = measured_slices(grid)
    raw[tuple(index)] = 0.0
    return np.ascontiguousarray(raw, dtype=np.float32)


def confidence_volume(result: Volume, uncertainty: np.ndarray, record: dict) -> Volume:
    """The map as a volume on `result`'s grid, with its own provenance record (what it is, its
    unit, sigma, the estimator) and header description."""
    meta = {k: v for k, v in result.meta.items() if k not in ("scaling", "confidence")}
    details = {
        "what": "confidence map of the misr output (larger: less certain)",
        "estimator": ESTIMATOR,
        "sigma_voxels": CONFIDENCE_SIGMA,
        "value_unit": "the input's intensity units",
        "measured_slices": "output slices on an input slice centre (within 1e-6) hold 0",
        "colour": "the largest channel's sum, then smoothed",
    }
    meta["provenance"] = {**record, "output": "confidence", **details}
    meta["description"] = f"medsr confidence {record['method']} x{record['factor']:.3g} s1"
    return Volume(uncertainty, result.affine, meta)
