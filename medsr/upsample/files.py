"""File-level upsampling (`upsample_file`): read, check, upsample (each frame of a 4D series),
labels, and write the outputs with their provenance atomically."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from medsr.errors import MedsrError
from medsr.geometry import plan_output_grid
from medsr.io.paths import split_volume_name, volume_format
from medsr.io.read import read_volume, read_volume_frames, volume_frames
from medsr.io.volume import Unit, Volume
from medsr.io.write import check_output_path, write_volume
from medsr.provenance import sha256, write_provenance
from medsr.upsample.api import Method, upsample_volume
from medsr.upsample.checks import (
    check_fit,
    check_input,
    check_labels_output,
    check_outputs,
    check_same_grid,
    default_output_path,
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
                from medsr.io.dicom_tags import check_dicom_input

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
            from medsr.geometry import thick_axis
            from medsr.histology.alignment import align_sections

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
        from medsr.histology.alignment import save_transforms

        save_transforms(records, written.with_name(written.name + ".transforms.json"))
    return written
