"""Image quality metrics on numpy arrays: `(pred, target, *, data_range, mask=None) -> float`.

SSIM follows Wang et al., IEEE TIP 2004 (Gaussian window sigma 1.5, K1 = 0.01, K2 = 0.03) in as
many dimensions as the arrays have (3D SSIM for volumes); with a mask, the SSIM map and the squared
error are averaged over the masked voxels only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _check(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    if mask is None:
        return np.ones(target.shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != target.shape:
        raise ValueError(f"mask shape {mask.shape} != target shape {target.shape}")
    if not mask.any():
        raise ValueError("the mask has no voxels")
    return mask


def psnr(
    pred: np.ndarray, target: np.ndarray, *, data_range: float, mask: np.ndarray | None = None
) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    mask = _check(pred, target, mask)
    diff = pred.astype(np.float64)[mask] - target.astype(np.float64)[mask]
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def ssim(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    data_range: float,
    mask: np.ndarray | None = None,
    sigma: float = 1.5,
) -> float:
    """Structural similarity (mean of the SSIM map, over `mask` if given); 1 for identical."""
    mask = _check(pred, target, mask)
    x, y = pred.astype(np.float64), target.astype(np.float64)

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, truncate=3.5)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(np.mean(ssim_map[mask]))


def otsu_threshold(array: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximal between-class variance of the intensity histogram)."""
    hist, edges = np.histogram(array, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(hist * centres) / np.maximum(weight_low, 1)
    mean_high = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between))])


def foreground_mask(volume: np.ndarray) -> np.ndarray:
    """Foreground (head, specimen) of a grey volume: Otsu threshold, closed, holes filled.

    The side of the threshold that the volume's border does not mostly lie on is the foreground:
    dark background (MRI, CT, fluorescence) or bright background (brightfield histology). The
    largest connected component is kept, so that noise outside the object does not count.
    """
    threshold = otsu_threshold(volume)
    border = np.concatenate([np.take(volume, [0, -1], axis=a).ravel() for a in range(volume.ndim)])
    mask = volume < threshold if np.mean(border > threshold) > 0.5 else volume > threshold
    mask = ndimage.binary_closing(mask, iterations=2)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


def hfen(
    pred: np.ndarray, target: np.ndarray, *, mask: np.ndarray | None = None, sigma: float = 1.5
) -> float:
    """High-frequency error norm (Ravishankar & Bresler, IEEE TMI 2011): relative L2 error of the
    Laplacian-of-Gaussian filtered images; 0 for identical, lower is better. Edges and fine
    texture dominate it, so it separates sharp from blurred reconstructions that PSNR ranks
    alike."""
    mask = _check(pred, target, mask)
    log_pred = ndimage.gaussian_laplace(pred.astype(np.float64), sigma)
    log_target = ndimage.gaussian_laplace(target.astype(np.float64), sigma)
    norm = float(np.linalg.norm(log_target[mask]))
    return float(np.linalg.norm((log_pred - log_target)[mask]) / (norm or 1.0))


def sharpness_ratio(
    pred: np.ndarray, target: np.ndarray, *, axis: int, mask: np.ndarray | None = None
) -> float:
    """Mean absolute finite difference along `axis` of `pred` over that of `target` (inside
    `mask`): 1 is as sharp as the truth, below 1 smoother (interpolation blurs across slices)."""
    mask = _check(pred, target, mask)
    inner = np.take(mask, np.arange(mask.shape[axis] - 1), axis=axis)

    def edges(a: np.ndarray) -> float:
        return float(np.abs(np.diff(a.astype(np.float64), axis=axis))[inner].mean())

    return edges(pred) / (edges(target) or 1.0)
