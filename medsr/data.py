"""Training pairs: k neighbouring low-resolution through-plane planes -> one high-resolution plane.

Every source is reduced to *plane stacks*: a 3D array with axes (p, w, a) where `a` is the axis
made thick (by `factor`, with a slice profile), `w` the other in-plane axis of each plane, and `p`
the axis along which the k neighbouring planes are taken, `neighbour_offset` voxels apart.

Neighbours are always taken one *thick spacing* apart, in training and at inference. In
self-supervised training (source 2) the only direction perpendicular to an in-plane slice is the
thick axis itself, so neighbours there are adjacent thick slices; at inference the neighbours of a
sagittal/coronal plane are therefore taken round(thick / fine) fine voxels apart, the same
physical distance, so the network sees the same geometry in both. Source 1 (high-resolution
volumes) follows the same rule.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from medsr.baselines import interpolate_along_axis
from medsr.config import DataConfig
from medsr.errors import MedsrError
from medsr.geometry import anisotropy, thick_axis
from medsr.io import Volume
from medsr.transforms import intensity_range, normalise_intensity, simulate_thick_slices

logger = logging.getLogger(__name__)

#: high-resolution volumes for source 1 must be about isotropic
MAX_SOURCE_ANISOTROPY = 1.5


def integer_scale(factor: float) -> int:
    """Integer network factor for a physical factor: the next integer, at least 2."""
    return max(2, math.ceil(factor - 1e-6))


def neighbour_offset(thick_spacing: float, plane_spacing: float) -> int:
    """Planes between neighbours: one thick spacing, in units of the spacing between planes."""
    return max(1, round(thick_spacing / plane_spacing))


def neighbour_indices(centres: np.ndarray, neighbours: int, offset: int, count: int) -> np.ndarray:
    """(len(centres), neighbours) plane indices around each centre, `offset` apart; planes past
    the border repeat the edge plane. Training and inference both take neighbours here."""
    offsets = (np.arange(neighbours) - neighbours // 2) * offset
    return np.clip(np.asarray(centres)[:, None] + offsets[None, :], 0, count - 1)


@dataclass
class PlaneStack:
    """One (p, w, a) array, its factor and its derived pair arrays (computed on first use).

    Attributes:
        array: normalised high-resolution data, axes (p, w, a).
        factor: thick spacing / spacing along `a` (physical factor, may be non-integer).
        neighbour_offset: voxels along `p` between neighbouring planes.
        name: for logs.
    """

    array: np.ndarray
    factor: float
    neighbour_offset: int
    name: str
    network_scale: int | None = None
    _pairs: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def scale(self) -> int:
        """Integer factor of the network head that learns this stack."""
        return self.network_scale or integer_scale(self.factor)

    def pairs(self, config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
        """(thick, target): thick (p, w, n) and the target (p, w, n * scale) on the thin grid."""
        if self._pairs is None:
            thick = simulate_thick_slices(
                self.array,
                2,
                self.factor,
                thickness=self.factor * config.thickness_ratio,
                profile=config.profile,
            )
            count = thick.shape[2] * self.scale
            positions = (np.arange(count) + 0.5) * self.factor / self.scale - 0.5
            if np.allclose(positions, np.round(positions)):
                target = self.array[:, :, :count]
            else:
                target = interpolate_along_axis(self.array, positions, 2, "bspline")
            self._pairs = (thick.astype(np.float32), np.ascontiguousarray(target, np.float32))
        return self._pairs


def _normalised(volume: Volume) -> np.ndarray:
    if volume.num_channels != 1:
        raise MedsrError("training volumes must be grey; train colour per channel")
    return normalise_intensity(volume.array, *intensity_range(volume.array))


def stacks_from_volume(volume: Volume, factors: tuple[int, ...], name: str) -> list[PlaneStack]:
    """Source 1: every axis of a high-resolution volume made thick, each other axis as `p`."""
    if anisotropy(volume.affine) > MAX_SOURCE_ANISOTROPY:
        raise MedsrError(
            f"'{name}' is anisotropic ({anisotropy(volume.affine):.2f}); use it "
            "with --self-supervised, or give high-resolution volumes"
        )
    array, spacing = _normalised(volume), volume.spacing
    stacks = []
    for a in range(3):
        for p in (axis for axis in range(3) if axis != a):
            w = 3 - a - p
            view = np.ascontiguousarray(np.transpose(array, (p, w, a)))
            for factor in factors:
                offset = neighbour_offset(factor * spacing[a], spacing[p])
                stacks.append(PlaneStack(view, float(factor), offset, f"{name}:a{a}p{p}x{factor}"))
    return stacks


def stacks_self_supervised(volume: Volume, name: str, scale: int | None = None) -> list[PlaneStack]:
    """Source 2: in-plane slices of an anisotropic scan, made thick along each in-plane axis.

    `scale` sets the network factor (default: the next integer above thick / in-plane spacing),
    so that a model can be adapted for the factor that inference will use.
    """
    ratio = anisotropy(volume.affine)
    if ratio < 1.2:
        raise MedsrError(
            f"'{name}' is nearly isotropic ({ratio:.2f}): self-supervised training "
            "needs thick slices; train from it as a high-resolution volume instead"
        )
    array, spacing = _normalised(volume), volume.spacing
    z = thick_axis(volume.affine)
    stacks = []
    for a in (axis for axis in range(3) if axis != z):
        w = 3 - a - z
        view = np.ascontiguousarray(np.transpose(array, (z, w, a)))
        factor = float(spacing[z] / spacing[a])
        offset = neighbour_offset(spacing[z], spacing[z])  # adjacent thick slices
        stacks.append(PlaneStack(view, factor, offset, f"{name}:a{a}", network_scale=scale))
    return stacks


class PairSampler:
    """Draws batches of training pairs and holds back planes for validation.

    Planes whose index along `p` falls in the last `validation_fraction` of each stack are never
    used as training centres.

    Args:
        stacks: plane stacks of one run.
        config: data configuration.
        neighbours: k.
    """

    def __init__(self, stacks: list[PlaneStack], config: DataConfig, neighbours: int) -> None:
        if not stacks:
            raise MedsrError("no training data")
        self.stacks, self.config, self.neighbours = stacks, config, neighbours
        self.scales = sorted({stack.scale for stack in stacks})

    def _split(self, stack: PlaneStack) -> int:
        count = stack.array.shape[0]
        return max(1, count - max(1, round(count * self.config.validation_fraction)))

    def _planes(self, stack: PlaneStack, centres: np.ndarray) -> np.ndarray:
        return neighbour_indices(
            centres, self.neighbours, stack.neighbour_offset, stack.array.shape[0]
        )

    def sample(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One batch: lr (B, k, W, n), hr (B, 1, W, n * scale) and the integer scale."""
        stack = self.stacks[int(rng.integers(len(self.stacks)))]
        thick, target = stack.pairs(self.config)
        scale = stack.scale
        width = min(self.config.patch_width, thick.shape[1])
        slices = min(self.config.patch_slices, thick.shape[2])
        batch = self.config.batch_size
        centres = rng.integers(0, self._split(stack), size=batch)
        starts_w = rng.integers(0, thick.shape[1] - width + 1, size=batch)
        starts_a = rng.integers(0, thick.shape[2] - slices + 1, size=batch)
        flips = rng.integers(0, 2, size=(batch, 3)).astype(bool)
        planes = self._planes(stack, centres)
        lr = np.empty((batch, self.neighbours, width, slices), np.float32)
        hr = np.empty((batch, 1, width, slices * scale), np.float32)
        for b in range(batch):
            w, a = slice(starts_w[b], starts_w[b] + width), starts_a[b]
            lr[b] = thick[planes[b], w, a : a + slices]
            hr[b, 0] = target[centres[b], w, a * scale : (a + slices) * scale]
            if flips[b, 0]:  # mirror along w
                lr[b], hr[b] = lr[b, :, ::-1], hr[b, :, ::-1]
            if flips[b, 1]:  # mirror along the thick axis: the slab grid is symmetric
                lr[b], hr[b] = lr[b, :, :, ::-1], hr[b, :, :, ::-1]
            if flips[b, 2]:  # neighbours in reverse order
                lr[b] = lr[b, ::-1]
        return torch.from_numpy(lr), torch.from_numpy(hr), scale

    def validation_planes(self, max_stacks: int = 8, per_stack: int = 4):
        """Held-back whole planes: a list of (lr (1, k, W, n), hr (1, 1, W, n*scale), scale)."""
        chosen = self.stacks[:: max(1, len(self.stacks) // max_stacks)][:max_stacks]
        planes = []
        for stack in chosen:
            thick, target = stack.pairs(self.config)
            held = np.arange(self._split(stack), stack.array.shape[0])
            for centre in held[:: max(1, len(held) // per_stack)][:per_stack]:
                index = self._planes(stack, np.array([centre]))[0]
                planes.append(
                    (
                        torch.from_numpy(thick[index][None].copy()),
                        torch.from_numpy(target[centre][None, None].copy()),
                        stack.scale,
                    )
                )
        return planes


def build_sampler(volumes: list[tuple[Volume, str]], config: DataConfig, neighbours: int):
    """Plane stacks of every volume (source 1, or source 2 when `config.self_supervised`)."""
    stacks: list[PlaneStack] = []
    for volume, name in volumes:
        if config.self_supervised:
            stacks += stacks_self_supervised(volume, name)
        else:
            stacks += stacks_from_volume(volume, config.factors, name)
    logger.info("%d plane stacks from %d volume(s)", len(stacks), len(volumes))
    return PairSampler(stacks, config, neighbours)
