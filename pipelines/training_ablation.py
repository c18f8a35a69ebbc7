"""Training ablation for docs/training.md: k = 1 vs 3 neighbours, MSE-only vs the full GAN loss.

Each variant trains from scratch on one high-resolution volume with the same steps and seed,
then reconstructs a *different* volume, thickened (boxcar, factor 3, thick axis 2), without
fitting to it (`fit_seconds=0`), next to linear and cubic B-spline in the same run. Scores:
PSNR/SSIM inside the head mask and the through-plane edge-sharpness ratio (1 = truth); time per
1,000 steps from the run's metrics.csv.

Usage: python pipelines/training_ablation.py --train VOL --test VOL --vgg-weights PTH
           [--steps 1500] [--warmup 1000] [--out runs/ablation]
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
from benchmark_mri import thicken

from medsr.cli import main as medsr_main
from medsr.inference import upsample_volume
from medsr.io import read_volume
from medsr.metrics import foreground_mask, hfen, psnr, sharpness_ratio, ssim

VARIANTS = {  # name: (k, perceptual weight, adversarial weight)
    "k=1, MSE only": (1, 0.0, 0.0),
    "k=3, MSE only": (3, 0.0, 0.0),
    "k=1, MSE + VGG + GAN": (1, 0.003, 0.0001),
    "k=3, MSE + VGG + GAN": (3, 0.003, 0.0001),
}


def seconds_per_thousand(metrics: Path, warmup: int) -> tuple[float, float]:
    """Seconds per 1,000 steps in the MSE phase and in the adversarial phase."""
    rows = list(csv.DictReader(metrics.open()))
    steps = np.array([int(r["step"]) for r in rows])
    seconds = np.array([float(r["seconds"]) for r in rows])
    mse = seconds[steps <= warmup]
    gan = seconds[steps > warmup]
    per_mse = 1000 * (mse[-1] - mse[0]) / max(1, len(mse) - 1)
    per_gan = 1000 * (gan[-1] - gan[0]) / max(1, len(gan) - 1) if len(gan) > 1 else float("nan")
    return per_mse, per_gan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--vgg-weights", required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = parser.parse_args()
    thick, truth = thicken(read_volume(args.test), 3.0, "boxcar", 2)
    mask, data_range = foreground_mask(truth), float(truth.max() - truth.min())

    def score(array: np.ndarray) -> str:
        return (
            f"{psnr(array, truth, data_range=data_range, mask=mask):.2f} | "
            f"{ssim(array, truth, data_range=data_range, mask=mask):.4f} | "
            f"{hfen(array, truth, mask=mask):.3f} | "
            f"{sharpness_ratio(array, truth, axis=2, mask=mask):.3f}"
        )

    print("| model | PSNR (dB) | SSIM | HFEN | sharpness | s / 1,000 steps (MSE / GAN phase) |")
    print("|---|---|---|---|---|---|")
    for method in ("linear", "bspline"):
        result = upsample_volume(thick, method=method, keep_dtype=False)
        print(f"| {method} | {score(result.array)} | |", flush=True)
    for name, (k, beta, gamma) in VARIANTS.items():
        run = args.out / name.replace(" ", "").replace(",", "_").replace("+", "")
        shutil.rmtree(run, ignore_errors=True)
        code = medsr_main(
            [
                "train",
                "--data",
                args.train,
                "--out",
                str(run),
                "--quiet",
                "--vgg-weights",
                args.vgg_weights,
                "--set",
                f"model.neighbours={k}",
                "--set",
                f"loss.perceptual_weight={beta}",
                "--set",
                f"loss.adversarial_weight={gamma}",
                "--set",
                f"train.steps={args.steps}",
                "--set",
                f"train.warmup_steps={args.warmup}",
                "--set",
                "data.factors=[2,3,4,5]",
                "--set",
                "train.validate_every=100000",
            ]
        )
        if code:
            raise SystemExit(code)
        result = upsample_volume(
            thick,
            method="misr",
            model=run / "checkpoints" / "latest.pt",
            fit_seconds=0,
            keep_dtype=False,
        )
        per_mse, per_gan = seconds_per_thousand(run / "metrics.csv", args.warmup)
        print(f"| {name} | {score(result.array)} | {per_mse:.0f} / {per_gan:.0f} |", flush=True)


if __name__ == "__main__":
    main()
