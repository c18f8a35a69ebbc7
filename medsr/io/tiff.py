"""TIFF stacks (multi-page, OME or ImageJ) and folders of 2D section images.

TIFF carries no orientation, so a stack is placed on a diagonal affine: array axis x runs along
image columns, y along rows, z along pages/sections, all with positive spacing. Spacing comes, in
this order, from `spacing` given by the caller, OME physical sizes, ImageJ metadata (z spacing
and unit) with the X/YResolution tags, or a ``series.json`` sidecar. The origin (the centre of
the first voxel) is the OME position of the first plane (``Plane PositionX/Y/Z``), 0 without it.
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import tifffile

from medsr.errors import MedsrError
from medsr.io.volume import UNIT_NAMES, Unit, Volume, unit_scale

SECTION_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_OME_UNITS = {"um": "µm", "mm": "mm"}

logger = logging.getLogger(__name__)


def natural_key(name: str) -> list[object]:
    """Sort key that orders ``s2`` before ``s10`` (digits compared as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


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


def _stack_to_volume(
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


def _check_stack(stack: np.ndarray, source: Path) -> np.ndarray:
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
    stack = _check_stack(np.squeeze(stack), path)
    if spacing is None:
        raise MedsrError(
            f"no spacing in the TIFF metadata of '{path}'; give it with --input-spacing X Y Z"
        )
    return _stack_to_volume(stack, list(spacing), unit or "um", "tiff", origin)


def read_section(path: Path) -> np.ndarray:
    """One 2D section image (TIFF via tifffile, PNG/JPEG via Pillow; RGB or grey)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return tifffile.imread(str(path))
        from PIL import Image

        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB") if image.mode not in ("L", "I;16") else image)
    except Exception as error:  # any decoder failure names the section
        raise MedsrError(f"cannot read section '{path}': {error}") from error


ORDER_FILE = "order.txt"
#: names medsr gives its outputs (``<name>_misr.ome.tif``...): never read back as sections
MEDSR_OUTPUT = re.compile(r"_(misr|bspline|linear|labels)(\.ome)?\.tiff?$", re.IGNORECASE)


def list_sections(directory: Path) -> list[Path]:
    """Section image files in `directory`: in the order of ``order.txt`` (one file name per line,
    ``#`` comments) when present, else in natural sort order."""
    order = directory / ORDER_FILE
    if order.exists():
        names = [line.strip() for line in order.read_text(encoding="utf-8").splitlines()]
        files = [directory / name for name in names if name and not name.startswith("#")]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise MedsrError(f"section(s) listed in '{order}' are missing: {', '.join(missing)}")
        return files
    files = [
        p
        for p in directory.iterdir()
        if p.suffix.lower() in SECTION_SUFFIXES and not MEDSR_OUTPUT.search(p.name)
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def border_value(section: np.ndarray) -> np.ndarray:
    """Median of the outermost pixels: the slide background (white for H&E, dark for
    fluorescence), used to pad smaller sections so that padding looks like empty glass."""
    border = np.concatenate([section[0], section[-1], section[:, 0], section[:, -1]])
    return np.median(border, axis=0).astype(section.dtype)


def pad_sections(sections: list[np.ndarray], names: list[str]) -> list[np.ndarray]:
    """Centre every section on the largest height and width, padding with its background."""
    height = max(s.shape[0] for s in sections)
    width = max(s.shape[1] for s in sections)
    padded, changed = [], []
    for name, section in zip(names, sections, strict=True):
        if section.shape[:2] == (height, width):
            padded.append(section)
            continue
        top, left = (height - section.shape[0]) // 2, (width - section.shape[1]) // 2
        canvas = np.empty((height, width, *section.shape[2:]), dtype=section.dtype)
        canvas[...] = border_value(section)
        canvas[top : top + section.shape[0], left : left + section.shape[1]] = section
        padded.append(canvas)
        changed.append(name)
    if changed:
        logger.warning(
            "padded %d of %d sections to %dx%d with their background: %s",
            len(changed),
            len(sections),
            height,
            width,
            ", ".join(changed),
        )
    return padded


def read_section_folder(
    directory: Path, spacing: list[float] | None = None, unit: Unit | None = None
) -> Volume:
    """Read a folder of 2D section images as one stack.

    Order: ``order.txt`` or natural sort. Sections of unequal size are centred and padded with
    their background (a warning says which). Spacing comes from `spacing` or from ``series.json``
    (``{"spacing": [x, y, z], "unit": "um", "thickness": t}``); the optional section
    ``thickness`` (same unit; thin sections far apart have t well below z) becomes
    ``meta["slice_thickness"]``, the slice profile of the learned method's fit.
    """
    files = list_sections(directory)
    if not files:
        raise MedsrError(f"no section images ({', '.join(SECTION_SUFFIXES)}) in '{directory}'")
    sections = [read_section(path) for path in files]
    kinds = {(s.ndim, s.shape[2] if s.ndim == 3 else 1) for s in sections}
    if len(kinds) > 1:
        raise MedsrError(f"sections in '{directory}' mix grey and colour images")
    sections = pad_sections(sections, [f.name for f in files])
    sidecar = directory / "series.json"
    info = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.exists() else {}
    if spacing is None and info:
        spacing, unit = info["spacing"], unit or parse_unit(info.get("unit", "um"))
    if spacing is None:
        raise MedsrError(
            f"no spacing for the sections in '{directory}'; give --input-spacing "
            "X Y Z or a series.json sidecar"
        )
    stack = _check_stack(np.stack(sections), directory)
    volume = _stack_to_volume(stack, list(spacing), unit or "um", "sections")
    if "thickness" in info:
        volume.meta["slice_thickness"] = float(info["thickness"])
    return volume


def write_ome_tiff(volume: Volume, path: Path) -> None:
    """Write an OME-TIFF with physical sizes and plane positions (array in its own axis order).

    Each plane's ``PositionX/Y/Z`` (with units) is the world position of its first voxel's
    centre, so the origin of the grid (-9.75 µm for 20 µm sections upsampled to 0.5 µm) is kept.
    """
    linear = volume.affine[:3, :3]
    if not np.allclose(linear, np.diag(np.diag(linear))) or np.any(np.diag(linear) <= 0):
        raise MedsrError(
            "TIFF stores no orientation: only axis-aligned volumes with positive "
            "spacing can be written as TIFF; write NIfTI or NRRD instead"
        )
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
