"""Thick-axis detection and the output grid of an upsampling.

The convention (docs/geometry.md): every input slice is a slab of thickness `s` centred on its
voxel centre, so `n` slices cover `n * s` along the thick axis, edge to edge. The output keeps that
extent, divided into `m = round(n * s / t)` thin slices of exactly the target spacing `t`, centred
on the input extent (each end off by at most t/4 when `n * s / t` is not an integer). In-plane
axes, direction cosines and everything else in the affine are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from medsr.errors import MedsrError

#: Below this ratio of thick to finest in-plane spacing a volume counts as isotropic.
ISOTROPY_TOLERANCE = 1.05


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each array axis: the lengths of the affine's first three columns."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def thick_axis(affine: np.ndarray) -> int:
    """Array axis with the largest spacing, whatever the axis order and orientation.

    Ties (isotropic or two equally thick axes) go to the last tied axis: slices are stacked along
    the slowest array axis in almost every scanner and section format.
    """
    spacing = voxel_spacing(affine)
    tied = np.flatnonzero(spacing >= spacing.max() * (1 - 1e-6))
    return int(tied[-1])


def anisotropy(affine: np.ndarray) -> float:
    """Ratio of the thick spacing to the finest in-plane spacing (1.0 for isotropic)."""
    spacing = voxel_spacing(affine)
    axis = thick_axis(affine)
    return float(spacing[axis] / np.delete(spacing, axis).min())


def orientation_codes(affine: np.ndarray) -> str:
    """Closest orientation codes of the array axes, e.g. ``"LIA"`` or ``"RAS"``."""
    return "".join(nib.aff2axcodes(affine))


@dataclass(frozen=True)
class OutputGrid:
    """Where the thin output slices lie, in input voxel indices and in the world.

    Attributes:
        axis: the thick (upsampled) array axis.
        shape: spatial output shape.
        affine: output voxel-to-world affine.
        spacing: output spacing along `axis` (same unit as the affine).
        positions: for each output slice, its centre as a continuous input index along `axis`
            (input slice `i` spans ``i - 0.5 .. i + 0.5``).
    """

    axis: int
    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: float
    positions: np.ndarray

    @property
    def step(self) -> float:
        """Output spacing in units of input slices (< 1 when upsampling)."""
        return float(self.positions[1] - self.positions[0]) if len(self.positions) > 1 else 1.0


def plan_output_grid(
    shape: tuple[int, ...],
    affine: np.ndarray,
    *,
    spacing: float | None = None,
    scale: float | None = None,
    axis: int | None = None,
) -> OutputGrid:
    """Plan the grid that divides each thick slab into thin slices.

    Args:
        shape: input spatial shape (X, Y, Z); extra trailing (channel) axes are ignored.
        affine: input voxel-to-world affine (4x4).
        spacing: target spacing along the thick axis, in the affine's unit. Default: the finest
            in-plane spacing (isotropic output for square in-plane pixels).
        scale: upsampling factor instead of `spacing` (target spacing = thick spacing / scale).
        axis: thick axis; default: found from the affine.

    Returns:
        The `OutputGrid`.
    """
    if spacing is not None and scale is not None:
        raise MedsrError("give either --spacing or --scale, not both")
    voxel = voxel_spacing(affine)
    axis = thick_axis(affine) if axis is None else int(axis)
    if axis not in (0, 1, 2):
        raise MedsrError(f"thick axis must be 0, 1 or 2, got {axis}")
    if scale is not None:
        if not np.isfinite(scale) or scale <= 0:
            raise MedsrError(f"--scale must be positive, got {scale}")
        spacing = voxel[axis] / scale
    if spacing is None:
        spacing = float(np.delete(voxel, axis).min())
    if not np.isfinite(spacing) or spacing <= 0:
        raise MedsrError(f"--spacing must be positive, got {spacing}")
    count = int(shape[axis])
    extent = count * voxel[axis]
    out_count = max(1, int(round(extent / spacing)))
    step = spacing / voxel[axis]  # output spacing in input-slice units
    first = -0.5 + (count - out_count * step) / 2 + step / 2
    positions = first + step * np.arange(out_count)
    resample = np.eye(4)
    resample[axis, axis] = step
    resample[axis, 3] = first
    out_shape = list(int(n) for n in shape[:3])
    out_shape[axis] = out_count
    return OutputGrid(
        axis=axis,
        shape=tuple(out_shape),
        affine=np.asarray(affine) @ resample,
        spacing=float(spacing),
        positions=positions,
    )


def world_extent(shape: tuple[int, ...], affine: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """World coordinates of the two outer slab faces along `axis` (centre of the other axes)."""
    centre = (np.asarray(shape[:3], dtype=np.float64) - 1) / 2
    faces = []
    for edge in (-0.5, shape[axis] - 0.5):
        index = centre.copy()
        index[axis] = edge
        faces.append(np.asarray(affine)[:3, :3] @ index + np.asarray(affine)[:3, 3])
    return tuple(faces)


def neighbour_offset(thick_spacing: float, plane_spacing: float) -> int:
    """Planes between neighbours: one thick spacing, in units of the spacing between planes."""
    return max(1, round(thick_spacing / plane_spacing))


def neighbour_indices(centres: np.ndarray, neighbours: int, offset: int, count: int) -> np.ndarray:
    """(len(centres), neighbours) plane indices around each centre, `offset` apart; planes past
    the border repeat the edge plane. Training and inference both take neighbours here."""
    offsets = (np.arange(neighbours) - neighbours // 2) * offset
    return np.clip(np.asarray(centres)[:, None] + offsets[None, :], 0, count - 1)


def slab_positions(count: int, factor: float) -> np.ndarray:
    """Centres of the thin slices of `count` slabs divided by `factor` (slab convention), as
    continuous indices of the slabs: ``(j + 0.5) / factor - 0.5`` for ``j < floor(count * factor)``.
    """
    thin = int(np.floor(count * factor + 1e-6))
    return (np.arange(thin) + 0.5) / factor - 0.5
