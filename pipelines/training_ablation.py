"""The GAN's effect, measured: trained generators compared on the test volumes, prior alone.

Each model (a checkpoint from `medsr train`) reconstructs thick slices simulated from test
volumes of `pipelines/configs/split.yaml` (never trained or tuned on), with no adaptation to the
scan (`fit_steps=0`), next to linear and cubic B-spline in the same run. The acquisition, mask
and data range are the MRI benchmark's (`benchmark_mri.acquire`: `evaluation_mask`,
`robust_data_range`) and the scores its `medsr.evaluate.simulate.score`: PSNR, 3D SSIM, HFEN
(lower is better), through-plane sharpness (1 = as sharp as the truth); plus a VGG feature
distance (the relative VGG16 relu2_2 feature error of the perceptual loss, averaged over every
4th plane that contains the thick axis; lower is closer to the truth's texture).

The shipped model's ablation (docs/training.md) compares the same warm-up checkpoint continued
for the same steps with MSE alone and with MSE + VGG + adversarial losses:

    python pipelines/training_ablation.py \
        --vgg-weights ../shared/weights/vgg16_imagenet_features.pth \
        --model "MSE only=runs/prior_tail_mse/checkpoints/latest.pt" \
        --model "MSE + VGG + GAN=runs/prior_tail/checkpoints/latest.pt"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from benchmark_mri import Case, acquire

from medsr.evaluate.simulate import score
from medsr.io import read_volume
from medsr.train.losses import PerceptualLoss, load_vgg_features
from medsr.upsample.api import upsample_volume

# (test volume, factor, profile, thick axis)
CASES = [
    ("nilearn_icbm152_2009a_t1_1mm.nii.gz", 4.0, "boxcar", 1),
    ("heudiconv_b0_1.5mm_run2.nii.gz", 4.0, "boxcar", 2),
    ("heudiconv_b0_1.5mm_run1.nii.gz", 6.0, "gaussian", 1),
    ("inia19_macaque_t1_0.5mm.nii.gz", 10.0, "boxcar", 2),
]


def vgg_distance(pred: np.ndarray, truth: np.ndarray, axis: int, loss: PerceptualLoss) -> float:
    """Mean relative VGG feature error over every 4th plane containing the thick `axis`."""
    low, high = float(truth.min()), float(truth.max())
    plane_axis = 0 if axis != 0 else 1
    values = []
    with torch.no_grad():
        for index in range(0, truth.shape[plane_axis], 4):
            t = np.take(truth, index, axis=plane_axis)
            if t.max() <= low:
                continue
            p = np.take(pred, index, axis=plane_axis)
            as_tensor = lambda a: torch.from_numpy((a - low) / (high - low)).float()[None, None]  # noqa: E731
            values.append(float(loss(as_tensor(p), as_tensor(t))))
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=CKPT")
    parser.add_argument("--vgg-weights", required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mri"))
    args = parser.parse_args()
    models = dict(item.split("=", 1) for item in args.model)
    loss = PerceptualLoss(load_vgg_features(args.vgg_weights, "relu2_2"))
    print("| case | model | PSNR (dB) | SSIM | HFEN | sharpness | VGG distance |")
    print("|---|---|---|---|---|---|---|")
    totals: dict[str, list[np.ndarray]] = {}
    for name, factor, profile, axis in CASES:
        case = Case(name, factor, axis, "family", profile)
        thick, truth, mask, data_range = acquire(read_volume(args.data / name), case, seed=0)
        title = f"{name.split('.nii')[0]} x{factor:g} {profile} axis {axis}"
        runs = {m: {"method": m} for m in ("linear", "bspline")}
        runs.update(
            {m: {"method": "misr", "model": path, "fit_steps": 0} for m, path in models.items()}
        )
        for label, options in runs.items():
            pred = upsample_volume(thick, keep_dtype=False, **options).array
            scores = score(pred, truth, mask=mask, axis=axis, data_range=data_range)
            values = np.array(
                [scores[k] for k in ("psnr", "ssim", "hfen", "sharpness")]
                + [vgg_distance(pred, truth, axis, loss)]
            )
            totals.setdefault(label, []).append(values)
            cells = " | ".join(
                f"{v:.4f}" if i in (1, 4) else f"{v:.3f}" for i, v in enumerate(values)
            )
            print(f"| {title} | {label} | {cells} |", flush=True)
    for label, values in totals.items():
        mean = np.mean(values, axis=0)
        cells = " | ".join(f"{v:.4f}" if i in (1, 4) else f"{v:.3f}" for i, v in enumerate(mean))
        print(f"| mean | {label} | {cells} |")


if __name__ == "__main__":
    main()
