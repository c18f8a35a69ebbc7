"""Intensities: the range used to normalise, normalise and restore, the output dtype, and the grey
mean of a colour image (the one place RGB becomes grey)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medsr.io.volume import Volume, scaled_values


def restore_dtype(
    array: np.ndarray,
    dtype: np.dtype | type,
    scaling: dict[str, Any] | None = None,
    *,
    in_place: bool = False,
) -> np.ndarray:
    """Bring float results back to the input dtype.

    Integer dtypes are rounded and clipped to their range (interpolation overshoot of a cubic
    B-spline or a network must not wrap around); float dtypes are cast. An input of integers
    stored with a slope and intercept (`scaling`, ``Volume.meta["scaling"]``) is rounded and
    clipped on the grid of its stored integers and stays in world units, so that it is written
    back as the same integer type with the same scaling.

    Args:
        array: float result, any shape.
        dtype: the input's dtype.
        scaling: the input's stored type, slope and intercept (`medsr.io.volume.scaled_values`).
        in_place: the caller gives `array` up: integers of at most 4 bytes are written over its
            own memory, row by row (row i's integers end before float row i + 1 begins), and
            a view of that memory is returned, so that no second full-size buffer is allocated
            (the peak of a large output). `array` holds garbage afterwards. Only for a
            C-contiguous float32 `array` without `scaling`; otherwise a new array, as without.

    Returns:
        An array of `dtype`.
    """
    dtype = np.dtype(dtype)
    if scaling is not None:
        slope, inter = float(scaling["slope"]), float(scaling["inter"])
        stored = np.empty(array.shape, np.dtype(scaling["dtype"]))
        for row in range(array.shape[0]):  # row by row: no full-size float temporary
            stored[row] = restore_dtype((array[row] - inter) / slope, stored.dtype)
        return scaled_values(stored, scaling).astype(dtype, copy=False)
    if dtype.kind not in "iu":
        return array.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    if in_place and _can_overwrite(array, dtype):
        out = array.reshape(-1).view(dtype)[: array.size].reshape(array.shape)
    else:
        out = np.empty(array.shape, dtype=dtype)
    flat_in, flat_out = array.reshape(array.shape[0], -1), out.reshape(out.shape[0], -1)
    for row in range(flat_in.shape[0]):  # row by row: no full-size float temporary
        # the row's integers are made whole before they are stored (in place, they overlap it)
        flat_out[row] = np.clip(np.rint(flat_in[row]), info.min, info.max).astype(dtype)
    return out


def _can_overwrite(array: np.ndarray, dtype: np.dtype) -> bool:
    """Whether `restore_dtype` can write integers of `dtype` over `array`'s own memory."""
    contiguous = array.flags.c_contiguous and array.flags.writeable and array.ndim >= 1
    return contiguous and array.dtype == np.float32 and dtype.itemsize <= 4


def intensity_range(array: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple:
    """Robust (low, high) of a volume, for mapping it to about [0, 1] for the network.

    Low is 0 for non-negative data (MRI magnitudes keep their zero) and the low percentile
    otherwise; high is the high percentile. A constant volume gets a unit range.
    """
    sample = np.asarray(array)[:: max(1, array.shape[0] // 64)]  # subsample big volumes
    low = 0.0 if float(sample.min()) >= 0 else float(np.percentile(sample, percentiles[0]))
    high = float(np.percentile(sample, percentiles[1]))
    if high <= low:
        high = low + (float(np.abs(sample).max()) or 1.0)
    return low, high


def normalise_intensity(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] to [0, 1] (float32, not clipped)."""
    out = np.array(array, dtype=np.float32)  # the only copy: the rest is in place
    out -= np.float32(low)
    out /= np.float32(high - low)
    return out


def restore_intensity(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Inverse of `normalise_intensity`: back to the input's units (float32)."""
    return (np.asarray(array, dtype=np.float32) * (high - low) + low).astype(np.float32)


def grey_mean(array: np.ndarray, channels: bool = True) -> np.ndarray:
    """The grey image of a colour array: the mean of its colour channels, the last axis.

    With `channels` false the array is already grey and comes back as it is. Every place that
    turns RGB into grey (the fit, training sources, evaluation masks, figures, section alignment,
    training images) does it here, so they agree on what grey is.
    """
    return array.mean(axis=-1) if channels else array


def grey_array(volume: Volume) -> np.ndarray:
    """`volume`'s array, grey: its channels averaged (`grey_mean`) when it has more than one."""
    return grey_mean(volume.array, volume.num_channels > 1)
