"""Apply a trained generator to every through-plane plane of a volume and fuse orientations.

For a thick axis z and in-plane axes x, y, the planes that contain z are the x-planes (axes y, z)
and the y-planes (axes x, z). Each orientation is reconstructed plane by plane: the k neighbours of
plane i are planes i + j * round(thick / fine) (one thick spacing apart, as in training; see
`medsr.geometry.neighbour_indices`), and the arbitrary-scale generator predicts the plane at the
output grid's own positions along z (``generator(lr, positions, factor)``, any real factor, the
positions of `medsr.geometry.plan_output_grid`), in chunks of positions within `DECODER_BUDGET`.
Both orientations are averaged into one float32 output array, which is the only full-size buffer
(plus the input); ``orientations=1`` reconstructs only one of them (`plane_orientations`), at
half the cost. With an ``ensemble`` of more than one pass, every batch of planes is also
reconstructed flipped (`medsr.upsample.ensemble.ENSEMBLE_FLIPS`: along the plane's in-plane
axis, along the thick axis, the neighbours' order reversed; the geometric self-ensemble of
EDSR+, Lim et al. CVPRW 2017) and the passes are averaged, flipped back, into the same buffer.
With ``disagreement=True`` the second orientation goes into one extra float32 buffer first,
which then holds half their absolute difference (the confidence map's first term,
`medsr.upsample.confidence`); the average is the same, to the bit with one pass (with more, each
orientation's passes are summed first: the same up to float32 rounding).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch

from medsr.config import PLANE_BATCH
from medsr.geometry import OutputGrid, neighbour_indices, neighbour_offset
from medsr.intensity import intensity_range, normalise_intensity
from medsr.io import Volume
from medsr.nets import MISRGenerator
from medsr.runtime import precision_autocast, resolve_precision
from medsr.upsample.checks import check_ensemble, check_orientations
from medsr.upsample.ensemble import ensemble_passes, flipped_pass

logger = logging.getLogger(__name__)


#: whether the encoder's input and weights are laid out channels-last, per resolved precision
#: (docs/benchmarks.md, "Speed": float32 since 2026-12-03, where the encoder ran at 54 against
#: 32 GMAC/s contiguous and end to end was no slower; its output differs by about 1e-7 of the
#: range)
CHANNELS_LAST = {"bf16": True, "fp16": False, "fp32": True}

#: memory for the decoder's per-output temporaries of one call (bytes)
DECODER_BUDGET = 32 * 2**20


def position_chunk(generator, planes: int, width: int, count: int) -> int:
    """Output positions decoded per call: all of them, fewer when the decoder's temporaries
    (about five float32 tensors of hidden x width per position and plane, and two of the offset
    tail's knots x width) would pass
    `DECODER_BUDGET`."""
    hidden = getattr(getattr(generator, "query", None), "out_features", 1)
    knots = getattr(getattr(generator, "tail", None), "out_channels", 0)  # gathered, weighted
    per_position = 4 * (5 * hidden + 2 * knots) * width * planes
    return max(1, min(count, DECODER_BUDGET // max(per_position, 1)))


def plane_orientations(
    axis: int, spacing: np.ndarray, count: int = 2
) -> list[tuple[int, int, int]]:
    """(p, w, offset) for the through-plane orientations: planes stacked along p, in-plane w,
    neighbours `offset` planes apart (one thick spacing, rounded to whole planes).

    `count` 2: both, the lower p first. `count` 1: the one whose neighbours are nearest each
    other, then the one whose planes are finer along w, then the first. Chosen on the validation
    ITK T1 (2 x 2 x 3 mm; docs/benchmarks.md, "One orientation on a float32 CPU"), where this
    rule picked the better orientation in all six cases (three geometries), by 0.03 to 0.54 dB
    at 100 fit steps (by 0.005 to 0.59 at 200): at x2, neighbours one thick spacing apart (the
    distance training draws) lost 0.03 and 0.35 dB against nearer ones; where both were as
    near, the planes finer along w gained 0.06 and 0.12 dB. A rule fitted in sample: the test
    volumes have square in-plane pixels, where both orientations tie and the first is taken."""
    check_orientations(count)
    both = [
        (p, 3 - axis - p, neighbour_offset(float(spacing[axis]), float(spacing[p])))
        for p in range(3)
        if p != axis
    ]
    if count == 2:
        return both

    def distance(orientation: tuple[int, int, int]) -> tuple[float, float]:
        p, w, offset = orientation
        return round(offset * float(spacing[p]), 6), round(float(spacing[w]), 6)

    return [min(both, key=distance)]  # min keeps the first of equals


def encode_planes(generator, lr: torch.Tensor, factor: float, precision: str) -> tuple:
    """`generator.encode` under the precision's autocast. On the CPU only the encoder's
    convolutions run in bf16: the projections come back in float32, so the decoder and the
    B-spline base stay float32 (`MISRGenerator.encode`; on CUDA the decoder runs under the same
    autocast, as always)."""
    with precision_autocast(lr.device, precision):
        return generator.encode(lr, factor)


def predict_flipped(
    generator: MISRGenerator,
    lr: torch.Tensor,
    positions: torch.Tensor,
    factor: float,
    precision: str,
    flips: tuple[bool, bool, bool],
    chunk: int,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """One pass of the self-ensemble over a batch of planes, decoded in chunks of positions.

    The planes are flipped by `flips` and the prediction flipped back. Flipping the thick axis
    maps position t to ``n - 1 - t``, so that pass is decoded at the mirrored positions and its
    values come back in the caller's order.

    Args:
        generator: the generator (with `encode` / `predict_at`, or a plain forward).
        lr: (B, k, W, n) low-resolution planes on the generator's device.
        positions: (M,) output positions along the last axis of `lr`.
        factor: low-resolution spacing / output spacing.
        precision: the resolved precision (`encode_planes`).
        flips: (along W, along the thick axis, the neighbours' order), one of
            `medsr.upsample.ensemble.ENSEMBLE_FLIPS`.
        chunk: positions decoded per call (`position_chunk`).

    Yields:
        (slice of `positions`, (B, W, len) float32 tensor of the centre planes there).
    """
    flip_w = flips[0]
    lr, positions = flipped_pass(lr, positions, flips)
    if hasattr(generator, "encode"):  # decode large outputs in chunks
        encoded = encode_planes(generator, lr, factor, precision)
        for first in range(0, len(positions), chunk):
            part = slice(first, first + chunk)
            sr = generator.predict_at(encoded, positions[part])[:, 0].float()
            yield part, sr.flip(-2) if flip_w else sr
    else:
        sr = generator(lr, positions, factor)[:, 0].float()  # (B, W, M)
        yield slice(0, len(positions)), sr.flip(-2) if flip_w else sr


@torch.no_grad()
def reconstruct(
    normalised: np.ndarray,
    grid: OutputGrid,
    spacing: np.ndarray,
    generator: MISRGenerator,
    *,
    device: torch.device,
    batch_size: int = PLANE_BATCH,
    on_batch: Callable[[int], None] | None = None,
    precision: str = "auto",
    disagreement: bool = False,
    ensemble: int = 1,
    orientations: int = 2,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Reconstruct a normalised grey volume on `grid` with `generator`.

    Args:
        normalised: input intensities mapped to about [0, 1], shape (X, Y, Z) in file order.
        grid: output grid (its `axis` is the thick axis).
        spacing: input voxel spacing per array axis.
        generator: trained generator, called as ``generator(lr, positions, factor)``.
        device: where the generator runs.
        batch_size: planes per generator call.
        on_batch: called with the number of planes done after each batch (progress).
        precision: ``"auto"``, ``"bf16"`` or ``"fp32"`` (`medsr.runtime.resolve_precision`).
        disagreement: also return ``|o1 - o2| / 2`` of the two orientations' reconstructions.
        ensemble: passes per orientation (`medsr.upsample.checks.ENSEMBLE_SIZES`), the first
            of `medsr.upsample.ensemble.ENSEMBLE_FLIPS`, averaged (the distinct ones,
            `ensemble_passes`); 1: the plain reconstruction.
        orientations: 2, both through-plane orientations averaged; 1, only the one
            `plane_orientations` prefers, at half the cost (a float32 CPU's default where both
            would not fit its time budget, `medsr.upsample.budget`). `disagreement` needs 2.

    Returns:
        float32 array of `grid.shape`, normalised units, mean of the orientations (and of the
        ensemble's passes); with `disagreement`, (that mean, half the orientations' absolute
        difference).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 plane, got {batch_size}")
    orientations = plane_orientations(
        grid.axis, spacing, check_orientations(orientations, disagreement)
    )
    passes = ensemble_passes(check_ensemble(ensemble), generator.neighbours)
    precision = resolve_precision(precision, device)
    generator = generator.to(device).eval()
    if CHANNELS_LAST.get(precision, False):
        # a copy: the caller's model keeps its layout (and so its float32 results)
        generator = copy.deepcopy(generator).to(memory_format=torch.channels_last)
    k = generator.neighbours
    factor = float(spacing[grid.axis] / grid.spacing)
    positions = torch.from_numpy(np.asarray(grid.positions, np.float32)).to(device)
    output = np.zeros(grid.shape, dtype=np.float32)
    second = np.zeros(grid.shape, dtype=np.float32) if disagreement else output
    for number, (p, w, offset) in enumerate(orientations):
        planes = np.transpose(normalised, (p, w, grid.axis))  # view (P, W, n)
        buffer = second if number == 1 else output
        target = np.transpose(buffer, (p, w, grid.axis))  # view (P, W, M)
        total = planes.shape[0]
        for start in range(0, total, batch_size):
            centres = np.arange(start, min(start + batch_size, total))
            index = neighbour_indices(centres, k, offset, total)
            lr = torch.from_numpy(np.ascontiguousarray(planes[index], dtype=np.float32))
            lr = lr.to(device)
            chunk = position_chunk(generator, len(centres), planes.shape[1], len(positions))
            with precision_autocast(device, precision if device.type == "cuda" else "fp32"):
                for flips in passes:
                    parts = predict_flipped(
                        generator, lr, positions, factor, precision, flips, chunk
                    )
                    for part, sr in parts:
                        target[centres, :, part] += sr.cpu().numpy()
            if on_batch is not None:
                on_batch(len(centres))
    if not disagreement:
        output /= len(orientations) * len(passes)
        return output
    output += second  # the same sums as accumulating both into one buffer
    output /= len(orientations) * len(passes)
    if len(passes) > 1:
        second /= len(passes)
    second -= output  # o2 - (o1 + o2) / 2 = (o2 - o1) / 2
    np.abs(second, out=second)
    return output, second


def reconstruct_volume(
    volume: Volume,
    grid: OutputGrid,
    generator: MISRGenerator,
    *,
    device: torch.device,
    batch_size: int = PLANE_BATCH,
    on_batch: Callable[[int], None] | None = None,
    precision: str = "auto",
    disagreement: bool = False,
    ensemble: int = 1,
    orientations: int = 2,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """`reconstruct` for a volume in its own units: one intensity scaling shared by all channels
    (RGB keeps its hues), each channel through the same network, back to input units.

    Returns:
        float32 array of `grid.shape` (plus the channel axis for RGB), in the input's units;
        with `disagreement`, (that array, ``|o1 - o2| / 2`` of the orientations, same shape and
        units).
    """
    low, high = intensity_range(volume.array)
    channels = [volume.array] if volume.num_channels == 1 else list(np.moveaxis(volume.array, 3, 0))
    results, differences = [], []
    for channel in channels:
        out = reconstruct(
            normalise_intensity(channel, low, high),
            grid,
            volume.spacing,
            generator,
            device=device,
            batch_size=batch_size,
            on_batch=on_batch,
            precision=precision,
            disagreement=disagreement,
            ensemble=ensemble,
            orientations=orientations,
        )
        if disagreement:
            out, difference = out
            difference *= high - low  # a difference: scaled, not shifted
            differences.append(difference)
        out *= high - low  # back to input units in place: the output is the largest buffer
        out += low
        results.append(out)
    result = results[0] if len(results) == 1 else np.stack(results, axis=3)
    if not disagreement:
        return result
    return result, differences[0] if len(differences) == 1 else np.stack(differences, axis=3)
