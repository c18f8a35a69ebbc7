"""Training pairs: k neighbouring low-resolution through-plane planes -> one high-resolution plane.

Every source is reduced to *plane sources*: a 3D view with axes (p, w, a) where `a` is the axis
made thick, `w` the other in-plane axis of each plane, and `p` the axis along which the k
neighbouring planes are taken, one thick spacing apart.

Pairs are made on the fly, one small patch at a time, by the same degradation that describes an
acquisition (`medsr.degrade.slice_profile_weights`): a factor drawn log-uniformly over the
supported range (or the scan's own, for self-supervision), a boxcar or Gaussian profile, a slice
thickness that leaves a gap or an overlap, Rician noise on the thin truth (thick slices average it
down, as a thick acquisition's higher SNR does), and changes of the content itself (contrast, gain
and smoothness, `medsr.train.content`).
Nothing but one normalised copy of each volume is held in memory: sources are transposed views.

Without held-out volumes, validation uses a block of each volume (`held_out_block`): the last
part of every axis, the same voxels for all of the volume's sources (orientations), so that no
orientation trains on another's validation targets. Training patches never overlap it.

Neighbours are always taken one *thick spacing* apart, in training and at inference. In
self-supervised training the only direction perpendicular to an in-plane slice is the thick axis
itself, so neighbours there are adjacent thick slices; at inference the neighbours of a
sagittal/coronal plane are round(thick / fine) fine voxels apart, the same physical distance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from medsr.config import DataConfig
from medsr.degrade import thicken_last_axis, thin_slices
from medsr.errors import MedsrError
from medsr.geometry import (
    anisotropy,
    neighbour_indices,
    neighbour_offset,
    slab_positions,
    thick_axis,
)
from medsr.intensity import grey_array, intensity_range, normalise_intensity
from medsr.io import Volume
from medsr.train.content import change_content
from medsr.train.noise import draw_noise, thicken_like_scan
from medsr.train.patches import (
    PlaneSlab,
    foreground_starts,
    foreground_voxels,
    outside,
    uniform_starts,
)

logger = logging.getLogger(__name__)

#: high-resolution volumes must be about isotropic
MAX_SOURCE_ANISOTROPY = 1.5
#: fewest thick slices in a training patch
MIN_PATCH_SLICES = 4
#: factors of the fixed validation planes (those a source is long enough for)
VALIDATION_FACTORS = (2.5, 4.0, 6.5, 10.0, 16.0)

#: factors drawn for one batch before a source is found too small to avoid its validation block
MAX_FACTOR_DRAWS = 100

#: (lr (B, k, W, s), hr (B, 1, W, M), positions (M,), factor)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]


def held_out_block(shape: tuple[int, ...], fraction: float) -> tuple[int, ...] | None:
    """First index of the validation block along each axis: the block is ``[start, n)`` along
    every axis, about `fraction` of the voxels (each axis of more than one voxel gives the same
    share; an axis of one voxel is whole), so a transposed view of the volume holds the same
    block, transposed. None when `fraction` is 0."""
    if fraction <= 0:
        return None
    used = sum(n > 1 for n in shape)
    side = fraction ** (1 / max(used, 1))
    return tuple(0 if n == 1 else n - min(max(1, round(n * side)), n - 1) for n in shape)


@dataclass(frozen=True)
class PlaneSource:
    """A (p, w, a) view of one normalised volume, and how to thicken it.

    Attributes:
        array: normalised data, axes (p, w, a) (a view: no copy per orientation).
        spacing: voxel spacing along (p, w, a), any unit.
        name: for logs.
        factor: fixed factor (self-supervision: the scan's thick / in-plane spacing); None draws
            one per batch.
        fixed_offset: fixed neighbour offset along p (self-supervision: 1, adjacent thick
            slices); None: one thick spacing, from the drawn factor.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    name: str
    factor: float | None = None
    fixed_offset: int | None = None

    def offset(self, factor: float) -> int:
        """Neighbour offset along p for a thick spacing of `factor` voxels along a."""
        if self.fixed_offset is not None:
            return self.fixed_offset
        return neighbour_offset(factor * self.spacing[2], self.spacing[0])

    def max_factor(self) -> float:
        """Largest factor that still leaves `MIN_PATCH_SLICES` thick slices."""
        return self.array.shape[2] / MIN_PATCH_SLICES


def _normalised(volume: Volume) -> np.ndarray:
    grey = grey_array(volume)
    return normalise_intensity(grey, *intensity_range(grey))


def sources_from_volume(volume: Volume, name: str, min_width: int = 16) -> list[PlaneSource]:
    """High-resolution volume: every axis made thick, each other axis as `p` (both through-plane
    orientations). A 2D image is a volume of one slice: its two in-plane axes each made thick."""
    if anisotropy(volume.affine) > MAX_SOURCE_ANISOTROPY and min(volume.spatial_shape) > 1:
        raise MedsrError(
            f"'{name}' is anisotropic ({anisotropy(volume.affine):.2f}); use it "
            "with --self-supervised, or give high-resolution volumes"
        )
    array, spacing = _normalised(volume), volume.spacing
    sources = []
    for a in range(3):
        for p in (axis for axis in range(3) if axis != a):
            w = 3 - a - p
            if array.shape[w] < min_width or array.shape[a] < 2 * MIN_PATCH_SLICES:
                continue
            view = np.transpose(array, (p, w, a))
            sources.append(
                PlaneSource(view, (spacing[p], spacing[w], spacing[a]), f"{name}:a{a}p{p}")
            )
    return sources


def sources_self_supervised(
    volume: Volume, name: str, *, axis: int | None = None, factor: float | None = None
) -> list[PlaneSource]:
    """In-plane slices of an anisotropic scan, made thick along each in-plane axis to the scan's
    own factor; neighbours are adjacent thick slices.

    With `axis` and `factor` (the per-scan fit of an upsampling of `axis` by `factor`, any volume,
    isotropic included): the slices across `axis`, each of its two other axes made thick by
    `factor`, so that the fit learns the factor it is about to apply along `axis`.
    """
    if (axis is None) != (factor is None):
        raise ValueError(f"give both axis and factor or neither, got {axis} and {factor}")
    ratio = anisotropy(volume.affine)
    if factor is None and ratio < 1.2:
        raise MedsrError(
            f"'{name}' is nearly isotropic ({ratio:.2f}): self-supervised training "
            "needs thick slices; train from it as a high-resolution volume instead"
        )
    array, spacing = _normalised(volume), volume.spacing
    z = thick_axis(volume.affine) if axis is None else axis
    sources = []
    for a in (other for other in range(3) if other != z):
        w = 3 - a - z
        view = np.transpose(array, (z, w, a))
        own = float(spacing[z] / spacing[a]) if factor is None else float(factor)
        sources.append(
            PlaneSource(view, (spacing[z], spacing[w], spacing[a]), f"{name}:a{a}", own, 1)
        )
    return sources


class PairSampler:
    """Draws batches of training pairs from plane sources, degrading patches on the fly.

    A block of each source (`held_out_block` of ``config.validation_fraction``: the same voxels
    of a volume in every orientation) is never part of a training patch, neither as a target nor
    as a neighbour; the validation planes are taken inside it.

    Args:
        sources: plane sources of one run.
        config: data configuration.
        neighbours: k.
    """

    def __init__(self, sources: list[PlaneSource], config: DataConfig, neighbours: int) -> None:
        if not sources:
            raise MedsrError("no training data")
        self.sources, self.config, self.neighbours = sources, config, neighbours
        #: planes [start, stop) along p of every source that no patch touches (the fit's guard)
        self.held_out_planes: PlaneSlab | None = None
        self._foreground: dict[int, np.ndarray] = {}  # foreground voxels, once per source

    def held_out(self, source: PlaneSource) -> tuple[int, ...] | None:
        """First (p, w, a) index of `source`'s validation block, or None (nothing held out)."""
        return held_out_block(source.array.shape, self.config.validation_fraction)

    def draw_factor(self, source: PlaneSource, rng: np.random.Generator) -> float:
        """The source's own factor, or one drawn log-uniformly over the configured range."""
        if source.factor is not None:
            return source.factor
        high = min(self.config.max_factor, source.max_factor())
        low = min(self.config.min_factor, high)
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))

    def patch_slices(self, factor: float, length: int) -> int:
        """Thick slices per patch: the configured count, fewer for large factors (at most
        `max_thin_slices` target slices) and for short sources."""
        data = self.config
        slices = min(data.patch_slices, int(data.max_thin_slices // factor))
        slices = min(slices, int(np.floor(length / factor)))
        return max(slices, min(MIN_PATCH_SLICES, int(np.floor(length / factor))))

    def sample(self, rng: np.random.Generator) -> Batch:
        """One batch of one source and one factor, with random degradations and flips."""
        data = self.config
        source = self.sources[int(rng.integers(len(self.sources)))]
        count, width_all, length = source.array.shape
        width = min(data.patch_width, width_all)
        for _ in range(MAX_FACTOR_DRAWS):
            factor = self.draw_factor(source, rng)
            slices = self.patch_slices(factor, length)
            thin = thin_slices(slices, factor, length)
            starts = self._patch_starts(source, rng, width, thin, source.offset(factor))
            if starts is not None:
                break
        else:
            raise MedsrError(
                f"'{source.name}' is too small for training patches beside its validation block; "
                "give --validation-data or --set data.validation_fraction=0"
            )
        centres, starts_w, starts_a = starts
        planes = neighbour_indices(centres, self.neighbours, source.offset(factor), count)
        patches = np.empty((data.batch_size, self.neighbours, width, thin), np.float32)
        for b in range(data.batch_size):
            w, a = starts_w[b], starts_a[b]
            patch = source.array[planes[b], w : w + width, a : a + thin]
            if rng.random() < 0.5:  # mirror along w
                patch = patch[:, ::-1]
            if rng.random() < 0.5:  # mirror along the thick axis (before thickening: exact)
                patch = patch[:, :, ::-1]
            if rng.random() < 0.5:  # neighbours in reverse order
                patch = patch[::-1]
            patches[b] = patch
        patches = change_content(patches, data, rng)
        patches, input_noise = draw_noise(patches, data, rng)
        profile = data.profiles[int(rng.integers(len(data.profiles)))]
        thickness = factor * rng.uniform(*data.thickness_ratios)
        # the noise that thickening averaged away, put back (the per-scan fit; `input_noise`)
        lr = thicken_like_scan(patches, factor, thickness, profile, input_noise, rng)
        positions = slab_positions(slices, factor)
        hr = patches[:, self.neighbours // 2 : self.neighbours // 2 + 1, :, : len(positions)]
        if 0 < data.query_positions < len(positions):
            chosen = stratified_subset(len(positions), data.query_positions, rng)
            positions, hr = positions[chosen], hr[..., chosen]
        hr = np.ascontiguousarray(hr)
        return (
            torch.from_numpy(np.ascontiguousarray(lr)),
            torch.from_numpy(np.ascontiguousarray(hr)),
            torch.from_numpy(positions.astype(np.float32)),
            factor,
        )

    def _patch_starts(
        self, source: PlaneSource, rng: np.random.Generator, width: int, thin: int, offset: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(centre plane, start along w, start along a) of each patch of a batch, uniform over
        the patches that touch neither the held-out block nor `held_out_planes`, or centred on
        the foreground (``config.foreground_sampling``); None if no patch avoids them."""
        count, width_all, length = source.array.shape
        spans = np.array([count, width_all - width + 1, length - thin + 1])
        block = self.held_out(source)
        # a patch reaches its farthest neighbours, its last column and its last thin slice
        reach = (
            (self.neighbours // 2) * offset,
            (self.neighbours - 1 - self.neighbours // 2) * offset,
        )
        lows = None
        if block is not None:
            lows = np.minimum(
                spans, np.maximum(0, np.array(block) - [reach[1], width - 1, thin - 1])
            )
        args = (lows, self.held_out_planes, reach)
        starts = uniform_starts(spans, *args, self.config.batch_size, rng)
        if starts is None or not self.config.foreground_sampling:
            return starts
        if id(source) not in self._foreground:
            self._foreground[id(source)] = foreground_voxels(source.array)
        voxels = self._foreground[id(source)]
        allowed = lambda candidate: outside(candidate, *args)  # noqa: E731
        return foreground_starts(
            starts, voxels, source.array.shape, (width, thin), spans, allowed, rng
        )

    def validation_planes(self, max_sources: int = 12) -> list[Batch]:
        """Fixed planes of each source (up to `max_sources`): the middle plane of its held-out
        block, over the block (or, with nothing held out, the whole middle plane), thickened at
        each of `VALIDATION_FACTORS` it is long enough for (boxcar, contiguous, no noise)."""
        chosen = self.sources[:: max(1, len(self.sources) // max_sources)][:max_sources]
        planes = []
        for source in chosen:
            count = source.array.shape[0]
            start_p, start_w, start_a = self.held_out(source) or (0, 0, 0)
            centre = (start_p + count) // 2
            length = source.array.shape[2] - start_a
            factors = [source.factor] if source.factor else VALIDATION_FACTORS
            for factor in (f for f in factors if length / f >= MIN_PATCH_SLICES):
                index = neighbour_indices(
                    np.array([centre]), self.neighbours, source.offset(factor), count
                )[0]
                slices = int(np.floor(length / factor))
                thin = thin_slices(slices, factor, length)
                block = source.array[index, start_w:, start_a:]
                patch = np.ascontiguousarray(block[:, :, :thin], np.float32)
                lr = thicken_last_axis(patch, factor, factor, "boxcar")
                positions = slab_positions(slices, factor)
                hr = patch[self.neighbours // 2][None, None, :, : len(positions)]
                planes.append(
                    (
                        torch.from_numpy(lr[None].copy()),
                        torch.from_numpy(hr.copy()),
                        torch.from_numpy(positions.astype(np.float32)),
                        float(factor),
                    )
                )
        if chosen and not planes:
            logger.warning(
                "no validation planes: the held-out blocks are too short for the validation "
                "factors; give --validation-data or raise data.validation_fraction"
            )
        return planes


def build_sampler(volumes: list[tuple[Volume, str]], config: DataConfig, neighbours: int):
    """Plane sources of every volume: high-resolution volumes and 2D images at drawn factors;
    thick-slice scans (and everything, with `config.self_supervised`) at their own factor."""
    sources: list[PlaneSource] = []
    for volume, name in volumes:
        flat = min(volume.spatial_shape) == 1  # a 2D image
        if config.self_supervised or (
            not flat and anisotropy(volume.affine) > MAX_SOURCE_ANISOTROPY
        ):
            # a thick-slice scan among high-resolution volumes teaches its own factor
            sources += sources_self_supervised(volume, name)
        else:
            sources += sources_from_volume(volume, name)
    logger.info("%d plane sources from %d volume(s)", len(sources), len(volumes))
    return PairSampler(sources, config, neighbours)


class PairStream(torch.utils.data.IterableDataset):
    """An endless stream of training batches drawn by a `PairSampler`, one stream per worker.

    An `IterableDataset` rather than a map-style dataset: a batch is drawn (source, factor,
    degradation, patches), not looked up, and one batch shares one factor, so the sampler, not the
    `DataLoader`, assembles it (use ``batch_size=None``). Each worker draws from its own
    generator, seeded from (seed, rank, worker, start step), so a run is reproducible for a given
    number of workers, and a resumed run continues with fresh, seeded streams. The sampler holds
    views of one normalised copy of each volume; forked workers share those pages. The `Trainer`
    uses it for ``data.workers`` > 0; `medsr.monai.TrainingPairs` is the same stream as a MONAI
    dataset.

    Args:
        sampler: the run's pair sampler.
        seed: the run's seed.
        rank: process rank (distributed training).
        start_step: the step the stream starts at (a resumed run's step).
    """

    def __init__(self, sampler: PairSampler, seed: int, rank: int = 0, start_step: int = 0):
        super().__init__()
        self.sampler, self.seed, self.rank, self.start_step = sampler, seed, rank, start_step

    def __iter__(self) -> Iterator[Batch]:
        return draw_batches(self.sampler, self.seed, self.rank, self.start_step)


def draw_batches(sampler: PairSampler, seed: int, rank: int, start_step: int) -> Iterator[Batch]:
    """Batches of `sampler`, endlessly, from the generator of (seed, rank, worker, start step)."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    worker = 0 if info is None else info.id
    rng = np.random.default_rng([seed, rank, worker, start_step])
    while True:
        yield sampler.sample(rng)


def stratified_subset(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` sorted indices of ``range(count)``, one drawn uniformly from each of `size` runs
    of (nearly) equal length: every part of a patch's thin slices is queried, at random offsets
    (`medsr.config.DataConfig.query_positions`)."""
    if not 0 < size <= count:
        raise ValueError(f"need 0 < size <= count, got {size} and {count}")
    edges = np.linspace(0, count, size + 1)
    low, high = np.ceil(edges[:-1]).astype(int), np.ceil(edges[1:]).astype(int)
    return low + np.floor(rng.random(size) * (high - low)).astype(int)
