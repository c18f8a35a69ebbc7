"""Adapting a trained generator to one scan (self-supervised), a fixed number of steps.

The scan's own slices across the axis to be upsampled (the in-plane slices of a thick-slice scan)
are degraded by the factor of the upsampling along each of their two axes, and the generator is
fine-tuned with a pixel loss to undo that, starting from trained weights (SMORE/ECLARE idea,
warm-started). For the default target of a thick-slice scan (the finest in-plane spacing) that is
its thick-slice spacing; an isotropic volume upsampled with an explicit --scale or --spacing is
fitted the same way. Only the pixel loss is used (MSE, `FIT_PIXEL_LOSS`): it is the fastest
signal in a short budget, and the perceptual/adversarial character comes from the pre-trained
weights. On CUDA the fit runs with deterministic algorithms.

Patches are centred on the scan's foreground (`medsr.train.patches`), so that background and
empty glass do not take most of the fit. A guard keeps the fit from making a scan worse: a slab of
in-plane slices in the middle of the upsampled axis is held back (never part of a patch), and
after the fit the adapted model, the prior and cubic B-spline are scored (PSNR) on its middle
slice, thickened the way the fit thickens. If the adapted model scores below B-spline, the prior
is used if it beats B-spline, else B-spline itself (the generator with its last layer zeroed is
exactly cubic B-spline); one log line says so and the provenance records it (`fit_guard`). An
axis of fewer than `FIT_GUARD_MIN_SLICES` slices has every slice fitted and no guard.

Without a fit, five slabs across the middle of the axis calibrate the prior
(`NO_FIT_CALIBRATION_SLABS`): its residual over B-spline is scaled by the one gain that fits them
best in least squares (`residual_gain`, `scale_residual`; within `GAIN_RANGE`;
``fit_guard.residual_gain``): a prior trained on sharper content than the scan's over-sharpens
it, and a gain below 1 takes that back. After a fit the fit has already sized the residual on the
scan's own slices, and no gain is fitted (`CALIBRATE_AFTER_FIT`).

The fit is a number of steps, not a time: for a given seed and device the same scan gives the
same adapted weights, so the same command writes the same file; an optional time limit on top
makes it depend on the machine's speed (the steps run are recorded).
"""

from __future__ import annotations

import logging
import time

import torch

from medsr.config import Config, DataConfig, LossConfig, TrainConfig
from medsr.geometry import OutputGrid
from medsr.intensity import grey_array
from medsr.io import Volume
from medsr.nets import MISRGenerator
from medsr.runtime import deterministic_algorithms, fit_precision
from medsr.train.noise import scan_noise
from medsr.train.pairs import PairSampler, sources_self_supervised
from medsr.train.trainer import Trainer
from medsr.upsample.heldout import (
    NARROW_SLICE,
    SHORT_AXIS,
    apply_guard,
    calibrated,
    calibration_planes,
    calibration_slabs,
    guard_planes,
    guard_slab,
    guard_without_fit,
)
from medsr.upsample.profile import estimate_slice_profile, undecided_profiles

logger = logging.getLogger(__name__)

#: peak learning rate of the fine-tuning and its schedule over the fit's steps (``"cosine"``: to
#: 0 at the last step; `medsr.config.TrainConfig.lr_schedule`), chosen on validation
#: (docs/benchmarks.md): cosine over constant on 200-step curves; 3e-4 on the 12 cases: +2.782 /
#: +2.930 / +2.963 / +2.953 / +2.939 dB over B-spline at 1e-3 / 5e-4 / 3e-4 / 2e-4 / 1e-4
ADAPTATION_LEARNING_RATE = 3e-4
ADAPTATION_LR_SCHEDULE = "cosine"

#: the slice thickness / spacing the fit assumes when the scan does not say (no DICOM
#: SliceThickness, no ``--slice-thickness``): contiguous, as B-spline and the guard assume; on
#: validation +0.11 / +0.03 / +0.00 dB over the training range (0.8-1.2) at x2 / x4 / x7
ASSUMED_THICKNESS_RATIO = 1.0

#: the fit's pixel loss (`medsr.config.LossConfig.pixel_loss`): MSE, chosen on validation
#: (docs/benchmarks.md, "The fit's pixel loss and the self-ensemble"): L1 gained +0.04 dB on ten
#: cases along axis 0 but lost 0.03-0.11 dB in all eight along axes 1 and 2
FIT_PIXEL_LOSS = "mse"

#: whether the fit puts the scan's own voxel noise back on the slices it thickens
#: (`scan_noise`, `medsr.config.DataConfig.input_noise`)
MATCH_SCAN_NOISE = True

#: whether the model's residual over B-spline is scaled by the gain that fits in-plane slices
#: best (`medsr.upsample.heldout.calibrated`): without a fit five slabs, after one (only with
#: `CALIBRATE_AFTER_FIT`) the held-back slab
CALIBRATE_GAIN = True

#: off since 2026-12-07 (22:00; validation, docs/benchmarks.md): +3.214 against +3.193 dB on the
#: 12 cases; where it acted after a fit that day it cost in 4 of 5
CALIBRATE_AFTER_FIT = False

#: whether a scan that does not state its slice profile has it estimated from its data
#: (`medsr.upsample.profile`; undecided: `UNDECIDED_BOXCAR_WEIGHT`)
ESTIMATE_PROFILE = True

#: where the profile is neither told nor estimated, the fit draws each boxcar-like profile the
#: model was trained with this many times for each other one (`undecided_profiles`; validation:
#: docs/benchmarks.md, "A fit that leans to the boxcar where the profile is undecided")
UNDECIDED_BOXCAR_WEIGHT = 3

#: without a fit, the slabs the gain is fitted and checked on (`heldout.calibration_slabs`: over
#: the middle half of the axis); a fit holds back one only, from `FIT_GUARD_MIN_SLICES` slices
NO_FIT_CALIBRATION_SLABS = 5

#: a fit holds slices back for its guard only on an upsampled axis of at least this many slices;
#: on a shorter one it fits every slice and has no guard: the held-back slab and the patches that
#: would reach it take 5 of its slices, and one middle slice misjudged the fit (validation, 12
#: cases of 14-18 slices: +0.146 dB mean fitted on every slice; docs/benchmarks.md, "Every slice
#: fitted on an axis of fewer than 20 slices")
FIT_GUARD_MIN_SLICES = 20

#: the record's reason where a fit held nothing back for that
FEW_SLICES = f"fewer than {FIT_GUARD_MIN_SLICES} slices along the upsampled axis: all fitted"

#: the most thin positions of a patch the fit's decoder is trained on in a step
#: (`medsr.config.DataConfig.query_positions`; 0: all)
FIT_QUERY_POSITIONS = 0


def adaptation_config(
    config: Config,
    steps: int,
    seed: int,
    thickness_ratio: float | None = None,
    profile: str | None = None,
    input_noise: float = 0.0,
    precision: str = "fp32",
) -> Config:
    """The fine-tuning's own config for the model of `config` (a checkpoint's).

    Taken from the checkpoint is only what describes the model and how it learns: its sizes
    (`config.model`), the slice profiles and thickness ratios it was trained for, its patch and
    batch sizes, and whether it trains in mixed precision. Everything else is the fit's own:
    pixel loss only, no intensity, noise or smoothing augmentation, patches centred on the
    foreground, the fit's pixel loss (`FIT_PIXEL_LOSS`), rate and schedule (`ADAPTATION_*`),
    `steps` steps (never the training run's stop_at, warm-up, checkpoints or validation), pairs
    drawn in this process (never ``data.workers``). With `thickness_ratio` (the scan's slice
    thickness / spacing), that thickness only, else `ASSUMED_THICKNESS_RATIO`; with `profile`
    (the scan's, ``--slice-profile``, or the estimate's), that profile's shape only, else the
    profiles the model was trained on, boxcar-like ones `UNDECIDED_BOXCAR_WEIGHT` times;
    `input_noise` (`scan_noise`) is put back on the thickened inputs. `precision`, the fit's
    (`medsr.runtime.fit_precision`): ``"bf16"`` runs the encoder's convolutions in bf16 on the
    CPU (``train.cpu_bf16``), as the reconstruction does.
    """
    trained = config.data
    ratio = fit_thickness_ratio(thickness_ratio)
    profiles = undecided_profiles(trained.profiles, UNDECIDED_BOXCAR_WEIGHT)
    profiles = profiles if profile is None else (profile,)
    return Config(
        model=config.model,
        loss=LossConfig(pixel_loss=FIT_PIXEL_LOSS, perceptual_weight=0.0, adversarial_weight=0.0),
        data=DataConfig(
            self_supervised=True,
            profiles=profiles,
            thickness_ratios=(ratio, ratio),
            patch_width=trained.patch_width,
            patch_slices=trained.patch_slices,
            max_thin_slices=trained.max_thin_slices,
            query_positions=FIT_QUERY_POSITIONS,
            batch_size=trained.batch_size,
            noise_max=0.0,
            blur_max=0.0,
            input_noise=input_noise,
            gamma_range=(1.0, 1.0),
            gain_range=(1.0, 1.0),
            validation_fraction=0.0,
            workers=0,
            foreground_sampling=True,
        ),
        train=TrainConfig(
            steps=max(1, steps),
            warmup_steps=0,
            learning_rate=ADAPTATION_LEARNING_RATE,
            lr_schedule=ADAPTATION_LR_SCHEDULE,
            validate_every=10**9,
            checkpoint_every=10**9,
            seed=seed,
            mixed_precision=config.train.mixed_precision,
            cpu_bf16=precision == "bf16",
        ),
    )


def adapt_to_scan(
    generator: MISRGenerator,
    config: Config,
    volume: Volume,
    *,
    axis: int,
    factor: float,
    steps: int,
    device: torch.device,
    seed: int = 0,
    seconds: float | None = None,
    thickness_ratio: float | None = None,
    profile: str | None = None,
    progress: bool = False,
    guard: dict | None = None,
    noise: float | None = None,
    calibrate: bool = True,
    precision: str = "auto",
    ensemble: int = 1,
) -> tuple[MISRGenerator, int]:
    """Fine-tune a copy of `generator` on `volume`'s slices across `axis`, and guard the result
    on the held-back slices; with `steps` 0, calibrate the prior's residual (`calibrated`).

    Args:
        generator: trained generator (left unchanged).
        config: its config (the checkpoint's; see `adaptation_config`).
        volume: the grey scan to be reconstructed (anisotropic, or isotropic with an explicit
            target).
        axis: the array axis that will be upsampled: the fit's in-plane slices are those across
            it, and their two axes are made thick.
        factor: the factor of the upsampling (input spacing along `axis` / output spacing), the
            one the fit degrades the in-plane axes by.
        steps: optimisation steps (0: return the generator as it is).
        device: torch device.
        seed: seed of the patch sampling.
        seconds: optional wall-clock upper bound on the fit, counted from the start of its
            preparation (the scan's noise, the slice-profile estimate, the held-back slices).
        thickness_ratio: the scan's slice thickness / slice spacing, if known (below 1: a gap);
            default: `ASSUMED_THICKNESS_RATIO` (contiguous).
        profile: the scan's slice profile (``"boxcar"``, ``"gaussian"`` or ``"sinc"``, the
            2D multi-slice profile; `medsr.degrade.slice_profile_weights`), if known; default:
            estimated from the data (`ESTIMATE_PROFILE`), where undecided the profiles the
            model was trained with, boxcar-like ones `UNDECIDED_BOXCAR_WEIGHT` times.
        progress: show a progress bar.
        noise: the voxel noise to put back on the thickened inputs (normalised units); default:
            `volume`'s own (`scan_noise`; a series fitted on its mean passes one frame's).
        guard: a dict that receives the fit guard's record (scores of the adapted model, the
            prior and B-spline on the held-back slices, the choice, the residual gain; or why
            there was none).
        calibrate: fit the residual gain (`calibrated`; only if `CALIBRATE_GAIN`, after a fit
            only if `CALIBRATE_AFTER_FIT` too); with `steps` 0 this is all that is done.
        precision: the run's arithmetic (`resolve_precision`); the fit's follows from it
            (`medsr.runtime.fit_precision`): with ``"auto"`` or ``"bf16"`` on a CPU with native
            bf16 the encoder's convolutions train in bf16, float32 elsewhere on the CPU; on CUDA
            the model's mixed-precision setting.
        ensemble: the passes the reconstruction will average (`medsr.upsample.ensemble`); the
            residual gain is fitted on the calibration slices' prediction by as many passes.

    Returns:
        (the adapted (or calibrated) generator in eval mode, the number of steps run).
    """
    calibrate = calibrate and CALIBRATE_GAIN
    count = volume.spatial_shape[axis]
    slab = guard_slab(count, generator.neighbours)
    few = steps > 0 and slab is not None and count < FIT_GUARD_MIN_SLICES
    slab = None if few else slab  # a short axis: every slice is fitted, none held back
    if steps <= 0 and (not calibrate or slab is None):  # nothing to fit, nothing to calibrate on
        if calibrate and guard is not None:
            guard["reason"] = SHORT_AXIS
        return generator.eval(), 0
    start = time.perf_counter()  # a time bound counts the fit's preparation (the estimate)
    deadline = None if seconds is None else start + seconds
    sources = sources_self_supervised(volume, "scan", axis=axis, factor=factor)
    own_noise = scan_noise(sources[0].array) if MATCH_SCAN_NOISE else 0.0
    noise = own_noise if noise is None or not MATCH_SCAN_NOISE else noise
    logger.info(
        "the scan's voxel noise: std %.4g (normalised units), put back when thickening", noise
    )
    ratio = fit_thickness_ratio(thickness_ratio)
    if profile is None and ESTIMATE_PROFILE:
        # the noise of the slices compared (a 4D series' mean), not the frame's the fit puts back
        estimate = estimate_slice_profile(sources, factor, ratio, own_noise)
        logger.info("slice profile from the data: %s (%s)", estimate.profile, estimate.reason)
        profile = estimate.profile
        if guard is not None:
            guard["slice_profile_estimate"] = estimate.record()
    neighbours = generator.neighbours
    if slab is None:
        planes = []
    elif steps <= 0:  # nothing is fitted: nothing needs holding back
        slabs = calibration_slabs(volume.spatial_shape[axis], neighbours, NO_FIT_CALIBRATION_SLABS)
        planes = calibration_planes(sources, slabs, neighbours, ratio, profile, noise)
    else:
        planes = guard_planes(sources, slab, neighbours, ratio, profile, noise)
    if steps <= 0:
        if not planes:
            if guard is not None:
                guard["reason"] = NARROW_SLICE
            return generator.eval(), 0
        model, record = guard_without_fit(generator.eval(), planes, device, ensemble)
        if guard is not None:
            guard.update(record, scan_noise=round(noise, 6))
        return model, 0
    arithmetic = fit_precision(precision, device, config.train.mixed_precision)
    adapt_config = adaptation_config(
        config, steps, seed, thickness_ratio, profile, noise, arithmetic
    )
    sampler = PairSampler(sources, adapt_config.data, neighbours)
    sampler.held_out_planes = slab if planes else None
    with deterministic_algorithms(device):
        trainer = Trainer(adapt_config, sampler, device, validation=[])
        trainer.generator.load_state_dict(generator.state_dict())
        trainer.fit(progress=progress, deadline=deadline, description="adapting to the scan")
    logger.info(
        "adapted to the scan: %d steps in %.1f s", trainer.step, time.perf_counter() - start
    )
    adapted, record = trainer.generator.eval(), {"choice": "adapted", "planes": 0}
    if planes:
        adapted, record = apply_guard(adapted, generator.to(device), planes, device)
        if calibrate and CALIBRATE_AFTER_FIT:
            adapted = calibrated(adapted, planes, device, record, ensemble)
    else:
        record["reason"] = FEW_SLICES if few else SHORT_AXIS if slab is None else NARROW_SLICE
    drawn = adapt_config.data.profiles  # the profiles the fit drew from, with their weights
    record["fit_profiles"] = {name: drawn.count(name) for name in dict.fromkeys(drawn)}
    record["scan_noise"] = round(noise, 6)
    if guard is not None:
        guard.update(record)
    return adapted, trainer.step


def fit_thickness_ratio(ratio: float | None) -> float:
    """The slice thickness / spacing the fit thickens by: the scan's `ratio` if known, else
    `ASSUMED_THICKNESS_RATIO`."""
    return ASSUMED_THICKNESS_RATIO if ratio is None else float(ratio)


def fit_facts(volume: Volume, axis: int) -> dict:
    """What a fit of `volume` along `axis` took of the acquisition, for its provenance: the
    thickness it thickened by (`fit_thickness_ratio`) and the slice profile it was told, if any."""
    facts = {"fit_thickness_ratio": fit_thickness_ratio(thickness_ratio(volume, axis))}
    if volume.meta.get("slice_profile"):
        facts["slice_profile"] = volume.meta["slice_profile"]
    return facts


def thickness_ratio(volume: Volume, axis: int) -> float | None:
    """The scan's slice thickness / spacing along `axis` (``meta["slice_thickness"]``), if known."""
    thickness = volume.meta.get("slice_thickness")
    return None if thickness is None else float(thickness / volume.spacing[axis])


def adapt_to_grid(
    generator: MISRGenerator,
    config: Config,
    volume: Volume,
    grid: OutputGrid,
    *,
    steps: int,
    device: torch.device,
    seed: int = 0,
    seconds: float | None = None,
    progress: bool = False,
    guard: dict | None = None,
    noise_from: Volume | None = None,
    calibrate: bool = True,
    precision: str = "auto",
    ensemble: int = 1,
) -> tuple[MISRGenerator, int]:
    """`adapt_to_scan` for upsampling `volume` onto `grid`: the fit of the learned method (its
    grey values, the grid's axis and factor, the scan's `thickness_ratio` and slice profile,
    ``meta["slice_profile"]``, from ``--slice-profile``); `generator` is
    already on `device`. One fit serves every frame of a 4D series (`medsr.upsample.series4d`);
    fitted on the frames' mean, whose noise averaging lowered, it takes the voxel noise of one
    frame, `noise_from`.
    """
    noise = None if noise_from is None else grid_noise(noise_from, grid)
    return adapt_to_scan(
        generator,
        config,
        volume.with_array(grey_array(volume)),
        axis=grid.axis,
        factor=float(volume.spacing[grid.axis] / grid.spacing),
        steps=steps,
        seconds=seconds,
        seed=seed,
        thickness_ratio=thickness_ratio(volume, grid.axis),
        profile=volume.meta.get("slice_profile"),
        device=device,
        progress=progress,
        guard=guard,
        noise=noise,
        calibrate=calibrate,
        precision=precision,
        ensemble=ensemble,
    )


def scan_sources(volume: Volume, axis: int, factor: float) -> list:
    """The fit's plane sources of `volume`: its grey slices across `axis`, normalised, made
    thick by `factor` (`medsr.train.pairs.sources_self_supervised`), as `adapt_to_grid` hands
    them to `adapt_to_scan`."""
    grey = volume.with_array(grey_array(volume))
    return sources_self_supervised(grey, "scan", axis=axis, factor=factor)


def grid_noise(volume: Volume, grid: OutputGrid) -> float:
    """`scan_noise` of `volume`'s slices across `grid`'s axis, in the fit's normalised units."""
    factor = float(volume.spacing[grid.axis] / grid.spacing)
    return scan_noise(scan_sources(volume, grid.axis, factor)[0].array)
