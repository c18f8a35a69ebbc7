"""The `Volume`: an array that never travels without its affine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Unit = Literal["mm", "um"]


@dataclass(frozen=True)
class Volume:
    """A 3D image (optionally with colour channels) and its voxel-to-world affine.

    Args:
        array: voxel data, shape (X, Y, Z) or (X, Y, Z, C) for colour (C = 3, RGB). Axis order is
            the file's voxel order (nibabel convention), not a canonical orientation.
        affine: 4x4 matrix mapping voxel indices (i, j, k, 1) to RAS+ world coordinates in `unit`.
            Index (i, j, k) is the *centre* of a voxel.
        meta: format details kept across a round trip (``unit``, ``description``,
            ``qform_code``, ``sform_code``, ``format``, ...). ``scaling`` (`scaled_values`)
            says that `array` holds integers stored with a slope and intercept, in world units.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
        if self.array.ndim not in (3, 4):
            raise ValueError(f"array must be 3D or 3D+channels, got shape {self.array.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """Number of voxels along the three spatial axes."""
        return tuple(int(n) for n in self.array.shape[:3])  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        """1 for grey volumes, 3 for RGB."""
        return 1 if self.array.ndim == 3 else int(self.array.shape[3])

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along each array axis, in `unit` (length of each affine column)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def unit(self) -> Unit:
        """Spatial unit of the affine: ``"mm"`` (default) or ``"um"``."""
        return self.meta.get("unit", "mm")

    def with_array(self, array: np.ndarray, affine: np.ndarray | None = None) -> Volume:
        """Return a copy holding `array` (and `affine` if given), keeping `meta`."""
        new_affine = self.affine if affine is None else affine
        return dataclasses.replace(self, array=array, affine=new_affine, meta=dict(self.meta))


def scaled_values(stored: np.ndarray, scaling: dict[str, Any]) -> np.ndarray:
    """World values of integers stored with a slope and intercept (NIfTI ``scl_slope`` and
    ``scl_inter``: CT in HU from int16 with intercept -1024), ``stored * slope + inter``.

    The one formula of the reader and of `medsr.intensity.restore_dtype`, so the writer can
    check that an array is exactly what its stored integers give. float32 for stored types of up
    to 16 bits; float64 for wider ones, which float32 cannot hold exactly.

    Args:
        stored: the stored integers, any shape.
        scaling: ``{"dtype": stored type name, "slope": float, "inter": float}``
            (``Volume.meta["scaling"]``).
    """
    dtype = np.float32 if np.dtype(scaling["dtype"]).itemsize <= 2 else np.float64
    values = np.asarray(stored).astype(dtype)
    values *= dtype(scaling["slope"])
    values += dtype(scaling["inter"])
    return values


def unit_scale(source: Unit, target: Unit) -> float:
    """Factor that converts a length in `source` units into `target` units."""
    to_mm = {"mm": 1.0, "um": 1e-3}
    return to_mm[source] / to_mm[target]


#: every spelling of a length unit that medsr reads (lengths, TIFF and OME metadata) -> its `Unit`
UNIT_NAMES: dict[str, Unit] = {
    "mm": "mm",
    "millimeter": "mm",
    "millimetre": "mm",
    "um": "um",
    "µm": "um",
    "\\u00B5m": "um",
    "micron": "um",
    "microns": "um",
}


def parse_length(text: str | float) -> tuple[float, Unit | None]:
    """``"0.5mm"`` -> (0.5, "mm"), ``"2um"``/``"2µm"`` -> (2.0, "um"), ``"0.5"`` -> (0.5, None):
    a bare number is in the volume's own unit.

    Raises:
        ValueError: not a positive finite number with an optional mm/um unit.
    """
    import math
    import re

    if isinstance(text, (int, float)):
        value, unit = float(text), None
    else:
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zµ]*)\s*", str(text))
        if not match or (match.group(2) and match.group(2) not in UNIT_NAMES):
            raise ValueError(f"expected a length such as 0.5, 0.5mm or 2um, got {text!r}")
        try:
            value = float(match.group(1))
        except ValueError as error:
            raise ValueError(
                f"expected a length such as 0.5, 0.5mm or 2um, got {text!r}"
            ) from error
        unit = UNIT_NAMES.get(match.group(2)) if match.group(2) else None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a length must be positive, got {text!r}")
    return value, unit  # type: ignore[return-value]
