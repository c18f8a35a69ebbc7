"""The default's work where the fit and the reconstruction run in float32 on the CPU.

A CPU without native bf16 (no AVX-512-BF16 or AMX; `medsr.runtime.cpu_supports_bf16`) runs the
learned method in float32, and there its convolutions are several times slower: on the 2-core
AVX2 AMD EPYC of docs/benchmarks.md ("The default's work on a float32 CPU") a pass of the
8-block encoder took 29 s on the 256 x 256 x 60 benchmark scan where the AMX CPU takes 6, and
the default sized for bf16 (400 float32 steps, 2 passes) took 143 s against the 60 s target.

So there, where the user names neither ``--fit-steps`` nor ``--ensemble``, the default sizes its
work to `FLOAT32_SECONDS` by a cost model of that CPU (`Work`, the seconds per encoded pixel, per
decoded output, per output voxel and per fit step, measured on it): the fixed costs and the
reconstruction's first pass come first, the fit takes the seconds left (between
`FLOAT32_MIN_FIT_STEPS` and `medsr.upsample.checks.DEFAULT_FIT_STEPS` steps: a fit step gained
more than a pass on validation), and further passes are taken only where the whole fit and they
fit. The model reads only shapes and the factor, so the same command on the same input still
gives the same file; a faster float32 CPU (an AVX-512 one with ``--precision fp32``) gets the
same plan and finishes sooner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: the seconds the float32 default aims for, end to end (the 60 s target of the 256 x 256 x 60
#: scan, less a margin for the machine's spread)
FLOAT32_SECONDS = 55.0

#: the fewest fit steps the float32 default runs, whatever the reconstruction costs: on the chest
#: CT at x10 the reconstruction alone takes most of its 120 s target there
FLOAT32_MIN_FIT_STEPS = 100

# The cost model: seconds on the 2-core AVX2 AMD EPYC, float32, measured 2026-12-07 (night;
# docs/benchmarks.md, "The default's work on a float32 CPU").
#: start-up, reading, the scan's noise, the slice-profile estimate and the guard
SECONDS_FIXED = 6.0
#: a pass's encoder, per input pixel of each of the two plane orientations
SECONDS_PER_ENCODED_PIXEL = 4.0e-6
#: a pass's decoder, per output voxel of each of the two orientations
SECONDS_PER_DECODED_OUTPUT = 0.22e-6
#: per output voxel once: accumulating, scaling back to the input's units, writing
SECONDS_PER_OUTPUT_VOXEL = 0.2e-6
#: a fit step: its fixed part, and its decoder's part per unit of factor (it decodes the thin
#: slices of its patches)
SECONDS_PER_STEP = 0.17
SECONDS_PER_STEP_PER_FACTOR = 0.002


@dataclass(frozen=True)
class Work:
    """What a reconstruction decodes: voxels of one input and of one output, the outputs
    reconstructed (a series' frames x the channels), the factor of the upsampling."""

    input_voxels: int
    output_voxels: int
    outputs: int
    factor: float

    def reconstruction_seconds(self, passes: int) -> float:
        """Seconds of the reconstruction with `passes` passes, and of writing its outputs."""
        encode = 2 * self.input_voxels * SECONDS_PER_ENCODED_PIXEL
        decode = 2 * self.output_voxels * SECONDS_PER_DECODED_OUTPUT
        once = self.output_voxels * SECONDS_PER_OUTPUT_VOXEL
        return self.outputs * (passes * (encode + decode) + once)

    def step_seconds(self) -> float:
        """Seconds of one fit step at this factor."""
        return SECONDS_PER_STEP + SECONDS_PER_STEP_PER_FACTOR * self.factor

    def seconds(self, steps: int, passes: int) -> float:
        """The whole run's predicted seconds with `steps` fit steps and `passes` passes."""
        return SECONDS_FIXED + steps * self.step_seconds() + self.reconstruction_seconds(passes)


def float32_plan(
    work: Work, steps: int | None, passes: tuple[int, ...], max_steps: int
) -> tuple[int, int]:
    """(fit steps, passes) of the float32 default for `work`. Passes: the most of `passes` (the
    sizes allowed, ascending) with which `steps` (None: `max_steps`) still fit
    `FLOAT32_SECONDS`, else the first. Steps: `steps` if given, else those the seconds left
    allow, from `FLOAT32_MIN_FIT_STEPS` (or `max_steps`, if fewer) to `max_steps`."""
    chosen = passes[0]
    for size in passes:
        if work.seconds(max_steps if steps is None else steps, size) <= FLOAT32_SECONDS:
            chosen = size
    if steps is not None:
        return steps, chosen
    left = FLOAT32_SECONDS - work.seconds(0, chosen)
    fill = math.floor(left / work.step_seconds()) if left > 0 else 0
    return max(min(FLOAT32_MIN_FIT_STEPS, max_steps), min(fill, max_steps)), chosen
