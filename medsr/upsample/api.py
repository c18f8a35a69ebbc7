"""Upsampling drivers: a `Volume` in, a `Volume` on the planned output grid out, and the file-level
`upsample_file` that the CLI calls (read, check, upsample, write atomically)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np

from medsr.config import PLANE_BATCH
from medsr.errors import MedsrError
from medsr.geometry import OutputGrid, plan_output_grid
from medsr.io import (
    Volume,
)
from medsr.nets.checkpoint import default_model_path
from medsr.provenance import provenance_description, provenance_record, sha256
from medsr.upsample.baseline import average_slabs, upsample_baseline
from medsr.upsample.checks import (
    DEFAULT_SEED,
    check_ensemble_option,
    check_fit,
    load_model,
)

logger = logging.getLogger(__name__)

Method = Literal["misr", "linear", "bspline", "labels"]
METHODS: tuple[str, ...] = ("misr", "linear", "bspline", "labels")


def upsample_misr(
    volume: Volume,
    grid: OutputGrid,
    *,
    model: str | os.PathLike[str] | None = None,
    fit_steps: int | None = None,
    fit_seconds: float | None = None,
    seed: int = DEFAULT_SEED,
    device: str | None = None,
    batch_size: int = PLANE_BATCH,
    progress: bool = False,
    loaded: tuple | None = None,
    precision: str = "auto",
    confidence: bool = False,
    calibrate: bool = True,
    ensemble: int | None = None,
    orientations: int | None = None,
) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """Learned reconstruction on `grid` (float32, input units) and what produced it.

    Args:
        volume: input, grey or RGB (channels share one model); anisotropic, or isotropic with an
            explicit target.
        grid: output grid; the fit learns its axis and factor.
        model: checkpoint from ``medsr train`` (default: the shipped weights).
        fit_steps: steps adapting the model to this scan's own in-plane slices (0: prior only;
            None: the default, `medsr.upsample.budget.default_work`: for the fit's arithmetic,
            and on a float32 CPU sized to a time budget with the passes).
        fit_seconds: optional upper bound on the adaptation's wall time.
        seed: seed of the adaptation.
        device: ``"auto"``/None, ``"cpu"`` or ``"cuda:N"``.
        batch_size: planes per generator call.
        progress: progress bars for fitting and reconstruction.
        loaded: (generator, config) already loaded by `load_model` for this `model`.
        precision: the arithmetic of fit and reconstruction: ``"auto"`` (bf16 autocast of the
            encoder's convolutions on a CPU with native bf16, its cost against float32 measured
            in docs/benchmarks.md, "The fit on the CPU"; fp16 autocast on CUDA; float32
            otherwise), ``"bf16"`` or ``"fp32"`` (`medsr.runtime.resolve_precision`).
        confidence: also compute the confidence map (`medsr.upsample.confidence`).
        calibrate: without a fit, scale the prior's residual over B-spline by the gain fitted
            on calibration slabs (`medsr.upsample.heldout.calibrated`; after a fit only with
            `medsr.upsample.adapt.CALIBRATE_AFTER_FIT`); off for a model that must not be
            calibrated again (a 4D series' frames after its one fit or calibration).
        ensemble: reconstruction passes averaged per orientation, flipped (1, 2, 4 or 8;
            `medsr.upsample.ensemble.ENSEMBLE_FLIPS`); None: as many as the output's size
            (times its channels) allows (`medsr.upsample.checks.default_ensemble`), on a
            float32 CPU only those its time budget allows (`default_work`).
        orientations: through-plane orientations reconstructed and averaged (2, or 1: half the
            reconstruction's cost, `medsr.upsample.reconstruct.plane_orientations`); None: 2,
            on a float32 CPU 1 where both would not leave the fit its fewest steps within the
            time budget (`default_work`), but 2 with `confidence` or a given `ensemble` above 1.

    Returns:
        (array on `grid`, provenance dict: model and its sha256, steps run, seed, device, the
        confidence map on `grid` or None).
    """
    from tqdm import tqdm

    from medsr.runtime import (
        fit_precision,
        release_freed_memory,
        resolve_device,
        resolve_precision,
    )
    from medsr.upsample.adapt import FIT_PIXEL_LOSS, adapt_to_grid, fit_facts, thickness_ratio
    from medsr.upsample.budget import default_work
    from medsr.upsample.reconstruct import plane_orientations, reconstruct_volume

    model_path = Path(model) if model else default_model_path()
    torch_device = resolve_device(device)
    resolved = resolve_precision(precision, torch_device)
    asked = dict(
        fit_steps=fit_steps,
        ensemble=ensemble,
        orientations=orientations,
        confidence=confidence,
        precision=resolved,
        device=torch_device,
    )
    plan = default_work(asked, volume.spatial_shape, grid.shape, volume.num_channels)
    fit_steps, ensemble, orientations = plan
    generator, config = loaded or load_model(volume, grid, {"model": model})
    generator = generator.to(torch_device)
    ratio = thickness_ratio(volume, grid.axis)
    generator, steps_run = adapt_to_grid(
        generator,
        config,
        volume,
        grid,
        steps=fit_steps,
        device=torch_device,
        seed=seed,
        seconds=fit_seconds,
        progress=progress,
        guard=(guard := {}),
        calibrate=calibrate,
        precision=resolved,
        ensemble=ensemble,
    )
    release_freed_memory()  # the fit's freed buffers, before the output is allocated
    views = plane_orientations(grid.axis, volume.spacing, orientations)
    planes = sum(volume.spatial_shape[p] for p, _, _ in views)
    bar = tqdm(
        total=planes * volume.num_channels, disable=not progress, unit="plane", desc="reconstruct"
    )
    result = reconstruct_volume(
        volume,
        grid,
        generator,
        device=torch_device,
        batch_size=batch_size,
        on_batch=bar.update,
        precision=resolved,
        disagreement=confidence,
        ensemble=ensemble,
        orientations=orientations,
    )
    bar.close()
    release_freed_memory()  # the reconstruction's batches, before the dtype is restored
    uncertainty = None
    if confidence:
        from medsr.upsample.confidence import confidence_map

        result, difference = result
        uncertainty = confidence_map(volume, grid, result, difference)
    provenance = {
        "model": str(model_path) if model else "shipped:misr_default.pt",
        "model_sha256": sha256(model_path),
        "fit_steps": int(fit_steps),
        "fit_steps_run": int(steps_run),
        "fit_seconds_limit": fit_seconds,
        "seed": int(seed),
        "device": str(torch_device),
        "slice_thickness_ratio": ratio,
        "precision": resolved,
        "ensemble": ensemble,
        "orientations": orientations,
    }
    if steps_run:  # the fit's own arithmetic (`fit_precision`: bf16 only where native)
        mixed = config.train.mixed_precision
        provenance["fit_precision"] = fit_precision(resolved, torch_device, mixed)
        provenance["fit_pixel_loss"] = FIT_PIXEL_LOSS
    if fit_steps > 0 or "residual_gain" in guard:
        # what the fit (even one that ran no step in its time) or the gain's slices took of the
        # acquisition; else nothing
        provenance.update(fit_facts(volume, grid.axis))
    if guard:
        provenance["fit_guard"] = guard
    return result, provenance, uncertainty


def upsample_volume(
    volume: Volume,
    *,
    method: Method = "misr",
    spacing: float | None = None,
    scale: float | None = None,
    axis: int | None = None,
    keep_dtype: bool = True,
    allow_coarser: bool = False,
    confidence: bool = False,
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
        confidence: also compute the learned method's confidence map, attached as
            ``meta["confidence"]`` (a float32 `Volume` on the output grid in the input's
            intensity units, with its own ``meta["provenance"]``; `medsr.upsample.confidence`).
        **misr_options: `upsample_misr` options (model, fit_steps, fit_seconds, seed, device,
            batch_size, progress, precision, calibrate, ensemble, orientations).

    Returns:
        The upsampled volume; its affine covers the input's physical extent, and
        ``meta["provenance"]`` records what produced it (`provenance_record`).
    """
    from medsr.intensity import restore_dtype

    grid = plan_output_grid(
        volume.spatial_shape, volume.affine, spacing=spacing, scale=scale, axis=axis
    )
    details: dict = {}
    if confidence:  # before any work, as the CLI checks it
        from medsr.upsample.checks import check_confidence

        check_confidence(method, grid)
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
    elif method == "misr":
        # the ensemble, the model, its range and the fit, before anything is logged or computed
        check_ensemble_option(method, dict(misr_options, confidence=confidence))
        if misr_options.get("loaded") is None:
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
        array, details, uncertainty = upsample_misr(
            volume, grid, confidence=confidence, **misr_options
        )
        if keep_dtype:
            # over the float result's own memory: no second output-sized buffer at the peak
            scaling = volume.meta.get("scaling")
            array = restore_dtype(array, volume.array.dtype, scaling, in_place=True)
        result = volume.with_array(array, grid.affine)
    record = provenance_record(volume, grid, method, details)
    result.meta["provenance"] = record
    result.meta["description"] = provenance_description(record)
    if confidence:
        from medsr.upsample.confidence import confidence_volume

        result.meta["confidence"] = confidence_volume(result, uncertainty, record)
    return result
