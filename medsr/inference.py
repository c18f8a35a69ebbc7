"""Upsampling drivers: a `Volume` in, a `Volume` on the planned output grid out, and the file-level
`upsample_file` that the CLI calls (read, check, upsample, write atomically)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from medsr.baselines import average_slabs, upsample_baseline
from medsr.errors import MedsrError
from medsr.geometry import ISOTROPY_TOLERANCE, OutputGrid, anisotropy, plan_output_grid
from medsr.io import (
    Volume,
    check_output_path,
    default_output_suffix,
    read_volume,
    read_volume_frames,
    split_volume_name,
    volume_format,
    volume_frames,
    write_volume,
)
from medsr.io.volume import Unit
from medsr.provenance import provenance_description, provenance_record, sha256, write_provenance

logger = logging.getLogger(__name__)

Method = Literal["misr", "linear", "bspline", "labels"]
METHODS: tuple[str, ...] = ("misr", "linear", "bspline", "labels")
#: default number of adaptation steps: about 25 s on 2 CPU cores for a 256x256x60 scan, which
#: keeps it under 60 s end to end with the 30 s reconstruction (docs/benchmarks.md)
DEFAULT_FIT_STEPS = 200
#: seed of the adaptation's patch sampling
DEFAULT_SEED = 0
#: fewest slices along the thick axis that a reconstruction needs
MIN_SLICES = 4


def default_model_path() -> Path:
    """The generator weights shipped inside the package."""
    return Path(str(resources.files("medsr") / "weights" / "misr_default.pt"))


def learned_factor_limit(config) -> float:
    """Largest factor a model covers: the top of the factor range it was trained on."""
    return float(config.data.max_factor)


def covers_factor(factor: float, limit: float) -> bool:
    """Whether a model trained up to `limit` covers `factor` (with float tolerance)."""
    return factor <= limit * (1 + 1e-6)


def check_learned_factor(factor: float, limit: float, unit_spacing: float, unit: str) -> None:
    """One-line error, with a target spacing that is reachable, above the learned range."""
    if not covers_factor(factor, limit):
        reachable = unit_spacing / limit
        raise MedsrError(
            f"factor {factor:.3g} is above the learned method's range (up to x{limit:.3g}); "
            f"use --spacing {reachable:.4g} ({unit}) or coarser, or --method bspline"
        )


def learned_coverage(factor: float, model: str | os.PathLike[str] | None = None) -> str:
    """One line: whether the learned method covers `factor` with `model` (default: shipped)."""
    from medsr.training import load_generator

    _, config = load_generator(model or default_model_path())
    limit = learned_factor_limit(config)
    if covers_factor(factor, limit):
        return f"covered (misr works up to x{limit:.3g})"
    return f"not covered: x{factor:.3g} is above misr's x{limit:.3g}; use --spacing or bspline"


def check_fit(volume: Volume, grid: OutputGrid, options: dict, name: str) -> None:
    """The per-scan fit (``options["fit_steps"]`` > 0) can draw its patches from `volume`."""
    if options.get("fit_steps", DEFAULT_FIT_STEPS) > 0:
        from medsr.adaptation import check_fit_extent

        factor = float(volume.spacing[grid.axis] / grid.spacing)
        check_fit_extent(volume.spatial_shape, grid.axis, factor, name)


def load_model(volume: Volume, grid: OutputGrid, options: dict) -> tuple:
    """(generator on the CPU, config) of ``options["model"]`` (default: shipped), after checking
    that the model covers the factor from `volume` to `grid`."""
    from medsr.training import load_generator

    generator, config = load_generator(options.get("model") or default_model_path())
    factor = float(volume.spacing[grid.axis] / grid.spacing)
    check_learned_factor(
        factor, learned_factor_limit(config), volume.spacing[grid.axis], volume.unit
    )
    return generator, config


def upsample_misr(
    volume: Volume,
    grid: OutputGrid,
    *,
    model: str | os.PathLike[str] | None = None,
    fit_steps: int = DEFAULT_FIT_STEPS,
    fit_seconds: float | None = None,
    seed: int = DEFAULT_SEED,
    device: str | None = None,
    batch_size: int = 8,
    progress: bool = False,
    loaded: tuple | None = None,
) -> tuple[np.ndarray, dict]:
    """Learned reconstruction on `grid` (float32, input units) and what produced it.

    Args:
        volume: input, grey or RGB (channels share one model); anisotropic, or isotropic with an
            explicit target.
        grid: output grid; the fit learns its axis and factor.
        model: checkpoint from ``medsr train`` (default: the shipped weights).
        fit_steps: steps adapting the model to this scan's own in-plane slices (0: prior only).
        fit_seconds: optional upper bound on the adaptation's wall time.
        seed: seed of the adaptation.
        device: ``"auto"``/None, ``"cpu"`` or ``"cuda:N"``.
        batch_size: planes per generator call.
        progress: progress bars for fitting and reconstruction.
        loaded: (generator, config) already loaded by `load_model` for this `model`.

    Returns:
        (array on `grid`, provenance dict: model and its sha256, steps run, seed, device).
    """
    from tqdm import tqdm

    from medsr.adaptation import adapt_to_scan
    from medsr.reconstruction import reconstruct_volume
    from medsr.runtime import resolve_device

    model_path = Path(model) if model else default_model_path()
    torch_device = resolve_device(device)
    generator, config = loaded or load_model(volume, grid, {"model": model})
    generator = generator.to(torch_device)
    grey = volume.array if volume.num_channels == 1 else volume.array.mean(axis=3)
    thickness = volume.meta.get("slice_thickness")
    ratio = None if thickness is None else float(thickness / volume.spacing[grid.axis])
    generator, steps_run = adapt_to_scan(
        generator,
        config,
        volume.with_array(grey),
        axis=grid.axis,
        factor=float(volume.spacing[grid.axis] / grid.spacing),
        steps=fit_steps,
        seconds=fit_seconds,
        seed=seed,
        thickness_ratio=ratio,
        device=torch_device,
        progress=progress,
    )
    planes = sum(volume.spatial_shape[a] for a in range(3) if a != grid.axis)
    bar = tqdm(
        total=planes * volume.num_channels, disable=not progress, unit="plane", desc="reconstruct"
    )
    result = reconstruct_volume(
        volume, grid, generator, device=torch_device, batch_size=batch_size, on_batch=bar.update
    )
    bar.close()
    provenance = {
        "model": str(model_path) if model else "shipped:misr_default.pt",
        "model_sha256": sha256(model_path),
        "fit_steps": int(fit_steps),
        "fit_steps_run": int(steps_run),
        "fit_seconds_limit": fit_seconds,
        "seed": int(seed),
        "device": str(torch_device),
        "slice_thickness_ratio": ratio,
    }
    return result, provenance


def upsample_volume(
    volume: Volume,
    *,
    method: Method = "misr",
    spacing: float | None = None,
    scale: float | None = None,
    axis: int | None = None,
    keep_dtype: bool = True,
    allow_coarser: bool = False,
    **misr_options,
) -> Volume:
    """Upsample `volume` along its thick axis onto the grid of the slab convention.

    Args:
        volume: anisotropic input, (X, Y, Z) or (X, Y, Z, 3).
        method: ``"misr"`` (learned), ``"linear"``, ``"bspline"``, or ``"labels"`` for a label
            map (shape-based interpolation, `medsr.labels`).
        spacing: target thick-axis spacing in the volume's unit (default: finest in-plane).
        scale: upsampling factor instead of `spacing`.
        axis: array axis to upsample (default: the thick axis found from the affine).
        keep_dtype: return the input dtype (integers rounded and clipped) rather than float32.
        allow_coarser: accept a target coarser than the input's thick spacing; the output is then
            the input integrated over each output slab (anti-aliased, any method).
        **misr_options: `upsample_misr` options (model, fit_steps, fit_seconds, seed, device,
            batch_size, progress).

    Returns:
        The upsampled volume; its affine covers the input's physical extent, and
        ``meta["provenance"]`` records what produced it (`provenance_record`).
    """
    from medsr.transforms import restore_dtype

    grid = plan_output_grid(
        volume.spatial_shape, volume.affine, spacing=spacing, scale=scale, axis=axis
    )
    details: dict = {}
    if grid.step > 1 + 1e-6:
        if not allow_coarser:
            raise MedsrError(
                f"target spacing {grid.spacing:.4g} {volume.unit} is coarser than the input's "
                f"{volume.spacing[grid.axis]:.4g} {volume.unit}; give --allow-coarser to "
                "downsample (integrated over each slab)"
            )
        if method == "labels":  # label IDs are names, not amounts: the majority, not the mean
            from medsr.labels import majority_labels

            result, method = majority_labels(volume, grid), "slab-majority"
        else:
            result, method = average_slabs(volume, grid, keep_dtype=keep_dtype), "slab-average"
    elif method not in METHODS:
        raise MedsrError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    elif method == "misr" and misr_options.get("loaded") is None:
        # the model, its range and the fit, before anything is logged or computed
        misr_options = dict(misr_options, loaded=load_model(volume, grid, misr_options))
        check_fit(volume, grid, misr_options, "the volume")
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
        result = upsample_baseline(volume, grid, method, keep_dtype=keep_dtype)
    elif method == "labels":
        from medsr.labels import upsample_labels

        result = upsample_labels(volume, grid)
    elif method == "misr":
        array, details = upsample_misr(volume, grid, **misr_options)
        if keep_dtype:
            array = restore_dtype(array, volume.array.dtype, volume.meta.get("scaling"))
        result = volume.with_array(array, grid.affine)
    record = provenance_record(volume, grid, method, details)
    result.meta["provenance"] = record
    result.meta["description"] = provenance_description(record)
    return result


def target_spacing(
    spacing: float | str | None, unit: Unit, option: str = "--spacing"
) -> float | None:
    """A length (``0.5``, ``"0.5mm"``, ``"2um"``) in the volume's `unit`; a bare number is
    already in that unit."""
    from medsr.io.volume import parse_length, unit_scale

    if spacing is None:
        return None
    try:
        value, given = parse_length(spacing)
    except ValueError as error:
        raise MedsrError(f"{option}: {error}") from error
    value = value * unit_scale(given, unit) if given else value
    logger.debug("%s: %.4g %s", option.lstrip("-").replace("-", " "), value, unit)
    return value


def default_output_path(input_path: Path, method: str) -> Path:
    """``scan.nii.gz`` -> ``scan_misr.nii.gz`` beside it (format: `default_output_suffix`); a
    folder's output goes beside the folder, never inside it (``.`` included)."""
    input_path = Path(input_path).resolve() if Path(input_path).exists() else Path(input_path)
    stem, _ = split_volume_name(input_path)
    return input_path.parent / f"{stem}_{method}{default_output_suffix(input_path)}"


def labels_output_path(output: Path, labels_output: str | os.PathLike[str] | None) -> Path:
    """Where the label map of ``--labels`` goes: `labels_output`, default
    ``<output stem>_labels<suffix>`` beside `output`."""
    if labels_output is not None:
        return Path(labels_output)
    stem, suffix = split_volume_name(Path(output))
    suffix = suffix or ".nii.gz"  # beside a DICOM series folder
    return Path(output).with_name(f"{stem}_labels{suffix}")


def check_labels_output(labels_output: Path, input_path: Path, labels, output: Path, overwrite):
    """The label output gets the main output's checks, and is none of the other files."""
    for other, what in ((input_path, "the input"), (Path(labels), "--labels"), (output, "-o")):
        if labels_output.absolute() == other.absolute() or (
            labels_output.exists() and other.exists() and labels_output.samefile(other)
        ):
            raise MedsrError(f"--labels-out '{labels_output}' is {what}; choose another path")
    check_output_path(labels_output, overwrite=overwrite)


def upsample_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None = None,
    *,
    method: Method = "misr",
    spacing: float | str | None = None,
    scale: float | None = None,
    axis: int | None = None,
    input_spacing: Sequence[float] | None = None,
    input_unit: Unit | None = None,
    keep_dtype: bool = True,
    overwrite: bool = False,
    align: bool = False,
    series: str | None = None,
    slice_thickness: float | str | None = None,
    labels: str | os.PathLike[str] | None = None,
    labels_output: str | os.PathLike[str] | None = None,
    allow_coarser: bool = False,
    output_format: Literal["dicom"] | None = None,
    dicom_patient_id: str | None = None,
    dicom_modality: str | None = None,
    **misr_options,
) -> Path:
    """Read, upsample and write one volume; the input file is never modified.

    With `align`, consecutive sections (slices along the thick axis) are first aligned rigidly
    (`medsr.alignment`) and the transforms are written beside the output
    (``<output>.transforms.json``). `series` picks a DICOM series of a folder;
    `slice_thickness` (a length, as `spacing`) overrides the header's (DICOM's SliceThickness)
    and becomes the slice profile of the learned method's fit. `labels`, a label map on the
    input's grid (a segmentation drawn on the thick slices), is written on the output's grid
    too (at `labels_output`, default `labels_output_path`), by shape-based interpolation.
    `output_format` ``"dicom"`` writes a DICOM series folder (default ``<input stem>_<method>``
    beside the input; `medsr.io.dicom`; labels then go to NIfTI). A 4D NIfTI series is read
    once, and each of its volumes is upsampled as the 3D command would.

    Raises:
        MedsrError: bad input, an isotropic input without an explicit target, an output (or
            label output) that exists (without `overwrite`), cannot be written, or is an input.
    """
    input_path = Path(input_path)
    output = Path(output_path) if output_path else default_output_path(input_path, method)
    if output_format == "dicom" and not output_path:  # a series folder, not a file
        output = output.with_name(split_volume_name(output)[0])
    if output.exists() and input_path.exists() and output.resolve() == input_path.resolve():
        raise MedsrError(f"output '{output}' is the input; choose another output path")
    check_output_path(output, overwrite=overwrite, fmt=output_format)  # before reading: fail fast
    label_map, labels_path = None, None
    if labels is not None:
        labels_path = labels_output_path(output, labels_output)
        check_labels_output(labels_path, input_path, labels, output, overwrite)
        label_map = read_volume(labels)
    frames = volume_frames(input_path) if input_path.is_file() else 1
    if frames > 1 and (output_format or volume_format(output)) != "nifti":
        raise MedsrError(f"'{input_path}' holds {frames} volumes; write it as NIfTI (.nii.gz)")
    results, records = [], None
    volumes = (
        read_volume_frames(input_path, spacing=input_spacing, unit=input_unit)
        if frames > 1
        else [read_volume(input_path, spacing=input_spacing, unit=input_unit, series=series)]
    )
    for frame, volume in enumerate(volumes):  # a 4D series: each as the 3D command does it
        if slice_thickness is not None:
            thickness = target_spacing(slice_thickness, volume.unit, "--slice-thickness")
            volume = Volume(
                volume.array, volume.affine, {**volume.meta, "slice_thickness": thickness}
            )
        if frame == 0:
            check_outputs(output, labels_path, volume, overwrite, output_format)
            if output_format == "dicom":
                from medsr.io.dicom import check_dicom_input

                check_dicom_input(volume, patient_id=dicom_patient_id, modality=dicom_modality)
            spacing = target_spacing(spacing, volume.unit)
            check_input(volume, input_path, axis, explicit=spacing is not None or scale is not None)
            if label_map is not None:
                check_same_grid(label_map, volume, labels)
            grid = plan_output_grid(
                volume.spatial_shape, volume.affine, spacing=spacing, scale=scale, axis=axis
            )
            if method == "misr" and grid.step <= 1 + 1e-6:  # the model's range, then the fit's
                misr_options = dict(misr_options, loaded=load_model(volume, grid, misr_options))
                check_fit(volume, grid, misr_options, f"'{input_path}'")
        if align:
            from medsr.alignment import align_sections
            from medsr.geometry import thick_axis

            sections_axis = thick_axis(volume.affine) if axis is None else axis
            volume, records = align_sections(volume, axis=sections_axis)
        options = dict(
            spacing=spacing,
            scale=scale,
            axis=axis,
            keep_dtype=keep_dtype,
            allow_coarser=allow_coarser,
        )
        results.append(upsample_volume(volume, method=method, **options, **misr_options))
        if frames > 1:
            logger.info("volume %d of %d done", frame + 1, frames)
    result = results[0]
    if label_map is not None:  # computed before writing anything: both outputs or neither
        grid_record = result.meta["provenance"]
        label_result = upsample_volume(
            label_map,
            method="labels",
            spacing=grid_record["output_spacing"],
            axis=grid_record["thick_axis"],
            allow_coarser=allow_coarser,
        )
    written = write_volume(
        result,
        output,
        overwrite=overwrite,
        frames=results if frames > 1 else None,
        fmt=output_format,
        patient_id=dicom_patient_id,
        modality=dicom_modality,
    )
    if label_map is not None:
        labels_written = write_volume(label_result, labels_path, overwrite=overwrite)
        label_record = dict(label_result.meta["provenance"], input=str(labels))
        write_provenance(dict(label_record, input_sha256=sha256(labels)), labels_written)
    record = dict(result.meta["provenance"], input=str(input_path), frames=frames)
    record["input_sha256"] = sha256(input_path)
    write_provenance(record, written)
    if records is not None:
        from medsr.alignment import save_transforms

        save_transforms(records, written.with_name(written.name + ".transforms.json"))
    return written


def check_outputs(
    output: Path,
    labels_path: Path | None,
    volume: Volume,
    overwrite: bool,
    output_format: str | None = None,
) -> None:
    """The outputs' checks that need the volume (TIFF holds no orientation), before any work."""
    check_output_path(output, overwrite=overwrite, affine=volume.affine, fmt=output_format)
    if labels_path is not None:
        check_output_path(labels_path, overwrite=overwrite, affine=volume.affine)


def check_same_grid(label_map: Volume, volume: Volume, path) -> None:
    """A label map must lie on its image's voxel grid (same shape and affine)."""
    tolerance = 1e-3 * max(1.0, float(np.abs(volume.affine).max()))
    if label_map.spatial_shape != volume.spatial_shape or not np.allclose(
        label_map.affine, volume.affine, atol=tolerance
    ):
        raise MedsrError(
            f"label map '{path}' ({' x '.join(map(str, label_map.spatial_shape))}) does not lie "
            "on the image's voxel grid (shape and affine must match)"
        )


def check_input(volume: Volume, path: Path, axis: int | None, *, explicit: bool) -> None:
    """Before any work: at least `MIN_SLICES` slices along the thick axis, and an anisotropic
    volume unless the target is explicit (--spacing or --scale)."""
    from medsr.geometry import thick_axis

    thick = thick_axis(volume.affine) if axis is None else axis
    count = volume.spatial_shape[thick]
    if count < MIN_SLICES:
        raise MedsrError(
            f"'{path}' has {count} slice(s) along its thick axis {thick}; at least {MIN_SLICES} "
            "are needed to reconstruct between them"
        )
    if anisotropy(volume.affine) < ISOTROPY_TOLERANCE and not explicit:
        spacing_text = " x ".join(f"{s:.4g}" for s in volume.spacing)
        raise MedsrError(
            f"'{path}' is already isotropic ({spacing_text} {volume.unit}); "
            "nothing written (give --spacing or --scale to resample anyway)"
        )
