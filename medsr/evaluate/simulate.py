"""Evaluating reconstructions against a known truth: simulate a thick-slice acquisition of a
high-resolution volume, reconstruct it with each method on the truth's own grid, and score.

Scores are computed inside a foreground mask (Otsu threshold of the truth, closed, filled; or a
mask the caller gives) with the data range of the truth inside that mask: PSNR, 3D SSIM, HFEN
(lower is better) and the through-plane sharpness ratio (1 = as sharp as the truth).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsr.degrade import SliceProfile, simulate_thick_slices, thick_slice_affine
from medsr.errors import MedsrError
from medsr.evaluate.metrics import foreground_mask, hfen, psnr, sharpness_ratio, ssim
from medsr.intensity import grey_mean
from medsr.io import Volume

SCORE_NAMES = ("psnr", "ssim", "hfen", "sharpness")


@dataclass(frozen=True)
class Acquisition:
    """A simulated thick-slice acquisition and the truth it came from (cropped to whole slabs)."""

    thick: Volume
    truth: Volume
    axis: int
    factor: float


def simulate_acquisition(
    volume: Volume,
    *,
    factor: float,
    axis: int,
    profile: SliceProfile = "boxcar",
    thickness: float | None = None,
) -> Acquisition:
    """Thicken `volume` along `axis` by `factor`; the truth keeps the slabs covered whole, so a
    reconstruction at the truth's spacing lands exactly on the truth's voxels.

    `thickness` (thin slices; default `factor`) narrows the profile: thin physical sections far
    apart, as in histology, are ``thickness=1``. Colour volumes are thickened per channel.
    """
    if not 1 < factor:
        raise MedsrError(f"--factor must be above 1, got {factor}")
    count = volume.spatial_shape[axis]
    slabs = int(count // factor)
    while slabs > 0 and abs(slabs * factor - round(slabs * factor)) > 1e-6:
        slabs -= 1  # a whole number of thin slices per covered extent
    if slabs < 4:
        raise MedsrError(f"factor {factor} leaves {slabs} slices along axis {axis}; too few")
    truth = np.take(volume.array.astype(np.float32), np.arange(round(slabs * factor)), axis=axis)
    thick = simulate_thick_slices(truth, axis, factor, profile=profile, thickness=thickness)
    return Acquisition(
        thick=Volume(
            array=thick,
            affine=thick_slice_affine(volume.affine, axis, factor),
            meta={"unit": volume.unit},
        ),
        truth=Volume(array=truth, affine=volume.affine, meta={"unit": volume.unit}),
        axis=axis,
        factor=factor,
    )


def evaluation_mask(truth: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The given mask (must match and be non-empty) or the truth's foreground; colour truths
    get the foreground of their channel mean, for every channel."""
    if mask is None and truth.ndim == 4:
        grey = foreground_mask(grey_mean(truth))
        mask = np.repeat(grey[..., None], truth.shape[3], axis=3)
    mask = foreground_mask(truth) if mask is None else np.asarray(mask) > 0
    if mask.shape != truth.shape:
        raise MedsrError(f"mask shape {mask.shape} does not match the volume {truth.shape}")
    if not mask.any():
        raise MedsrError("the evaluation mask has no voxels; give a mask with --mask")
    return mask


def robust_data_range(
    truth: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)
) -> float:
    """Data range for PSNR/SSIM from percentiles of the truth inside `mask` (default 0.5 and
    99.5), so that a few bright voxels (vessels, artefacts) do not set it; 1 if flat."""
    low, high = np.percentile(np.asarray(truth)[mask], percentiles)
    return float(high - low) or 1.0


def score(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    mask: np.ndarray,
    axis: int,
    data_range: float | None = None,
) -> dict:
    """PSNR (dB), SSIM, HFEN and sharpness ratio of `pred` against `truth` inside `mask`.

    `data_range` defaults to `robust_data_range` (0.5-99.5 percentiles of the truth inside
    `mask`): `medsr evaluate` and the benchmarks score alike, and a few bright voxels do not
    set the range (on b0 run 2 the max - min was 6.55e4, set by about 840 bright voxels)."""
    if data_range is None:
        data_range = robust_data_range(truth, mask)
    return {
        "psnr": psnr(pred, truth, data_range=data_range, mask=mask),
        "ssim": ssim(pred, truth, data_range=data_range, mask=mask),
        "hfen": hfen(pred, truth, mask=mask),
        "sharpness": sharpness_ratio(pred, truth, axis=axis, mask=mask),
    }
