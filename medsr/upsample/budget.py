"""The default's work where the fit and the reconstruction run in float32 on the CPU.

A CPU without native bf16 (no AVX-512-BF16 or AMX; `medsr.runtime.cpu_supports_bf16`) runs the
learned method in float32, and there its convolutions are several times slower: on the 2-core
AVX2 AMD EPYC of docs/benchmarks.md ("The default's work on a float32 CPU") a reconstruction
pass of the 256 x 256 x 60 benchmark scan took 36-41 s where the AMX CPU takes 6, and the
default sized for bf16 (400 float32 steps, 2 passes) took 143 s against the 60 s target.

So there, where the user leaves ``--fit-steps``, ``--ensemble`` or ``--orientations`` to the
default, the default sizes its work to `FLOAT32_SECONDS` by a cost model of that CPU (`Work`, the
seconds per encoded pixel, per decoded output, per output voxel and per fit step, measured on
it): the fixed costs and the reconstruction's first pass come first, in both plane orientations
where they leave the fit `FLOAT32_MIN_FIT_STEPS` steps, else in one (`float32_plan`; medsr 0.6.4:
the 256 x 256 x 60 scan); further passes are taken where they still leave
`FLOAT32_PASS_STEPS` steps (on validation 200 steps kept all but 0.016 dB of 400, while 4 passes
gained 0.05-0.06 dB over 1); the fit takes the seconds left, between `FLOAT32_MIN_FIT_STEPS` and
`medsr.upsample.checks.DEFAULT_FIT_STEPS` steps. The model reads only shapes, so the same command
on the same input still gives the same file; a faster float32 CPU (an AVX-512 one with
``--precision fp32``) gets the same plan and finishes sooner.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from medsr.upsample.checks import (
    DEFAULT_FIT_STEPS,
    ENSEMBLE_SIZES,
    check_ensemble,
    check_orientations,
    default_ensemble,
    ensemble_of,
    fit_steps_of,
)

logger = logging.getLogger(__name__)

#: the seconds the float32 default aims for, end to end (the 60 s target of the 256 x 256 x 60
#: scan, less a margin for the machine's spread)
FLOAT32_SECONDS = 55.0

#: the fewest fit steps the float32 default runs, whatever the reconstruction costs (on the chest
#: CT at x10 the reconstruction alone takes most of its 120 s target there): on validation 100
#: steps kept all but 0.06 dB of 400, 50 fell below the prior alone on one case
FLOAT32_MIN_FIT_STEPS = 100

#: the fewest fit steps that further reconstruction passes must leave
FLOAT32_PASS_STEPS = 200

# The cost model: seconds on the 2-core AVX2 AMD EPYC, float32, measured 2026-12-07 (night;
# docs/benchmarks.md, "The default's work on a float32 CPU").
#: start-up, reading, the scan's noise, the slice-profile estimate and the guard
SECONDS_FIXED = 6.0
#: a pass's encoder, per input pixel of each plane orientation reconstructed
SECONDS_PER_ENCODED_PIXEL = 4.0e-6
#: a pass's decoder, per output voxel of each orientation reconstructed
SECONDS_PER_DECODED_OUTPUT = 0.22e-6
#: per output voxel once: accumulating, scaling back to the input's units, writing
SECONDS_PER_OUTPUT_VOXEL = 0.2e-6
#: a fit step (0.151-0.198 s at x2 to x10 on the validation ITK T1: no trend with the factor)
SECONDS_PER_STEP = 0.17


@dataclass(frozen=True)
class Work:
    """What a reconstruction decodes: voxels of one input and of one output, the outputs
    reconstructed (RGB channels)."""

    input_voxels: int
    output_voxels: int
    outputs: int = 1

    def reconstruction_seconds(self, passes: int, orientations: int = 2) -> float:
        """Seconds of the reconstruction with `passes` passes in each of `orientations` plane
        orientations, and of writing its outputs."""
        encode = orientations * self.input_voxels * SECONDS_PER_ENCODED_PIXEL
        decode = orientations * self.output_voxels * SECONDS_PER_DECODED_OUTPUT
        once = self.output_voxels * SECONDS_PER_OUTPUT_VOXEL
        return self.outputs * (passes * (encode + decode) + once)

    def seconds(self, steps: int, passes: int, orientations: int = 2) -> float:
        """The whole run's predicted seconds with `steps` fit steps, `passes` passes and
        `orientations` plane orientations."""
        reconstruction = self.reconstruction_seconds(passes, orientations)
        return SECONDS_FIXED + steps * SECONDS_PER_STEP + reconstruction


def float32_plan(
    work: Work,
    steps: int | None,
    passes: tuple[int, ...],
    max_steps: int,
    orientations: tuple[int, ...] = (2, 1),
) -> tuple[int, int, int]:
    """(fit steps, passes, orientations) of the float32 default for `work`.

    Orientations: the first of `orientations` (in order of preference) whose first pass leaves
    the fit its fewest steps (`FLOAT32_MIN_FIT_STEPS`, or fewer where `steps` or `max_steps` is
    fewer) within `FLOAT32_SECONDS`, else the last: a fit's steps are worth more than the second
    orientation (on validation 100 steps gained 0.38 dB over the prior alone on average, the
    second orientation 0.16, 0.03 to 0.59), while more given steps do not cost an orientation.
    Passes: the most of `passes` (the sizes allowed, ascending) that leave `steps` (None:
    `FLOAT32_PASS_STEPS`, at most `max_steps`) within the budget, else the first. Steps: `steps`
    if given, else those the seconds left allow, from `FLOAT32_MIN_FIT_STEPS` (or `max_steps`,
    if fewer) to `max_steps`."""
    floor = min(FLOAT32_MIN_FIT_STEPS, max_steps)
    floor = floor if steps is None else min(floor, steps)
    views = orientations[-1]
    for count in orientations:
        if work.seconds(floor, passes[0], count) <= FLOAT32_SECONDS:
            views = count
            break
    kept = min(FLOAT32_PASS_STEPS, max_steps) if steps is None else steps
    chosen = passes[0]
    for size in passes:
        if work.seconds(kept, size, views) <= FLOAT32_SECONDS:
            chosen = size
    if steps is not None:
        return steps, chosen, views
    left = FLOAT32_SECONDS - work.seconds(0, chosen, views)
    fill = math.floor(left / SECONDS_PER_STEP) if left > 0 else 0
    return max(floor, min(fill, max_steps)), chosen, views


class Plan(NamedTuple):
    """The learned method's work for a scan: fit steps, self-ensemble passes per orientation,
    plane orientations reconstructed (`default_work`)."""

    fit_steps: int
    ensemble: int
    orientations: int


def default_work(
    options: dict,
    input_shape: tuple[int, ...],
    shape: tuple[int, ...],
    count: int = 1,
    frames: int = 1,
) -> Plan:
    """The learned method's work (`Plan`) with `options` for `count` outputs (RGB channels) of
    `shape` from inputs of `input_shape`, in each of `frames` frames of a series: what the options
    give (``fit_steps``, ``ensemble``, ``orientations``), the defaults for the rest.

    Where the fit runs in float32 on the CPU (a CPU without native bf16, or ``--precision fp32``:
    `medsr.runtime.fit_precision`) and any of the three is left to the default, they are sized
    to a time budget per frame (`float32_plan`; a series fitted once spends one frame's), within
    the passes `default_ensemble` allows for all frames; both orientations are kept where an
    ensemble of more than one pass is given or ``options["confidence"]`` asks for the confidence
    map (its first term is their disagreement). Elsewhere `fit_steps_of`,
    `ensemble_of` and both orientations. The one place these defaults are resolved: for the API,
    the CLI, 4D series and the MONAI layer.

    Raises:
        ValueError: a given ensemble or orientations the reconstruction does not take.
    """
    import torch

    from medsr.runtime import fit_precision, resolve_device

    steps, ensemble = options.get("fit_steps"), options.get("ensemble")
    confidence = bool(options.get("confidence"))
    views = options.get("orientations")
    views = None if views is None else check_orientations(views, confidence)
    device = options.get("device")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    fp32_fit = (
        device.type == "cpu" and fit_precision(options.get("precision", "auto"), device) == "fp32"
    )
    given = steps is not None and ensemble is not None and views is not None
    if given or not fp32_fit:
        ensemble = ensemble_of(options, shape, count * frames)
        return Plan(fit_steps_of(options), ensemble, 2 if views is None else views)
    work = Work(int(np.prod(input_shape)), int(np.prod(shape)), max(int(count), 1))
    if ensemble is not None:
        sizes = (check_ensemble(ensemble),)
    else:  # the passes the size rule allows for all frames
        sizes = tuple(n for n in ENSEMBLE_SIZES if n <= default_ensemble(shape, count * frames))
    # a given ensemble of passes asks for averaging, the confidence map needs both orientations
    keep_both = confidence or (ensemble is not None and sizes[0] > 1)
    choices = (views,) if views is not None else (2,) if keep_both else (2, 1)
    plan = Plan(*float32_plan(work, steps, sizes, DEFAULT_FIT_STEPS, choices))
    logger.info(
        "float32 on the CPU: %d fit steps, %d pass(es), %d orientation(s), sized to %g s "
        "(predicted %.0f s)",
        *plan,
        FLOAT32_SECONDS,
        work.seconds(*plan),
    )
    return plan
