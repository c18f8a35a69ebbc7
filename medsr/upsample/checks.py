"""Checks made before any upsampling work: input slices and isotropy, label grids, output
paths, the learned model's factor range and the fit's extent; target lengths."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from medsr.errors import MedsrError
from medsr.geometry import ISOTROPY_TOLERANCE, OutputGrid, anisotropy
from medsr.io.paths import default_output_suffix, split_volume_name
from medsr.io.volume import Unit, Volume
from medsr.io.write import check_output_path
from medsr.nets.checkpoint import default_model_path

logger = logging.getLogger(__name__)

#: default number of adaptation steps of a float32 fit: chosen on the validation volumes' fit
#: curves within the time targets (docs/benchmarks.md, "The fit's steps at twice the speed"): 400
#: against 200 steps gained +0.03 to +0.35 dB, 600 at most 0.25 more; a 256x256x60 scan took 45 s
#: end to end with 400 on the 2-core AVX2 development CPU (target 60 s) with the 4-block prior.
#: On a float32 CPU it is the most: there the 8-block prior's fit is sized to a time budget
#: (`medsr.upsample.budget.default_work`)
DEFAULT_FIT_STEPS = 400

#: ... and of a CPU fit whose encoder runs in bf16 (a CPU with native bf16): its steps take
#: about half the time, spent on more of them (docs/benchmarks.md, "The saved time spent on
#: steps": 800 against 400 bf16 steps +0.08 dB mean on validation, SSIM up in every case;
#: 256x256x60 end to end in 35 s on the AMX CPU)
FAST_FIT_STEPS = 800


def default_fit_steps(precision: str = "auto", device=None) -> int:
    """The default number of fit steps for the fit's arithmetic (`medsr.runtime.fit_precision`
    of `precision` on `device`, a name or a torch device): `FAST_FIT_STEPS` for a bf16 fit on
    the CPU, `DEFAULT_FIT_STEPS` otherwise (CUDA included: not measured there). Where the scan
    is known, `medsr.upsample.budget.default_work` decides (a float32 CPU fit: fewer, by its
    time budget)."""
    import torch

    from medsr.runtime import fit_precision, resolve_device

    device = device if isinstance(device, torch.device) else resolve_device(device)
    return FAST_FIT_STEPS if fit_precision(precision, device) == "bf16" else DEFAULT_FIT_STEPS


def fit_steps_of(options: dict) -> int:
    """``options["fit_steps"]``; where it is absent or None, the default for the options'
    ``precision`` and ``device`` (`default_fit_steps`): whether a fit runs, before the scan's
    size is known (the steps it runs: `medsr.upsample.budget.default_work`)."""
    steps = options.get("fit_steps")
    if steps is None:
        return default_fit_steps(options.get("precision", "auto"), options.get("device"))
    return int(steps)


#: seed of the adaptation's patch sampling
DEFAULT_SEED = 0


#: the self-ensemble sizes the reconstruction takes (`medsr.upsample.ensemble.ENSEMBLE_FLIPS`)
ENSEMBLE_SIZES = (1, 2, 4, 8)
#: the most passes the default gives (8 gained 0.01 dB over 4 on validation, at twice the cost)
DEFAULT_MAX_ENSEMBLE = 4
#: the default ensemble's budget: output voxels x passes beyond the first (`default_ensemble`).
#: 48 M until 2026-12-07; a pass of the 8-block prior costs 1.45 x the 4-block one's (5.8 s
#: against 4.0 s on the 256 x 256 x 60 benchmark, docs/benchmarks.md, "Eight blocks"), so the
#: budget shrank by as much: the extra passes take the time they took before
ENSEMBLE_BUDGET = 32_000_000


def default_ensemble(shape: tuple[int, ...], count: int = 1) -> int:
    """The default self-ensemble for `count` outputs (RGB channels, a series' frames) of
    `shape`: the most passes, up to `DEFAULT_MAX_ENSEMBLE`, whose passes beyond the first decode
    at most `ENSEMBLE_BUDGET` voxels. A pass costs about the reconstruction's time again, which
    grows with the outputs, while the fit's does not: one 197 x 233 x 189 output (8.7 M voxels)
    gets 4 passes, a 256 x 256 x 195 one (12.8 M) 2, a 512 x 512 x 360 one (94 M) a single one,
    which keeps the time targets of docs/benchmarks.md."""
    voxels = int(np.prod(shape)) * max(int(count), 1)
    sizes = [n for n in ENSEMBLE_SIZES if n <= DEFAULT_MAX_ENSEMBLE]
    return max(n for n in sizes if (n - 1) * voxels <= ENSEMBLE_BUDGET)


def check_ensemble(ensemble) -> int:
    """`ensemble` as an int of `ENSEMBLE_SIZES`.

    Raises:
        ValueError: another value, named in the message.
    """
    if ensemble not in ENSEMBLE_SIZES or isinstance(ensemble, bool):
        raise ValueError(f"ensemble must be one of {ENSEMBLE_SIZES}, got {ensemble!r}")
    return int(ensemble)


#: the through-plane orientations a reconstruction can average (``orientations=``,
#: `medsr.upsample.reconstruct.plane_orientations`)
ORIENTATION_COUNTS = (1, 2)


def check_orientations(orientations, confidence: bool = False) -> int:
    """`orientations` as an int of `ORIENTATION_COUNTS`; 2 where `confidence` is asked (the
    confidence map's first term is the orientations' disagreement).

    Raises:
        ValueError: another value, or 1 with `confidence`, named in the message.
    """
    if orientations not in ORIENTATION_COUNTS or isinstance(orientations, bool):
        raise ValueError(f"orientations must be one of {ORIENTATION_COUNTS}, got {orientations!r}")
    if confidence and orientations != 2:
        raise ValueError("the confidence map needs both orientations (orientations 2)")
    return int(orientations)


def check_ensemble_option(method: str, options: dict) -> None:
    """Before any work: the learned method's ``options["ensemble"]`` and
    ``options["orientations"]``, where given, are ones the reconstruction takes
    (`check_ensemble`, `check_orientations`); other methods do not read them."""
    if method == "misr" and options.get("ensemble") is not None:
        check_ensemble(options["ensemble"])
    if method == "misr" and options.get("orientations") is not None:
        check_orientations(options["orientations"], bool(options.get("confidence")))


def ensemble_of(options: dict, shape: tuple[int, ...], count: int = 1) -> int:
    """``options["ensemble"]`` checked; where it is absent or None, `default_ensemble` for
    `count` outputs of `shape`."""
    ensemble = options.get("ensemble")
    return default_ensemble(shape, count) if ensemble is None else check_ensemble(ensemble)


#: fewest slices along the thick axis that a reconstruction needs
MIN_SLICES = 4


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
    from medsr.nets.checkpoint import load_generator

    _, config = load_generator(model or default_model_path())
    limit = learned_factor_limit(config)
    if covers_factor(factor, limit):
        return f"covered (misr works up to x{limit:.3g})"
    return f"not covered: x{factor:.3g} is above misr's x{limit:.3g}; use --spacing or bspline"


def check_fit(volume: Volume, grid: OutputGrid, options: dict, name: str) -> None:
    """The per-scan fit (``options["fit_steps"]`` > 0) can draw its patches from `volume`."""
    if fit_steps_of(options) > 0:
        factor = float(volume.spacing[grid.axis] / grid.spacing)
        check_fit_extent(volume.spatial_shape, grid.axis, factor, name)


def check_fit_extent(shape: tuple[int, ...], axis: int, factor: float, name: str) -> None:
    """Before any work: the fit's thick patches hold whole slabs of `factor` voxels, so both axes
    other than `axis` need at least one.

    Raises:
        MedsrError: in the user's terms: the file (`name`), the axis, and the flags that fix it.
    """
    for other in (a for a in range(3) if a != axis):
        if shape[other] < factor:
            raise MedsrError(
                f"{name} is too small to adapt the model to: axis {other} has {shape[other]} "
                f"voxels, less than one slab of x{factor:.3g}; give --fit-steps 0 (no fit) or a "
                "smaller --scale"
            )


def load_model(volume: Volume, grid: OutputGrid, options: dict) -> tuple:
    """(generator on the CPU, config) of ``options["model"]`` (default: shipped), after checking
    that the model covers the factor from `volume` to `grid`."""
    from medsr.nets.checkpoint import load_generator

    generator, config = load_generator(options.get("model") or default_model_path())
    factor = float(volume.spacing[grid.axis] / grid.spacing)
    check_learned_factor(
        factor, learned_factor_limit(config), volume.spacing[grid.axis], volume.unit
    )
    return generator, config


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


def check_sidecars(paths: list[Path], overwrite: bool) -> None:
    """The files written beside the outputs (provenance records, ``--align``'s transforms) are
    outputs too: one that exists is refused without `overwrite`, before any work."""
    for path in paths:
        if path.exists() and not overwrite:
            raise MedsrError(f"output exists: '{path}' (use --overwrite to replace it)")


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


def check_series_fit(
    frames: int,
    method: str,
    fit_steps: int,
    fit_frame: int | None,
    fit_per_frame: bool,
    path: Path,
) -> None:
    """How a 4D series is fitted (`medsr.upsample.series4d`): ``--fit-frame`` names one of its
    frames, and either option needs the learned method with a fit and a series.

    Raises:
        MedsrError: in one line, before any work.
    """
    if fit_frame is None and not fit_per_frame:
        return
    if fit_frame is not None and fit_per_frame:
        raise MedsrError(
            "--fit-frame and --fit-per-frame exclude each other (one fit on a chosen frame, or "
            "a fit per frame)"
        )
    option = "--fit-frame" if fit_frame is not None else "--fit-per-frame"
    if method != "misr":
        raise MedsrError(f"{option} applies to --method misr only")
    if fit_steps <= 0:
        raise MedsrError(f"{option} needs a fit: --fit-steps above 0")
    if frames < 2:
        raise MedsrError(f"{option} applies to a 4D series; '{path}' holds one volume")
    if fit_frame is not None and not 0 <= fit_frame < frames:
        raise MedsrError(
            f"--fit-frame {fit_frame} is out of range: '{path}' has {frames} volumes "
            f"(0 to {frames - 1})"
        )


def check_confidence(method: str, grid: OutputGrid) -> None:
    """The confidence map (`medsr.upsample.confidence`) measures the learned method's guesses:
    it needs ``method="misr"`` and an upsampling (not a coarser target's slab average)."""
    if method != "misr":
        raise MedsrError(
            f"--confidence maps the learned method's uncertainty; not --method {method}"
        )
    if grid.step > 1 + 1e-6:
        raise MedsrError("--confidence needs a finer target; a coarser one is a slab average")


def check_confidence_output(
    path: Path,
    others: dict[str, Path | None],
    overwrite: bool,
    *,
    affine: np.ndarray | None = None,
    frames: int = 1,
) -> None:
    """The confidence map's path gets the main output's checks (format, folder, exists without
    `overwrite`; with `affine`, TIFF's orientation), is none of `others` (what -> path), and is
    NIfTI for a series of `frames` > 1 volumes (one map per frame)."""
    from medsr.io.paths import volume_format

    for what, other in others.items():
        if other is not None and (
            path.absolute() == Path(other).absolute()
            or (path.exists() and Path(other).exists() and path.samefile(other))
        ):
            raise MedsrError(f"--confidence '{path}' is {what}; choose another path")
    check_output_path(path, overwrite=overwrite, affine=affine)
    if frames > 1 and volume_format(path) != "nifti":
        raise MedsrError(f"the input holds {frames} volumes; write --confidence as NIfTI (.nii.gz)")
