"""`medsr info`: a volume's geometry, and what the methods would do with it."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsr.cli.options import add_input_geometry, input_geometry


def info_parser(commands) -> None:
    info = commands.add_parser(
        "info", help="print shape, spacing, orientation, thick axis and the default output grid"
    )
    info.add_argument("input")
    add_input_geometry(info, profile=False)


def info_command(args: argparse.Namespace) -> int:
    from medsr.io import read_volume, volume_frames

    input_spacing, input_unit = input_geometry(args)  # a bad --input-spacing is found first
    path = Path(args.input)
    if path.is_dir() and args.series is None and _listed_dicom_series(path, args.input):
        return 0
    frames = volume_frames(path) if path.is_file() else 1
    volume = read_volume(
        path,
        spacing=input_spacing,
        unit=input_unit,
        series=args.series,
        frame=0 if frames > 1 else None,
    )
    _print_geometry(volume, args.input, frames)
    _print_output_grid(volume)
    return 0


def _listed_dicom_series(path: Path, name: str) -> bool:
    """A folder of several DICOM series: list them (the user picks one with --series)."""
    from medsr.io import folder_kind
    from medsr.io.itk import list_dicom_series

    found = list_dicom_series(path) if folder_kind(path) == "dicom" else []
    if len(found) <= 1:
        return False
    print(f"folder:      {name} ({len(found)} DICOM series; pick one with --series)")
    for item in found:
        print(f"  {item.summary()}")
    return True


def _print_geometry(volume, name: str, frames: int) -> None:
    from medsr.geometry import anisotropy, orientation_codes, thick_axis

    spacing = " x ".join(f"{s:.4g}" for s in volume.spacing)
    channels = "RGB" if volume.num_channels == 3 else "grey"
    print(f"file:        {name} ({volume.meta.get('format', '?')})")
    print(
        f"shape:       {' x '.join(map(str, volume.spatial_shape))} ({channels}, "
        f"{volume.array.dtype})"
    )
    print(f"spacing:     {spacing} {volume.unit}")
    print(f"orientation: {orientation_codes(volume.affine)}")
    print(f"thick axis:  {thick_axis(volume.affine)}")
    print(f"anisotropy:  {anisotropy(volume.affine):.3g}")
    if frames > 1:
        print(f"volumes:     {frames} (a 4D series; each is upsampled as a 3D volume)")
    if "series_uid" in volume.meta:
        print(f"series:      {volume.meta['series_uid']}")
    if "slice_thickness" in volume.meta:
        print(f"thickness:   {volume.meta['slice_thickness']:.4g} {volume.unit} slices")


def _print_output_grid(volume) -> None:
    """What the default upsample would make of an anisotropic volume (nothing if isotropic)."""
    from medsr.geometry import ISOTROPY_TOLERANCE, anisotropy, plan_output_grid
    from medsr.upsample.checks import learned_coverage

    if anisotropy(volume.affine) < ISOTROPY_TOLERANCE:
        return
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    factor = volume.spacing[grid.axis] / grid.spacing
    print(
        f"output grid: {' x '.join(map(str, grid.shape))}, {grid.spacing:.4g} {volume.unit} "
        f"along axis {grid.axis} (factor {factor:.3g}, default upsample)"
    )
    print(f"learned:     {learned_coverage(factor)}")
