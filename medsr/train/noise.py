"""The noise model of training pairs and of the per-scan fit.

Training draws Rician noise on the thin truth of a share of its batches (`draw_noise`). The
per-scan fit measures the scan's noise on its in-plane slices (`scan_noise`) and puts it back on
the slices it thickens from them (`restore_thick_noise`), so that the fit's inputs are as noisy
as the thick slices it will upsample (`medsr.config.DataConfig.input_noise`)."""

from __future__ import annotations

import numpy as np

from medsr.config import DataConfig
from medsr.degrade import add_rician_noise, thicken_last_axis, thickened_noise_share
from medsr.train.patches import foreground_voxels

#: median absolute deviation / std of a Gaussian
_MAD_PER_STD = 0.6744897501960817
#: std of magnitude (Rayleigh) noise / the std of the complex Gaussian noise behind it: MRI's
#: background, where the signal is zero
_RAYLEIGH_STD_PER_SIGMA = float(np.sqrt(2.0 - np.pi / 2.0))


def scan_noise(planes: np.ndarray) -> float:
    """The std of the voxel noise of a scan's in-plane slices `planes` (planes, w, a), in their
    units (the fit's: normalised).

    The finest diagonal detail, ``(a - b - c + d) / 2`` of each 2 x 2 block, has the std of white
    noise and cancels smooth signal and straight edges; its median absolute value gives that std
    (Donoho's wavelet MAD). Over the foreground (`medsr.train.patches.foreground_voxels`) it
    also sees the anatomy's finest texture; over the background it sees noise alone, which in a
    magnitude MRI is Rayleigh-distributed (its std 0.655 of the Gaussian's). The smaller of the
    two is taken: a background-corrected estimate, never more than the foreground shows. A
    scan without background, or with a zeroed one (noise-free, skull-stripped), gives 0.
    """
    detail = planes[:, :-1, :-1] - planes[:, 1:, :-1] - planes[:, :-1, 1:] + planes[:, 1:, 1:]
    inside = np.zeros(planes.size, bool)
    inside[foreground_voxels(planes)] = True
    inside = inside.reshape(planes.shape)[:, :-1, :-1]
    if inside.all() or not inside.any():
        return 0.0
    spread = [
        float(np.median(np.abs(detail[part]))) / 2 / _MAD_PER_STD for part in (inside, ~inside)
    ]
    return min(spread[0], spread[1] / _RAYLEIGH_STD_PER_SIGMA)


def restore_thick_noise(
    lr: np.ndarray, sigma: float, acquisition: tuple, rng: np.random.Generator
) -> np.ndarray:
    """`lr` (thickened from slices whose voxel noise has std `sigma`) with Gaussian noise of the
    variance thickening removed: its voxels then carry `sigma` in full, as a real thick slice's
    do. `acquisition`: (thin slices, factor, thickness, profile) of the thickening."""
    kept = thickened_noise_share(*acquisition)  # per thick slice (the last axis)
    if kept.shape != (lr.shape[-1],):
        raise ValueError(f"{len(kept)} thick slices in {acquisition}, {lr.shape[-1]} in lr")
    extra = sigma * np.sqrt(np.clip(1.0 - kept, 0.0, None))
    return (lr + rng.normal(0.0, 1.0, lr.shape) * extra).astype(np.float32)


def thicken_like_scan(
    thin: np.ndarray,
    factor: float,
    thickness: float,
    profile: str,
    sigma: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """`thin` made thick along its last axis (`medsr.degrade.thicken_last_axis`), with the scan's
    voxel noise `sigma` put back (`restore_thick_noise`; 0: none): every training pair is
    thickened so (sigma 0 outside the per-scan fit), and the fit's guard slices."""
    lr = thicken_last_axis(thin, factor, thickness, profile)
    if sigma > 0:
        lr = restore_thick_noise(lr, sigma, (thin.shape[-1], factor, thickness, profile), rng)
    return lr


def draw_noise(
    patches: np.ndarray, data: DataConfig, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """A training batch's noise, drawn as `data` says.

    In 2 of 3 batches (with ``data.noise_max``) Rician noise goes on the thin truth before
    thickening: thick slices average it down (a thick acquisition has the higher SNR), and the
    target keeps the noise floor it would have. In ``data.thick_noise_share`` of those the thick
    input carries it in full, as a scan's thick voxels carry its voxel noise (the per-scan fit's
    model). The fit's own ``data.input_noise`` is put back in every batch.

    Args:
        patches: the batch's thin truth (..., thin slices), normalised.
        data: the data config (``noise_max``, ``thick_noise_share``, ``input_noise``).
        rng: the batch's random generator.

    Returns:
        (the thin patches, noisy or not; the noise std to put back on their thick input,
        `thicken_like_scan`'s `sigma`).
    """
    input_noise = data.input_noise
    if data.noise_max > 0 and rng.random() < 2 / 3:
        level = rng.uniform(0, data.noise_max)
        patches = add_rician_noise(patches, level, rng)
        if data.thick_noise_share > 0 and rng.random() < data.thick_noise_share:
            input_noise = max(input_noise, level)
    return patches, input_noise
