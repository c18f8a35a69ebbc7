"""Shared fixtures: a small deterministic anisotropic phantom and affines of many orientations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsr.io import Volume, write_volume

_CODE_AXES = {
    "R": (0, 1.0),
    "L": (0, -1.0),
    "A": (1, 1.0),
    "P": (1, -1.0),
    "S": (2, 1.0),
    "I": (2, -1.0),
}


def rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix from three Euler angles (x, y, z) in degrees."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(orientation: str, spacing, origin=(-20.0, 13.5, 7.25)) -> np.ndarray:
    """Affine whose array axes point along `orientation` codes, or ``"oblique"``."""
    if orientation == "oblique":
        direction = rotation((17.0, -23.0, 31.0))
    else:
        direction = np.zeros((3, 3))
        for column, code in enumerate(orientation):
            row, sign = _CODE_AXES[code]
            direction[row, column] = sign
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = origin
    return affine


def phantom_array(shape=(20, 18, 16), seed: int = 0) -> np.ndarray:
    """A smooth blob plus a sharp cube and mild noise, float32, deterministic."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius2 = sum(g**2 for g in grids)
    array = 100 * np.exp(-3 * radius2) + 50 * (np.max(np.abs(grids), axis=0) < 0.4)
    return (array + rng.normal(0, 1, shape)).astype(np.float32)


@pytest.fixture
def phantom() -> Volume:
    """An LPS phantom, 20x18x8 voxels of 1 x 1 x 4 mm (thick axis 2), int16."""
    array = np.rint(phantom_array((20, 18, 8)) * 10).astype(np.int16)
    return Volume(
        array=array,
        affine=make_affine("LPS", (1.0, 1.0, 4.0)),
        meta={"unit": "mm", "description": "phantom"},
    )


@pytest.fixture
def phantom_path(tmp_path: Path, phantom: Volume) -> Path:
    """The phantom written as NIfTI under tmp_path."""
    return write_volume(phantom, tmp_path / "phantom.nii.gz")
