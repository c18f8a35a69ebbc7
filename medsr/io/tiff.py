"""TIFF stacks (multi-page, OME or ImageJ); folders of 2D sections are `medsr.io.sections`.

TIFF carries no orientation, so a stack is placed on a diagonal affine: array axis x runs along
image columns, y along rows, z along pages/sections, all with positive spacing. Spacing comes, in
this order, from `spacing` given by the caller, OME physical sizes, ImageJ metadata (z spacing
and unit) with the X/YResolution tags, or a ``series.json`` sidecar. The origin (the centre of
the first voxel) is the OME position of the first plane (``Plane PositionX/Y/Z``), 0 without it.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import tifffile

from medsr.errors import MedsrError
from medsr.io.volume import UNIT_NAMES, Unit, Volume, unit_scale

_OME_UNITS = {"um": "µm", "mm": "mm"}

logger = logging.getLogger(__name__)


def parse_unit(name: str) -> Unit:
    """Map a unit string found in TIFF metadata to ``"mm"`` or ``"um"``."""
    unit = UNIT_NAMES.get(name.strip())
    if unit is None:
        raise MedsrError(f"unsupported length unit '{name}' in TIFF metadata (use µm or mm)")
    return unit  # type: ignore[return-value]


def _ome_spacing(tif: tifffile.TiffFile) -> tuple[list[float], Unit] | None:
    root = ET.fromstring(tif.ome_metadata)
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None or "PhysicalSizeZ" not in pixels.attrib:
        return None
    units = {pixels.attrib.get(f"PhysicalSize{a}Unit", "µm") for a in "XYZ"}
    if len(units) != 1:
        raise MedsrError(f"OME physical sizes use mixed units {sorted(units)}")
    spacing = [float(pixels.attrib.get(f"PhysicalSize{a}", "nan")) for a in "XYZ"]
    return spacing, parse_unit(units.pop())


def _ome_origin(tif: tifffile.TiffFile, unit: Unit) -> list[float] | None:
    """Position of the first plane (PositionX/Y/Z of TheZ=0), in `unit`; None without one.

    OME's default position unit is the stage's "reference frame", not a length: a position
    without a µm or mm unit is not used.
    """
    root = ET.fromstring(tif.ome_metadata)
    planes = [el for el in root.iter() if el.tag.endswith("Plane")]
    first = next((p for p in planes if p.get("TheZ", "0") == "0"), None)
    if first is None or not any(f"Position{a}" in first.attrib for a in "XYZ"):
        return None
    origin = []
    for a in "XYZ":
        if f"Position{a}" not in first.attrib:
            origin.append(0.0)
            continue
        name = first.get(f"Position{a}Unit", "reference frame")
        if name.strip() not in UNIT_NAMES:
            logger.warning("OME plane position in '%s' is not a length: origin 0 used", name)
            return None
        origin.append(float(first.get(f"Position{a}")) * unit_scale(parse_unit(name), unit))
    return origin


def _imagej_spacing(tif: tifffile.TiffFile) -> tuple[list[float], Unit] | None:
    meta = tif.imagej_metadata or {}
    if "spacing" not in meta:
        return None
    page = tif.pages[0]
    in_plane = []
    for tag in ("XResolution", "YResolution"):
        numerator, denominator = page.tags[tag].value if tag in page.tags else (1, 1)
        in_plane.append(denominator / numerator)
    return [*in_plane, float(meta["spacing"])], parse_unit(meta.get("unit", "micron"))


def stack_to_volume(
    stack: np.ndarray, spacing: list[float], unit: Unit, fmt: str, origin: list[float] | None = None
) -> Volume:
    """(Z, Y, X[, 3]) stack -> `Volume` with array (X, Y, Z[, 3]) and a diagonal affine."""
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise MedsrError(f"invalid spacing {spacing}: three positive numbers are needed")
    array = np.transpose(stack, (2, 1, 0, 3) if stack.ndim == 4 else (2, 1, 0))
    affine = np.diag([*spacing, 1.0])
    if origin is not None:
        affine[:3, 3] = origin
    return Volume(array=array, affine=affine, meta={"format": fmt, "unit": unit})


def check_stack(stack: np.ndarray, source: Path) -> np.ndarray:
    if stack.ndim == 4 and stack.shape[-1] in (3, 4):
        return stack[..., :3]  # drop alpha
    if stack.ndim != 3:
        raise MedsrError(f"expected a stack of 2D sections in '{source}', got shape {stack.shape}")
    return stack


def read_tiff(path: Path, spacing: list[float] | None = None, unit: Unit | None = None) -> Volume:
    """Read a multi-page (OME/ImageJ) TIFF. `spacing` (X, Y, Z) overrides the metadata."""
    with tifffile.TiffFile(str(path)) as tif:
        stack = tif.series[0].asarray()
        found = None
        if tif.is_ome:
            found = _ome_spacing(tif)
        if found is None and tif.is_imagej:
            found = _imagej_spacing(tif)
        if spacing is None and found is not None:
            spacing, unit = found[0], unit or found[1]
        origin = _ome_origin(tif, unit or "um") if tif.is_ome else None
    stack = check_stack(np.squeeze(stack), path)
    if spacing is None:
        raise MedsrError(
            f"no spacing in the TIFF metadata of '{path}'; give it with --input-spacing X Y Z"
        )
    return stack_to_volume(stack, list(spacing), unit or "um", "tiff", origin)


def check_tiff_orientation(affine: np.ndarray, path: Path) -> None:
    """TIFF stores no orientation: only an axis-aligned affine with positive spacing (a diagonal
    3x3 part) can be written as TIFF. The one check of `check_output_path` and `write_ome_tiff`.

    Raises:
        MedsrError: `affine` is oblique or flipped.
    """
    linear = np.asarray(affine)[:3, :3]
    if not np.allclose(linear, np.diag(np.diag(linear))) or np.any(np.diag(linear) <= 0):
        raise MedsrError(
            f"'{path}': TIFF stores no orientation and this volume is not axis-aligned "
            "(oblique or flipped); write NIfTI or NRRD instead"
        )


def write_ome_tiff(volume: Volume, path: Path) -> None:
    """Write an OME-TIFF with physical sizes and plane positions (array in its own axis order).

    Each plane's ``PositionX/Y/Z`` (with units) is the world position of its first voxel's
    centre, so the origin of the grid (-9.75 µm for 20 µm sections upsampled to 0.5 µm) is kept.
    """
    check_tiff_orientation(volume.affine, path)
    is_rgb = volume.num_channels == 3
    stack = np.transpose(volume.array, (2, 1, 0, 3) if is_rgb else (2, 1, 0))
    unit = _OME_UNITS[volume.unit]
    sx, sy, sz = (float(s) for s in volume.spacing)
    x0, y0, z0 = (float(c) for c in volume.affine[:3, 3])
    planes = stack.shape[0]
    positions = {"PositionX": [x0] * planes, "PositionY": [y0] * planes}
    positions["PositionZ"] = [z0 + k * sz for k in range(planes)]
    positions.update({f"Position{a}Unit": [unit] * planes for a in "XYZ"})
    metadata = {
        "axes": "ZYXS" if is_rgb else "ZYX",
        "PhysicalSizeX": sx,
        "PhysicalSizeY": sy,
        "PhysicalSizeZ": sz,
        "PhysicalSizeXUnit": unit,
        "PhysicalSizeYUnit": unit,
        "PhysicalSizeZUnit": unit,
        "Plane": positions,
    }
    tifffile.imwrite(
        str(path),
        np.ascontiguousarray(stack),
        ome=True,
        photometric="rgb" if is_rgb else "minisblack",
        metadata=metadata,
        compression="zlib",
    )
