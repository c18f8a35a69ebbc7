"""Speed of the generator's encoder against the machine's sgemm rate, measured in one run.

- sgemm: `torch.mm` of two square float32 matrices (default 2048); GMAC/s = n^3 / seconds.
- encoder: `MISRGenerator.encode` of the shipped prior on batches of through-plane planes of
  the 256 x 256 x 60 reconstruction (k = 3 planes of 256 x 60 each), its multiply-accumulates
  counted from the shapes of its convolutions (a forward hook on each `nn.Conv2d`:
  out_channels x in_channels / groups x kernel area x output pixels), in float32 and under CPU
  bf16 autocast, with contiguous and channels_last tensors, for several batch sizes.
- bf16 quality: the shipped prior alone (as `--fit-steps 0`) on test volumes of
  pipelines/configs/split.yaml, float32 against bf16 autocast, scored like
  pipelines/benchmark_mri.py (mask, robust data range); two bf16 variants: everything under
  autocast (the B-spline base too) and the encoder only (base and decoder in float32).

Timings are the best (minimum) of `--repeats` calls after one warm-up call: on a shared machine
other processes only ever add time, so the minimum is the closest to the machine's own speed;
the sgemm rate is measured before and after the encoder (both are reported; the ratio uses the
higher).

Usage (from the repository root):
    python pipelines/benchmark_speed.py [--data ../shared/data/mri] [--repeats 5]
        [--batch-sizes 4 8 16] [--quality-cases 2] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

from medsr.evaluate.metrics import psnr
from medsr.evaluate.simulate import evaluation_mask, robust_data_range, score, simulate_acquisition
from medsr.io import read_volume
from medsr.nets.checkpoint import default_model_path, load_generator
from medsr.provenance import cpu_model
from medsr.runtime import cpu_supports_bf16

#: the reconstruction of docs/benchmarks.md: planes of 256 x 60 low-resolution samples
PLANE_SHAPE = (256, 60)
QUALITY_CASES = (
    ("nilearn_icbm152_2009a_t1_1mm.nii.gz", 4.0, 1, "boxcar"),
    ("inia19_macaque_t1_0.5mm.nii.gz", 5.0, 2, "boxcar"),
)


def best_seconds(function, repeats: int) -> float:
    function()  # warm-up: allocations, oneDNN primitive creation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def sgemm_gmacs(size: int, repeats: int) -> float:
    """GMAC/s of `torch.mm` on (size x size) float32 matrices."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    return size**3 / best_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def count_macs(module: nn.Module, run) -> int:
    """Multiply-accumulates of every `nn.Conv2d` of `module` during `run()`."""
    total = 0

    def hook(conv, _inputs, output):
        nonlocal total
        kernel = conv.kernel_size[0] * conv.kernel_size[1]
        total += output.numel() * (conv.in_channels // conv.groups) * kernel

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return total


def bf16_autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def encoder_rows(generator, batch_sizes, repeats: int, bf16s=(False, True)) -> list[dict]:
    """GMAC/s of `encode` per batch size, precision (`bf16s`: without and with bf16 autocast)
    and memory format."""
    rows = []
    k = generator.neighbours
    for batch in batch_sizes:
        planes = torch.rand(batch, k, *PLANE_SHAPE, generator=torch.Generator().manual_seed(0))
        macs = count_macs(generator, lambda planes=planes: generator.encode(planes, 3.25))
        for channels_last in (False, True):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model = generator.to(memory_format=fmt)
            lr = planes.contiguous(memory_format=fmt)
            for bf16 in bf16s:

                def run(model=model, lr=lr, bf16=bf16):
                    with torch.no_grad(), bf16_autocast(bf16):
                        model.encode(lr, 3.25)

                seconds = best_seconds(run, repeats)
                rows.append(
                    {
                        "batch": batch,
                        "precision": "bf16 autocast" if bf16 else "fp32",
                        "channels_last": channels_last,
                        "gmac": macs / 1e9,
                        "seconds": seconds,
                        "gmacs": macs / seconds / 1e9,
                    }
                )
        generator.to(memory_format=torch.contiguous_format)
    return rows


class EncoderInBf16(nn.Module):
    """The generator with only its encoder under bf16 autocast (base and decoder in float32)."""

    def __init__(self, generator) -> None:
        super().__init__()
        self.generator = generator
        self.neighbours = generator.neighbours
        self.query = generator.query

    def encode(self, lr, factor):
        with bf16_autocast(True):
            encoded = self.generator.encode(lr, factor)
        return encoded.float()._replace(centre=encoded.centre.float())

    def predict_at(self, encoded, positions):
        return self.generator.predict_at(encoded, positions)


def quality_rows(generator, data: Path, cases) -> list[dict]:
    """PSNR/SSIM of the prior alone in fp32 and two bf16 variants on test volumes."""
    from medsr.geometry import plan_output_grid
    from medsr.upsample.reconstruct import reconstruct_volume

    rows = []
    cpu = torch.device("cpu")
    for name, factor, axis, profile in cases:
        acquisition = simulate_acquisition(
            read_volume(data / name), factor=factor, axis=axis, profile=profile
        )
        thick, truth = acquisition.thick, acquisition.truth.array
        mask = evaluation_mask(truth)
        data_range = robust_data_range(truth, mask)
        grid = plan_output_grid(thick.spatial_shape, thick.affine, axis=axis)
        outputs = {}
        for variant in ("fp32", "bf16 autocast (all)", "bf16 encoder only"):
            model = EncoderInBf16(generator) if variant == "bf16 encoder only" else generator
            start = time.perf_counter()
            with bf16_autocast(variant == "bf16 autocast (all)"):
                outputs[variant] = reconstruct_volume(thick, grid, model, device=cpu)
            seconds = time.perf_counter() - start
            scores = score(outputs[variant], truth, mask=mask, axis=axis, data_range=data_range)
            rows.append(
                {
                    "volume": name.split(".nii")[0],
                    "factor": factor,
                    "axis": axis,
                    "variant": variant,
                    "psnr": scores["psnr"],
                    "ssim": scores["ssim"],
                    "psnr_vs_fp32": psnr(
                        outputs[variant], outputs["fp32"], data_range=data_range, mask=mask
                    ),
                    "seconds": seconds,
                }
            )
    return rows


def markdown(sgemm: dict, encoder: list[dict], quality: list[dict]) -> str:
    lines = [f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, "]
    lines[0] += f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    lines += ["", "| sgemm size | GMAC/s |", "|---|---|"]
    lines += [f"| {size} | {rate:.1f} |" for size, rate in sgemm.items()]
    best = max(sgemm.values())
    lines += [
        "",
        f"encoder MACs per call (batch x 3 planes of {PLANE_SHAPE[0]} x {PLANE_SHAPE[1]})",
    ]
    lines += ["", "| batch | precision | channels_last | GMAC | ms | GMAC/s | encoder / sgemm |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in encoder:
        lines.append(
            f"| {r['batch']} | {r['precision']} | {r['channels_last']} | {r['gmac']:.2f} | "
            f"{1000 * r['seconds']:.0f} | {r['gmacs']:.1f} | {r['gmacs'] / best:.0%} |"
        )
    lines += ["", "| volume | factor | axis | variant | PSNR (dB) | SSIM | PSNR vs fp32 output "]
    lines[-1] += "| ΔPSNR vs fp32 | time (s) |"
    lines += ["|---|---|---|---|---|---|---|---|---|"]
    reference = {(r["volume"], r["factor"]): r for r in quality if r["variant"] == "fp32"}
    for r in quality:
        delta = r["psnr"] - reference[(r["volume"], r["factor"])]["psnr"]
        lines.append(
            f"| {r['volume']} | {r['factor']:g} | {r['axis']} | {r['variant']} | {r['psnr']:.3f} | "
            f"{r['ssim']:.4f} | {r['psnr_vs_fp32']:.1f} | {delta:+.3f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mri"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sgemm-sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--quality-cases", type=int, default=len(QUALITY_CASES))
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--bf16", action="store_true", help="bf16 rows even on a CPU without it")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    generator, _ = load_generator(default_model_path())
    generator.eval()
    native = cpu_supports_bf16()
    bf16s = (False, True) if native or args.bf16 else (False,)
    sgemm = {f"{n} (before)": sgemm_gmacs(n, args.repeats) for n in args.sgemm_sizes}
    encoder = encoder_rows(generator, args.batch_sizes, args.repeats, bf16s)
    sgemm |= {f"{n} (after)": sgemm_gmacs(n, args.repeats) for n in args.sgemm_sizes}
    cases = QUALITY_CASES[: args.quality_cases] if True in bf16s else []
    quality = quality_rows(generator, args.data, cases)
    table = f"cpu: {cpu_model()}, native bf16: {'yes' if native else 'no'}"
    if True not in bf16s:  # emulated bf16 runs at a fraction of a GMAC/s: hours, and no use
        table += " (bf16 rows and the bf16 quality check skipped; --bf16 runs them)"
    table += "\n" + markdown(sgemm, encoder, quality)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
