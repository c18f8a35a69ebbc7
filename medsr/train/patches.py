"""Where training patches start: uniformly beside held-out voxels, or weighted by foreground.

A patch of a plane source (axes p, w, a) is given by its centre plane along p and its starts
along w and a. Voxels can be held out in two ways: a validation block at the end of every axis
(`medsr.train.pairs.held_out_block`) and a slab of planes along p (`PlaneSlab`: the per-scan
fit's guard planes, `medsr.upsample.adapt`). No training patch touches either, as a target or
as a neighbour.

With foreground sampling, most patches are centred on a voxel drawn uniformly from the source's
foreground (`foreground_voxels`: an Otsu threshold, computed once per source), so that background
and empty glass, which dominate uniform patches of many scans, do not take most of a short fit; a
share `BACKGROUND_SHARE` of the patches stays uniform, so the background is still seen.
"""

from __future__ import annotations

import numpy as np

#: share of the patches drawn uniformly when foreground sampling is on
BACKGROUND_SHARE = 0.1

#: planes [start, stop) along p that no training patch touches
PlaneSlab = tuple[int, int]

Starts = tuple[np.ndarray, np.ndarray, np.ndarray]


def foreground_voxels(array: np.ndarray) -> np.ndarray:
    """Flat indices of the foreground voxels of `array` (all voxels if it has none): the side of
    its Otsu threshold that the border does not mostly lie on (dark background for MRI, CT and
    fluorescence, bright for brightfield histology), as `medsr.evaluate.metrics.foreground_mask`
    decides it, without its closing and component analysis (seconds on a 256 x 256 x 60 scan)."""
    from medsr.evaluate.metrics import otsu_threshold

    threshold = otsu_threshold(array)
    border = np.concatenate([np.take(array, [0, -1], axis=a).ravel() for a in range(array.ndim)])
    dark = np.mean(border > threshold) > 0.5
    index = np.flatnonzero(array < threshold if dark else array > threshold)
    return index if index.size else np.arange(array.size)


def outside(starts: Starts, lows: np.ndarray | None, slab: PlaneSlab | None, reach) -> np.ndarray:
    """Which patches touch neither the validation block (starts from `lows` on along all three
    axes reach into it) nor the slab (planes centre - reach[0] .. centre + reach[1])."""
    ok = np.ones(len(starts[0]), bool)
    if lows is not None:
        ok &= np.any([s < low for s, low in zip(starts, lows, strict=True)], axis=0)
    if slab is not None:
        ok &= (starts[0] + reach[1] < slab[0]) | (starts[0] - reach[0] >= slab[1])
    return ok


def uniform_starts(
    spans: np.ndarray,
    lows: np.ndarray | None,
    slab: PlaneSlab | None,
    reach: tuple[int, int],
    size: int,
    rng: np.random.Generator,
) -> Starts | None:
    """Uniform over the starts (< `spans`) whose patches touch neither the block (`lows`, see
    `outside`) nor the slab; None if there is none."""
    if slab is not None and lows is not None:
        raise ValueError("a held-out slab and a validation block together are not supported")
    if slab is not None:  # centres of planes that keep clear of the slab
        centres = np.arange(spans[0])
        centres = centres[outside((centres,) * 3, None, slab, reach)]
        if centres.size == 0:
            return None
    if lows is None:
        starts = [rng.integers(0, n, size=size) for n in spans]
        if slab is not None:
            starts[0] = rng.choice(centres, size)
        return tuple(starts)
    # the starts that avoid the block, in three disjoint boxes: before the block along p; inside
    # along p, before along w; inside along p and w, before along a
    rest = spans - lows
    boxes = np.array(
        [
            [[0, lows[0]], [0, spans[1]], [0, spans[2]]],
            [[lows[0], spans[0]], [0, lows[1]], [0, spans[2]]],
            [[lows[0], spans[0]], [lows[1], spans[1]], [0, lows[2]]],
        ]
    )
    volumes = np.array(
        [lows[0] * spans[1] * spans[2], rest[0] * lows[1] * spans[2], rest[0] * rest[1] * lows[2]],
        dtype=np.float64,
    )
    if volumes.sum() == 0:
        return None
    chosen = boxes[rng.choice(3, size=size, p=volumes / volumes.sum())]
    return tuple(rng.integers(chosen[:, axis, 0], chosen[:, axis, 1]) for axis in range(3))


def foreground_starts(
    starts: Starts,
    voxels: np.ndarray,
    shape: tuple[int, int, int],
    extent: tuple[int, int],
    spans: np.ndarray,
    allowed,
    rng: np.random.Generator,
) -> Starts:
    """`starts` with all but about `BACKGROUND_SHARE` of them replaced by patches centred on a
    foreground voxel (of `voxels`, flat indices into `shape`), where `allowed` (starts -> bool
    per patch) lets them; `extent`: the patch's size along w and a."""
    size = len(starts[0])
    pick = rng.random(size) >= BACKGROUND_SHARE
    p, w, a = np.unravel_index(voxels[rng.integers(voxels.size, size=size)], shape)
    candidate = (
        p,
        np.clip(w - extent[0] // 2, 0, spans[1] - 1),
        np.clip(a - extent[1] // 2, 0, spans[2] - 1),
    )
    take = pick & allowed(candidate)
    return tuple(np.where(take, c, s) for c, s in zip(candidate, starts, strict=True))
