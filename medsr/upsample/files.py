"""File-level upsampling (`upsample_file`): read, check, upsample (each frame of a 4D series),
labels, and write the outputs with their provenance atomically."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from medsr.degrade import SLICE_PROFILES
from medsr.errors import MedsrError
from medsr.geometry import plan_output_grid
from medsr.io.paths import split_volume_name, volume_format
from medsr.io.read import read_volume, read_volume_frames, volume_frames
from medsr.io.volume import Unit, Volume
from medsr.io.write import check_output_path, write_volume
from medsr.provenance import provenance_path, sha256, write_provenance
from medsr.upsample.api import Method, upsample_volume
from medsr.upsample.checks import (
    check_confidence,
    check_confidence_output,
    check_ensemble_option,
    check_fit,
    check_input,
    check_labels_output,
    check_outputs,
    check_same_grid,
    check_series_fit,
    check_sidecars,
    default_output_path,
    fit_steps_of,
    labels_output_path,
    load_model,
    target_spacing,
)

logger = logging.getLogger(__name__)


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
    slice_profile: str | None = None,
    labels: str | os.PathLike[str] | None = None,
    labels_output: str | os.PathLike[str] | None = None,
    allow_coarser: bool = False,
    output_format: Literal["dicom"] | None = None,
    dicom_patient_id: str | None = None,
    dicom_modality: str | None = None,
    fit_frame: int | None = None,
    fit_per_frame: bool = False,
    confidence: str | os.PathLike[str] | None = None,
    **misr_options,
) -> Path:
    """Read, upsample and write one volume; the input file is never modified.

    With `align`, consecutive sections (slices along the thick axis) are first aligned rigidly
    (`medsr.histology.alignment`) and the transforms are written beside the output
    (``<output>.transforms.json``). `series` picks a DICOM series of a folder;
    `slice_thickness` (a length, as `spacing`) overrides the header's (DICOM's SliceThickness)
    and becomes the slice profile of the learned method's fit, with `slice_profile`'s shape
    (``"boxcar"``, ``"gaussian"``, ``"sinc"``; default: estimated from the scan,
    `medsr.upsample.profile`, where undecided the model's training family, the boxcar drawn
    three times per Gaussian). `labels`,
    a label map on the
    input's grid (a segmentation drawn on the thick slices), is written on the output's grid
    too (at `labels_output`, default `labels_output_path`), by shape-based interpolation.
    `output_format` ``"dicom"`` writes a DICOM series folder (default ``<input stem>_<method>``
    beside the input; `medsr.io.dicom`; labels then go to NIfTI). A 4D NIfTI series
    (`medsr.upsample.series4d`) is fitted once, on the mean of its frames or on frame
    `fit_frame` (`fit_per_frame`: each frame its own fit, as the 3D command), its frames are kept
    as they finish, and a rerun resumes an interrupted series. `confidence`, a path: the learned
    method's confidence map (`medsr.upsample.confidence`; of every frame of a 4D series, as one
    4D NIfTI) is written there too, with its own provenance sidecar.

    Raises:
        MedsrError: bad input, an isotropic input without an explicit target, an output (or
            label output) that exists (without `overwrite`), cannot be written, or is an input.
    """
    input_path = Path(input_path)
    output = _checked_output(input_path, output_path, method, output_format, overwrite)
    label_map, labels_path = None, None
    if labels is not None:
        labels_path = labels_output_path(output, labels_output)
        check_labels_output(labels_path, input_path, labels, output, overwrite)
        if not Path(labels).exists():
            raise MedsrError(f"label map not found: '{labels}' (--labels)")
        label_map = read_volume(labels)
    if confidence is not None:
        check_ensemble_option(method, dict(misr_options, confidence=True))  # both orientations
        confidence = Path(confidence)
        paths = {"the input": input_path, "-o": output, "--labels-out": labels_path}
        check_confidence_output(confidence, paths, overwrite)
    sidecars = [provenance_path(p) for p in (output, labels_path, confidence) if p is not None]
    sidecars += [output.with_name(output.name + ".transforms.json")] if align else []
    check_sidecars(sidecars, overwrite)
    frames = _frame_count(input_path, output, output_format)
    if frames > 1 and align:
        raise MedsrError(
            f"--align aligns the sections of one volume; '{input_path}' holds {frames}"
        )
    volume, spacing, misr_options = check_input_file(
        input_path,
        method=method,
        spacing=spacing,
        scale=scale,
        axis=axis,
        input_spacing=input_spacing,
        input_unit=input_unit,
        series=series,
        slice_thickness=slice_thickness,
        slice_profile=slice_profile,
        fit_frame=fit_frame,
        fit_per_frame=fit_per_frame,
        **misr_options,
    )
    check_outputs(output, labels_path, volume, overwrite, output_format)  # every check first
    if confidence is not None:
        check_confidence_output(confidence, {}, overwrite, affine=volume.affine, frames=frames)
    if output_format == "dicom":
        from medsr.io.dicom_tags import check_dicom_input

        check_dicom_input(volume, patient_id=dicom_patient_id, modality=dicom_modality)
    if label_map is not None:
        check_same_grid(label_map, volume, labels)
    if confidence is not None:
        grid = plan_output_grid(
            volume.spatial_shape, volume.affine, spacing=spacing, scale=scale, axis=axis
        )
        check_confidence(method, grid)
    options = dict(spacing=spacing, scale=scale, axis=axis, keep_dtype=keep_dtype)
    options.update(allow_coarser=allow_coarser, **misr_options)
    records = None
    if frames > 1:  # one fit for the series, frames kept as they finish (upsample.series4d)
        from medsr.upsample.series4d import upsample_series

        # the label map is computed before writing anything: both outputs or neither
        label_result = None if label_map is None else _labels_on_grid(label_map, volume, options)
        settings = dict(input_spacing=input_spacing, input_unit=input_unit)
        settings.update(slice_thickness=slice_thickness)
        if slice_profile:  # only then: earlier partial folders' settings stay the same
            settings.update(slice_profile=slice_profile)
        written, result, uncertainty = upsample_series(
            input_path,
            output,
            lambda: _frames(input_path, input_spacing, input_unit, slice_thickness, slice_profile),
            frames=frames,
            method=method,
            options=options,
            settings=settings,
            fit_frame=fit_frame,
            fit_per_frame=fit_per_frame,
            overwrite=overwrite,
            frame=volume,
            confidence=confidence,
        )
    else:
        if align:
            volume, records = _aligned(volume, axis)
        result = upsample_volume(
            volume, method=method, confidence=confidence is not None, **options
        )
        label_result = None if label_map is None else _labels_on_grid(label_map, volume, options)
        written = write_volume(
            result,
            output,
            overwrite=overwrite,
            fmt=output_format,
            patient_id=dicom_patient_id,
            modality=dicom_modality,
        )
    if label_result is not None:
        labels_written = write_volume(label_result, labels_path, overwrite=overwrite)
        _write_record(label_result, labels, labels_written)
    if confidence is not None and frames > 1:  # written with the series, frame by frame
        _write_record(uncertainty, input_path, confidence, frames=frames)
    elif confidence is not None:
        uncertainty = result.meta["confidence"]
        _write_record(
            uncertainty, input_path, write_volume(uncertainty, confidence, overwrite=overwrite)
        )
    _write_record(result, input_path, written, frames=frames)
    if records is not None:
        from medsr.histology.alignment import save_transforms

        save_transforms(records, written.with_name(written.name + ".transforms.json"))
    return written


class CheckedInput(NamedTuple):
    """What `check_input_file` read and resolved: the volume (a 4D series: its first frame, with
    the acquisition options applied), the target spacing in its unit (or None), and the learned
    method's options with the model loaded (``"loaded"``)."""

    volume: Volume
    spacing: float | None
    misr_options: dict


def check_input_file(
    input_path: str | os.PathLike[str],
    *,
    method: Method = "misr",
    spacing: float | str | None = None,
    scale: float | None = None,
    axis: int | None = None,
    input_spacing: Sequence[float] | None = None,
    input_unit: Unit | None = None,
    series: str | None = None,
    slice_thickness: float | str | None = None,
    slice_profile: str | None = None,
    fit_frame: int | None = None,
    fit_per_frame: bool = False,
    **misr_options,
) -> CheckedInput:
    """`upsample_file`'s checks of its input and the reconstruction's settings, without any
    reconstruction: the input is read (a 4D series: its first frame), its thick axis, slices,
    isotropy, target spacing, slice profile and, for the learned method, the model's factor
    range and the fit's extent are checked. Not the output side (paths, a 4D input to a
    non-NIfTI output, ``align`` with a 4D input, DICOM output tags). `upsample_file` runs it
    before its output checks that need the volume (so an error in both reports the input's
    first; nothing has been computed either way); `medsr batch --dry-run` runs it per input.

    Raises:
        MedsrError: the first problem found, in one line.
    """
    input_path = Path(input_path)
    frames = volume_frames(input_path) if input_path.is_file() else 1
    steps = fit_steps_of(misr_options)
    check_series_fit(frames, method, steps, fit_frame, fit_per_frame, input_path)
    check_ensemble_option(method, misr_options)
    check_slice_profile(slice_profile)
    read = dict(spacing=input_spacing, unit=input_unit, series=series)
    volume = _with_acquisition(  # a 4D series: its first frame, for the checks
        read_volume(input_path, **read, frame=0) if frames > 1 else read_volume(input_path, **read),
        slice_thickness,
        slice_profile,
    )
    spacing = target_spacing(spacing, volume.unit)
    check_input(volume, input_path, axis, explicit=spacing is not None or scale is not None)
    misr_options = _loaded_model(volume, input_path, method, spacing, scale, axis, misr_options)
    return CheckedInput(volume, spacing, misr_options)


def _checked_output(input_path: Path, output_path, method: str, output_format, overwrite) -> Path:
    """The output path (default: beside the input), checked before anything is read."""
    output = Path(output_path) if output_path else default_output_path(input_path, method)
    if output_format == "dicom" and not output_path:  # a series folder, not a file
        output = output.with_name(split_volume_name(output)[0])
    if output.exists() and input_path.exists() and output.resolve() == input_path.resolve():
        raise MedsrError(f"output '{output}' is the input; choose another output path")
    check_output_path(output, overwrite=overwrite, fmt=output_format)  # before reading: fail fast
    return output


def _frame_count(input_path: Path, output: Path, output_format) -> int:
    """How many volumes the input holds: above 1 for a 4D NIfTI series, written as NIfTI."""
    frames = volume_frames(input_path) if input_path.is_file() else 1
    if frames > 1 and (output_format or volume_format(output)) != "nifti":
        raise MedsrError(f"'{input_path}' holds {frames} volumes; write it as NIfTI (.nii.gz)")
    return frames


def _frames(input_path: Path, spacing, unit, slice_thickness, slice_profile):
    """The frames of a 4D series in order, one in memory at a time, as the checks saw frame 0."""
    for volume in read_volume_frames(input_path, spacing=spacing, unit=unit):
        yield _with_acquisition(volume, slice_thickness, slice_profile)


def check_slice_profile(profile: str | None) -> None:
    """Before any work: a named slice profile must be one the acquisition model knows."""
    if profile is not None and profile not in SLICE_PROFILES:
        raise MedsrError(
            f"unknown slice profile {profile!r}; use one of {', '.join(SLICE_PROFILES)}"
        )


def _with_acquisition(
    volume: Volume, slice_thickness: float | str | None, slice_profile: str | None = None
) -> Volume:
    """`volume` with ``meta["slice_thickness"]`` set from the option (a length) and
    ``meta["slice_profile"]`` from its option, where given."""
    if slice_thickness is None and slice_profile is None:
        return volume
    meta = dict(volume.meta)
    if slice_thickness is not None:
        meta["slice_thickness"] = target_spacing(slice_thickness, volume.unit, "--slice-thickness")
    if slice_profile is not None:
        meta["slice_profile"] = slice_profile
    return Volume(volume.array, volume.affine, meta)


def _loaded_model(volume, input_path, method, spacing, scale, axis, misr_options) -> dict:
    """The output grid is planned (its errors come before any work); for the learned method,
    `misr_options` with the model loaded, after checking its range, then the fit's extent."""
    grid = plan_output_grid(
        volume.spatial_shape, volume.affine, spacing=spacing, scale=scale, axis=axis
    )
    if method != "misr" or grid.step > 1 + 1e-6:  # no model (a coarser target: slab average)
        return misr_options
    misr_options = dict(misr_options, loaded=load_model(volume, grid, misr_options))
    check_fit(volume, grid, misr_options, f"'{input_path}'")
    return misr_options


def _aligned(volume: Volume, axis: int | None) -> tuple[Volume, list[dict]]:
    """The sections along the thick axis aligned rigidly, and their transforms."""
    from medsr.geometry import thick_axis
    from medsr.histology.alignment import align_sections

    return align_sections(volume, axis=thick_axis(volume.affine) if axis is None else axis)


def _labels_on_grid(label_map: Volume, volume: Volume, options: dict) -> Volume:
    """The label map on the grid that `volume` is upsampled onto (shape-based interpolation)."""
    grid = plan_output_grid(
        volume.spatial_shape,
        volume.affine,
        spacing=options["spacing"],
        scale=options["scale"],
        axis=options["axis"],
    )
    return upsample_volume(
        label_map,
        method="labels",
        spacing=float(grid.spacing),
        axis=grid.axis,
        allow_coarser=options["allow_coarser"],
    )


def _write_record(result: Volume, source, written: Path, **extra) -> None:
    """The provenance sidecar of `written`: what produced it, from `source` (and its sha256)."""
    record = dict(result.meta["provenance"], input=str(source), **extra)
    record["input_sha256"] = sha256(source)
    write_provenance(record, written)
