"""Changes of a training patch's content, the same for its input and its target, made before the
patch is degraded: the content varies, the acquisition model does not (`medsr.train.pairs`)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from medsr.config import DataConfig

#: share of batches whose content is smoothed (``DataConfig.blur_max``)
BLUR_SHARE = 1 / 3


def smooth_planes(patches: np.ndarray, sigma: float) -> np.ndarray:
    """`patches` (B, k, w, a) smoothed by a Gaussian of std `sigma` voxels along w and a, each
    neighbour plane on its own (never across planes, along p), its borders mirrored: the patch is
    not cut with a margin, so content within about 2 sigma of its edges is mirrored, not truly
    smoothed (input and target alike)."""
    return gaussian_filter(patches, (0, 0, sigma, sigma), mode="reflect").astype(np.float32)


def change_content(patches: np.ndarray, data: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """`patches` (B, k, w, a) smoothed (in `BLUR_SHARE` of the batches, up to ``data.blur_max``),
    then with a contrast (gamma, drawn log-uniformly) and a gain drawn from `data`'s ranges."""
    if data.blur_max > 0 and rng.random() < BLUR_SHARE:
        patches = smooth_planes(patches, rng.uniform(0, data.blur_max))
    gamma = float(np.exp(rng.uniform(*np.log(data.gamma_range))))
    gain = float(rng.uniform(*data.gain_range))
    return (np.sign(patches) * np.abs(patches) ** gamma * gain).astype(np.float32)
