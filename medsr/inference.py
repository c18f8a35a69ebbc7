"""Upsampling drivers: a `Volume` in, a `Volume` on the planned output grid out, and the file-level
`upsample_file` that the CLI calls (read, check, upsample, write atomically)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from medsr.baselines import upsample_baseline
from medsr.errors import MedsrError
from medsr.geometry import ISOTROPY_TOLERANCE, anisotropy, plan_output_grid
from medsr.io import Volume, read_volume, volume_format, write_volume
from medsr.io.volume import Unit

logger = logging.getLogger(__name__)

Method = Literal["linear", "bspline"]
METHODS: tuple[str, ...] = ("linear", "bspline")


def upsample_volume(
    volume: Volume,
    *,
    method: Method = "bspline",
    spacing: float | None = None,
    scale: float | None = None,
    axis: int | None = None,
    keep_dtype: bool = True,
) -> Volume:
    """Upsample `volume` along its thick axis onto the grid of the slab convention.

    Args:
        volume: anisotropic input, (X, Y, Z) or (X, Y, Z, 3).
        method: ``"linear"`` or ``"bspline"``.
        spacing: target thick-axis spacing in the volume's unit (default: finest in-plane).
        scale: upsampling factor instead of `spacing`.
        axis: array axis to upsample (default: the thick axis found from the affine).
        keep_dtype: return the input dtype (integers rounded and clipped) rather than float32.

    Returns:
        The upsampled volume; its affine covers the input's physical extent.
    """
    grid = plan_output_grid(
        volume.spatial_shape, volume.affine, spacing=spacing, scale=scale, axis=axis
    )
    logger.info(
        "thick axis %d: %d slices -> %d slices of %.4g %s (%s)",
        grid.axis,
        volume.spatial_shape[grid.axis],
        grid.shape[grid.axis],
        grid.spacing,
        volume.unit,
        method,
    )
    if method in ("linear", "bspline"):
        return upsample_baseline(volume, grid, method, keep_dtype=keep_dtype)
    raise MedsrError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")


def default_output_path(input_path: Path, method: str) -> Path:
    """``scan.nii.gz`` -> ``scan_bspline.nii.gz`` beside it; folders and DICOM give NIfTI."""
    if input_path.is_dir():
        return input_path.parent / f"{input_path.name}_{method}.nii.gz"
    name = input_path.name
    fmt = volume_format(input_path)
    suffixes = {"nifti": (".nii.gz", ".nii"), "tiff": (".ome.tiff", ".ome.tif", ".tiff", ".tif")}
    for suffix in suffixes.get(fmt, (input_path.suffix,)):
        if name.lower().endswith(suffix):
            stem = name[: -len(suffix)]
            break
    new_suffix = {"tiff": ".ome.tif", "dicom": ".nii.gz"}.get(fmt, suffix)
    return input_path.parent / f"{stem}_{method}{new_suffix}"


def upsample_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None = None,
    *,
    method: Method = "bspline",
    spacing: float | None = None,
    scale: float | None = None,
    axis: int | None = None,
    input_spacing: Sequence[float] | None = None,
    input_unit: Unit | None = None,
    keep_dtype: bool = True,
    overwrite: bool = False,
) -> Path:
    """Read, upsample and write one volume; the input file is never modified.

    Raises:
        MedsrError: bad input, an isotropic input without an explicit target, an output that
            exists (without `overwrite`) or that is the input itself.
    """
    input_path = Path(input_path)
    output = Path(output_path) if output_path else default_output_path(input_path, method)
    if output.exists() and input_path.exists() and output.resolve() == input_path.resolve():
        raise MedsrError(f"output '{output}' is the input; choose another output path")
    volume_format(output)  # unknown output extension: fail before the work
    if output.exists() and not overwrite:
        raise MedsrError(f"output exists: '{output}' (use --overwrite to replace it)")
    volume = read_volume(input_path, spacing=input_spacing, unit=input_unit)
    ratio = anisotropy(volume.affine)
    if ratio < ISOTROPY_TOLERANCE and spacing is None and scale is None:
        spacing_text = " x ".join(f"{s:.4g}" for s in volume.spacing)
        raise MedsrError(
            f"'{input_path}' is already isotropic ({spacing_text} {volume.unit}); "
            "nothing written (give --spacing or --scale to resample anyway)"
        )
    result = upsample_volume(
        volume, method=method, spacing=spacing, scale=scale, axis=axis, keep_dtype=keep_dtype
    )
    return write_volume(result, output, overwrite=overwrite)
