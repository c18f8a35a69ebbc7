"""Which cheap signal ranks the learned method's error? The probe behind `--confidence`.

For each test case (thick slices simulated from a test volume of pipelines/configs/split.yaml),
the shipped prior is adapted to the scan, both through-plane orientations are reconstructed, and
candidate uncertainty maps are scored against |misr - truth| inside the evaluation mask: the
Spearman rank correlation (a fixed-seed subsample of 400,000 voxels) and the share of the
squared error held by the 10 % most uncertain voxels. The estimator that `medsr upsample
--confidence` computes is ``sum_s1``; pipelines/benchmark_confidence.py validates it end to end.

Run: ``python pipelines/probe_confidence_estimators.py --data ../shared/data/mri --fit-steps 100``
(the session of 2026-12-01 ran it, before the package layout moved, with 100 fit steps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage, stats

from medsr.evaluate.simulate import evaluation_mask, simulate_acquisition
from medsr.geometry import plan_output_grid
from medsr.io import read_volume
from medsr.upsample.adapt import adapt_to_grid
from medsr.upsample.baseline import upsample_baseline
from medsr.upsample.checks import load_model
from medsr.upsample.reconstruct import reconstruct_volume

#: (test volume, thick axis, factor, profile)
CASES = [
    ("nilearn_icbm152_2009a_t1_1mm.nii.gz", 2, 4.0, "gaussian"),
    ("inia19_macaque_t1_0.5mm.nii.gz", 1, 5.0, "boxcar"),
    ("heudiconv_b0_1.5mm_run1.nii.gz", 2, 4.0, "gaussian"),
]


def candidates(mean, half_difference, bspline, axis: int, factor: float) -> dict:
    """Every candidate map, in the input's units."""
    maps = {"orient_diff": half_difference, "misr_minus_bspline": np.abs(mean - bspline)}
    gradient = np.gradient(bspline, axis=axis)
    maps["thick_axis_gradient"] = np.abs(gradient)
    maps["curvature"] = np.abs(np.gradient(gradient, axis=axis))
    for sigma in (1.0, 2.0):
        for key in ("orient_diff", "misr_minus_bspline"):
            maps[f"{key}_s{sigma:g}"] = ndimage.gaussian_filter(maps[key], sigma)
    both = maps["orient_diff"] + maps["misr_minus_bspline"]
    maps["sum_s1"] = ndimage.gaussian_filter(both, 1.0)
    maps["sum_grad_s1"] = ndimage.gaussian_filter(
        both + 0.5 * maps["thick_axis_gradient"] / factor, 1.0
    )
    return maps


def rank_scores(uncertainty: np.ndarray, error: np.ndarray, subsample: np.ndarray) -> dict:
    """Spearman of `uncertainty` with `error` and the top-10 % share of the squared error."""
    rho = stats.spearmanr(uncertainty[subsample], error[subsample]).statistic
    top = uncertainty >= np.quantile(uncertainty, 0.9)
    squared = error**2
    return {
        "spearman": round(float(rho), 3),
        "top10_share": round(float(squared[top].sum() / squared.sum()), 3),
    }


def probe_case(path: Path, axis: int, factor: float, profile: str, steps: int) -> list[dict]:
    volume = read_volume(path)
    acquisition = simulate_acquisition(volume, factor=factor, axis=axis, profile=profile)
    thick, truth = acquisition.thick, acquisition.truth.array
    grid = plan_output_grid(
        thick.spatial_shape, thick.affine, spacing=float(volume.spacing[axis]), axis=axis
    )
    device = torch.device("cpu")
    generator, config = load_model(thick, grid, {})
    generator, _ = adapt_to_grid(generator, config, thick, grid, steps=steps, device=device)
    mean, half_difference = reconstruct_volume(
        thick, grid, generator, device=device, precision="fp32", disagreement=True
    )
    bspline = upsample_baseline(thick, grid, "bspline", keep_dtype=False).array.astype(np.float32)
    mask = evaluation_mask(truth)
    error = np.abs(mean - truth)[mask]
    rng = np.random.default_rng(0)
    subsample = rng.choice(error.size, min(error.size, 400_000), replace=False)
    rows = []
    for key, uncertainty in candidates(mean, half_difference, bspline, axis, factor).items():
        scores = rank_scores(uncertainty[mask], error, subsample)
        rows.append({"case": path.name, "factor": factor, "estimator": key, **scores})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mri", help="folder of the test volumes")
    parser.add_argument("--fit-steps", type=int, default=100)
    parser.add_argument("--out", default="confidence_probe.json", help="JSON of every row")
    args = parser.parse_args(argv)
    rows = []
    for name, axis, factor, profile in CASES:
        start = time.perf_counter()
        rows += probe_case(Path(args.data) / name, axis, factor, profile, args.fit_steps)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    for row in rows:
        print(row)
    Path(args.out).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
