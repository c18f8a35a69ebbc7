"""Time of one step of the per-scan fit's generator on this CPU: the decoder alone and the whole
forward + backward (+ Adam), per factor and arithmetic (issue 16: where a fit step goes).

A fit batch: `--batch` patches of `--width` columns and the slices a patch of the default config
has at that factor (``max_thin_slices`` / factor, at most ``patch_slices``); the default model's
sizes with random weights (time does not depend on them). Each number is the median of
`--repeats` calls after two warm-up calls. Modes: ``fp32`` (contiguous), ``fp32-cl``
(channels_last model and input), ``bf16-cl`` (channels_last, the encoder under CPU bf16
autocast, the decoder in float32, as `medsr.train.trainer.Trainer` runs the fit with
``train.cpu_bf16``). Old code is timed from a worktree: ``PYTHONPATH=WORKTREE python ...``
(modes it lacks are skipped).

Usage (from the repository root):
    python pipelines/benchmark_fit_step.py --factors 10 4 2 --modes fp32 fp32-cl bf16-cl
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from medsr.config import DataConfig
from medsr.nets.generator import MISRGenerator
from medsr.provenance import cpu_model


def encode_and_decode(generator, lr, positions, factor, mode):
    if mode.startswith("bf16"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            encoded = generator.encode(lr, factor)
        return generator.predict_at(encoded.float(), positions)
    return generator(lr, positions, factor)


def median_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]) * 1e3


def time_mode(base, lr, positions, factor, mode, repeats) -> tuple[float, float]:
    """(decoder fwd+bwd, whole step) in ms for one mode."""
    generator, inputs = copy.deepcopy(base), lr
    if mode.endswith("-cl"):
        generator = generator.to(memory_format=torch.channels_last)
        inputs = lr.contiguous(memory_format=torch.channels_last)
    encoded = generator.encode(inputs, factor)
    leaves = {
        name: value.detach().requires_grad_()
        for name, value in encoded._asdict().items()
        if name in ("left", "right", "tail") and value is not None
    }
    encoded = encoded._replace(**leaves)

    def decoder():
        generator.predict_at(encoded, positions).square().mean().backward()

    optimiser = torch.optim.Adam(generator.parameters(), lr=1e-4)

    def step():
        optimiser.zero_grad(set_to_none=True)
        out = encode_and_decode(generator, inputs, positions, factor, mode)
        out.square().mean().backward()
        optimiser.step()

    return median_ms(decoder, repeats), median_ms(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factors", type=float, nargs="+", default=[10.0, 4.0, 2.0])
    parser.add_argument("--modes", nargs="+", default=["fp32", "fp32-cl", "bf16-cl"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    base = MISRGenerator()
    for parameter in base.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    data = DataConfig()
    print(f"cpu: {cpu_model()}, threads {torch.get_num_threads()}")
    print("| factor | slices | mode | decoder fwd+bwd (ms) | step fwd+bwd+Adam (ms) | output sum |")
    print("|---|---|---|---|---|---|")
    for factor in args.factors:
        slices = min(data.patch_slices, int(data.max_thin_slices // factor))
        count = int(slices * factor)
        positions = (torch.arange(count, dtype=torch.float32) + 0.5) / factor - 0.5
        lr = torch.rand(args.batch, base.neighbours, args.width, slices)
        for mode in args.modes:
            decoder_ms, step_ms = time_mode(base, lr, positions, factor, mode, args.repeats)
            with torch.no_grad():
                total = encode_and_decode(base, lr, positions, factor, mode).double().sum()
            print(
                f"| x{factor:g} | {slices} -> {count} | {mode} | {decoder_ms:.1f} | "
                f"{step_ms:.1f} | {total.item():.3f} |"
            )


if __name__ == "__main__":
    main()
