"""Pure intensity transforms: normalise for a network, restore to the input's units and dtype."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

SliceProfile = Literal["boxcar", "gaussian", "sinc"]
#: every slice profile the acquisition model knows (``--slice-profile``, ``data.profiles``)
SLICE_PROFILES: tuple[str, ...] = get_args(SliceProfile)
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: time-bandwidth product of the truncated sinc RF pulse of the ``"sinc"`` profile
SINC_TIME_BANDWIDTH = 4.0


def sinc_profile_integral(z: np.ndarray, thickness: float) -> np.ndarray:
    """Integral from the slice centre to `z` of the ``"sinc"`` slice profile (unnormalised).

    A 2D multi-slice excitation by a sinc RF pulse cut after `SINC_TIME_BANDWIDTH` zero crossings
    has (small-tip approximation) the ideal slab of width `thickness` convolved with
    ``c sinc(c z)``, ``c = SINC_TIME_BANDWIDTH / thickness``: ripples inside the slice, negative
    and positive side lobes outside it that reach into the neighbouring slices. The profile is
    ``(Si(pi c (z + T/2)) - Si(pi c (z - T/2))) / pi``; its integral uses
    ``int Si(a x) dx = x Si(a x) + cos(a x) / a``.
    """
    from scipy.special import sici

    a = np.pi * SINC_TIME_BANDWIDTH / thickness

    def primitive(x):
        return x * sici(a * x)[0] + (np.cos(a * x) - 1.0) / a

    half = thickness / 2
    return (primitive(z + half) - primitive(half) - primitive(z - half) + primitive(-half)) / np.pi


def slice_profile_weights(
    count: int, factor: float, *, thickness: float | None = None, profile: SliceProfile = "boxcar"
) -> np.ndarray:
    """Weights that turn `count` thin slices into thick ones (one row per thick slice).

    Thick slice `i` is centred where the slab convention puts it: thin index
    ``(i + 0.5) * factor - 0.5``. Each thin slice contributes the integral of the slice profile
    over its own extent, so rows sum to 1 and the mean intensity is preserved.

    Args:
        count: number of thin (high-resolution) slices.
        factor: thick slice spacing / thin spacing (> 1, need not be an integer).
        thickness: slice thickness in thin-slice units: the boxcar width, the Gaussian FWHM or
            the nominal width of the sinc profile. Default `factor` (contiguous slices); less
            than `factor` leaves a gap.
        profile: ``"boxcar"``, ``"gaussian"`` or ``"sinc"`` (a 2D multi-slice profile with
            side lobes, `sinc_profile_integral`, cut at one `thickness` from the centre).

    Returns:
        Array of shape (floor(count / factor), count).
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    thickness = factor if thickness is None else float(thickness)
    if thickness <= 0:
        raise ValueError(f"slice thickness must be positive, got {thickness}")
    thick_count = int(np.floor(count / factor + 1e-9))
    centres = (np.arange(thick_count) + 0.5) * factor - 0.5
    lower = np.arange(count) - 0.5  # thin slab faces
    upper = lower + 1.0
    if profile == "boxcar":
        start, stop = centres[:, None] - thickness / 2, centres[:, None] + thickness / 2
        weights = np.clip(np.minimum(upper, stop) - np.maximum(lower, start), 0, None)
    elif profile == "gaussian":
        from scipy.special import ndtr

        sigma = thickness / _FWHM_PER_SIGMA
        weights = ndtr((upper - centres[:, None]) / sigma) - ndtr(
            (lower - centres[:, None]) / sigma
        )
    elif profile == "sinc":
        start, stop = centres[:, None] - thickness, centres[:, None] + thickness
        low = np.clip(lower, start, stop) - centres[:, None]
        high = np.clip(upper, start, stop) - centres[:, None]
        weights = sinc_profile_integral(high, thickness) - sinc_profile_integral(low, thickness)
    else:
        raise ValueError(f"unknown slice profile {profile!r}; use 'boxcar', 'gaussian' or 'sinc'")
    return weights / weights.sum(axis=1, keepdims=True)


def simulate_thick_slices(
    array: np.ndarray,
    axis: int,
    factor: float,
    *,
    thickness: float | None = None,
    profile: SliceProfile = "boxcar",
) -> np.ndarray:
    """Simulate a thick-slice acquisition of a high-resolution array along `axis`.

    Args:
        array: high-resolution data, (X, Y, Z) or (X, Y, Z, C).
        axis: the axis that becomes thick.
        factor: thick spacing / high-resolution spacing.
        thickness: profile width (boxcar) or FWHM (Gaussian) in high-resolution slices.
        profile: slice profile.

    Returns:
        float32 array with ``floor(n / factor)`` slices along `axis`; the thick volume's affine
        is the input's with column `axis` scaled by `factor` and the origin moved to the first
        thick-slice centre (``(factor - 1) / 2`` thin slices in).
    """
    weights = slice_profile_weights(array.shape[axis], factor, thickness=thickness, profile=profile)
    moved = np.moveaxis(np.asarray(array, dtype=np.float32), axis, 0)
    thick = np.tensordot(weights.astype(np.float32), moved, axes=(1, 0))
    return np.moveaxis(thick, 0, axis)


def thick_slice_affine(affine: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Affine of the output of `simulate_thick_slices` (same world extent per slab)."""
    resample = np.eye(4)
    resample[axis, axis] = factor
    resample[axis, 3] = (factor - 1) / 2
    return np.asarray(affine, dtype=np.float64) @ resample


def thicken_last_axis(
    thin: np.ndarray, factor: float, thickness: float, profile: str
) -> np.ndarray:
    """Thick slices of a thin patch along its last axis: `simulate_thick_slices`, the one
    acquisition model of evaluation, the MONAI transforms and training."""
    return simulate_thick_slices(thin, thin.ndim - 1, factor, thickness=thickness, profile=profile)


def thin_slices(slices: int, factor: float, length: int) -> int:
    """Thin slices a patch of `slices` thick slices needs (whole slabs, within `length`)."""
    return min(int(np.ceil(slices * factor - 1e-6)), length)


def thickened_noise_share(count: int, factor: float, thickness: float, profile: str) -> np.ndarray:
    """The share of white noise's variance that each thick slice of `count` thin slices keeps
    (its row's sum of squared `slice_profile_weights`: 1 / thickness for a boxcar of whole
    slices; more at the ends, where a profile is cut by the patch's edge). A real thick-slice
    scan carries its voxels' noise in full; slices thickened from its in-plane slices keep this
    share of it."""
    weights = slice_profile_weights(count, factor, thickness=thickness, profile=profile)
    return np.sum(weights * weights, axis=1)


def add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise of std `sigma` (MRI magnitude noise)."""
    real = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.sqrt(real * real + imaginary * imaginary).astype(np.float32)
