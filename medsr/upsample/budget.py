"""The default's work where the fit and the reconstruction run in float32 on the CPU.

A CPU without native bf16 (no AVX-512-BF16 or AMX; `medsr.runtime.cpu_supports_bf16`) runs the
learned method in float32, and there its convolutions are several times slower: on the 2-core
AVX2 AMD EPYC of docs/benchmarks.md ("The default's work on a float32 CPU") a reconstruction
pass of the 256 x 256 x 60 benchmark scan took 36-41 s where the AMX CPU takes 6, and the
default sized for bf16 (400 float32 steps, 2 passes) took 143 s against the 60 s target.

So there, where the user names neither ``--fit-steps`` nor ``--ensemble``, the default sizes its
work to `FLOAT32_SECONDS` by a cost model of that CPU (`Work`, the seconds per encoded pixel, per
decoded output, per output voxel and per fit step, measured on it): the fixed costs and the
reconstruction's first pass come first; further passes are taken where they still leave
`FLOAT32_PASS_STEPS` steps (on validation 200 steps kept all but 0.016 dB of 400, while 4 passes
gained 0.05-0.06 dB over 1); the fit takes the seconds left, between `FLOAT32_MIN_FIT_STEPS` and
`medsr.upsample.checks.DEFAULT_FIT_STEPS` steps. The model reads only shapes, so the same command
on the same input still gives the same file; a faster float32 CPU (an AVX-512 one with
``--precision fp32``) gets the same plan and finishes sooner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
#: a pass's encoder, per input pixel of each of the two plane orientations
SECONDS_PER_ENCODED_PIXEL = 4.0e-6
#: a pass's decoder, per output voxel of each of the two orientations
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

    def reconstruction_seconds(self, passes: int) -> float:
        """Seconds of the reconstruction with `passes` passes, and of writing its outputs."""
        encode = 2 * self.input_voxels * SECONDS_PER_ENCODED_PIXEL
        decode = 2 * self.output_voxels * SECONDS_PER_DECODED_OUTPUT
        once = self.output_voxels * SECONDS_PER_OUTPUT_VOXEL
        return self.outputs * (passes * (encode + decode) + once)

    def seconds(self, steps: int, passes: int) -> float:
        """The whole run's predicted seconds with `steps` fit steps and `passes` passes."""
        return SECONDS_FIXED + steps * SECONDS_PER_STEP + self.reconstruction_seconds(passes)


def float32_plan(
    work: Work, steps: int | None, passes: tuple[int, ...], max_steps: int
) -> tuple[int, int]:
    """(fit steps, passes) of the float32 default for `work`. Passes: the most of `passes` (the
    sizes allowed, ascending) that leave `steps` (None: `FLOAT32_PASS_STEPS`, at most
    `max_steps`) within `FLOAT32_SECONDS`, else the first. Steps: `steps` if given, else those
    the seconds left allow, from `FLOAT32_MIN_FIT_STEPS` (or `max_steps`, if fewer) to
    `max_steps`."""
    kept = min(FLOAT32_PASS_STEPS, max_steps) if steps is None else steps
    chosen = passes[0]
    for size in passes:
        if work.seconds(kept, size) <= FLOAT32_SECONDS:
            chosen = size
    if steps is not None:
        return steps, chosen
    left = FLOAT32_SECONDS - work.seconds(0, chosen)
    fill = math.floor(left / SECONDS_PER_STEP) if left > 0 else 0
    return max(min(FLOAT32_MIN_FIT_STEPS, max_steps), min(fill, max_steps)), chosen
