"""Folders of 2D section images (serial histology) read as one stack.

A folder holds one image per section (TIFF, PNG or JPEG; grey or RGB), in the order of
``order.txt`` or in natural sort order, with the spacing in a ``series.json`` sidecar. Which
folders are section folders is decided by `medsr.io.paths.folder_kind`, beside the DICOM rule.
The stack is placed on a diagonal affine as a TIFF stack is (`medsr.io.tiff.stack_to_volume`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import tifffile

from medsr.errors import MedsrError
from medsr.io.paths import ORDER_FILE, SECTION_SUFFIXES, SERIES_FILE
from medsr.io.tiff import check_stack, parse_unit, stack_to_volume
from medsr.io.volume import Unit, Volume

#: names medsr gives its outputs (``<name>_misr.ome.tif``...): never read back as sections
MEDSR_OUTPUT = re.compile(r"_(misr|bspline|linear|labels)(\.ome)?\.tiff?$", re.IGNORECASE)

logger = logging.getLogger(__name__)


def natural_key(name: str) -> list[object]:
    """Sort key that orders ``s2`` before ``s10`` (digits compared as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


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
    sidecar = directory / SERIES_FILE
    info = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.exists() else {}
    if spacing is None and info:
        spacing, unit = info["spacing"], unit or parse_unit(info.get("unit", "um"))
    if spacing is None:
        raise MedsrError(
            f"no spacing for the sections in '{directory}'; give --input-spacing "
            "X Y Z or a series.json sidecar"
        )
    stack = check_stack(np.stack(sections), directory)
    volume = stack_to_volume(stack, list(spacing), unit or "um", "sections")
    if "thickness" in info:
        volume.meta["slice_thickness"] = float(info["thickness"])
    return volume
