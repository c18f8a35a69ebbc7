"""One fit, every self-ensemble: PSNR / SSIM over B-spline of the reconstruction with 1, 2, 4 or
8 flipped passes (`medsr.upsample.ensemble.ENSEMBLE_FLIPS`) after the same fit, for the fit's
pixel loss given (`medsr.upsample.adapt.FIT_PIXEL_LOSS`).

The case is the MRI benchmark's (`benchmark_mri.acquire`: the same acquisition, mask and robust
data range); the fit and the reconstructions run in this process, through the functions that
`medsr upsample` calls (`adapt_to_grid`, `reconstruct_volume`, `calibrated` included), so the
fit is run once and each ensemble only adds its reconstruction. The residual gain is therefore
fitted here for one pass (`adapt_to_grid`'s default), as `medsr upsample` fitted it until
2026-12-07 (evening); since then it fits it for the ensemble it reconstructs with. The ensemble
and the fit's loss were chosen on the validation volumes of pipelines/configs/split.yaml with
it (the ITK T1 and its smoothed copy, `make_validation_volumes.py`); the test volumes are only
measured. `fit_curves.py` measures the same settings (``,loss=`` and ``,ensemble=``) one
`medsr upsample` process per point, i.e. with a fit per point; this script fits once per loss
and reuses the fit.

Usage (from the repository root):
    python pipelines/ensemble_curves.py --data VAL --volume itk_t1_2x2x3mm.nii.gz --factor 4 \
        --axis 0 --loss mse l1 --ensembles 1 2 4 --out ensemble.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from benchmark_mri import Case, acquire
from fit_curves import add_case_arguments, append_rows, check_out

import medsr.upsample.adapt as adapt
from medsr.evaluate.simulate import score
from medsr.geometry import plan_output_grid
from medsr.io import read_volume
from medsr.upsample.adapt import adapt_to_grid
from medsr.upsample.baseline import upsample_baseline
from medsr.upsample.checks import default_fit_steps, load_model
from medsr.upsample.reconstruct import reconstruct_volume

FIELDS = ("volume", "factor", "axis", "condition", "profile", "loss", "steps", "fit_seconds")
FIELDS += ("ensemble", "seconds", "psnr", "ssim", "bspline_psnr", "bspline_ssim")
FIELDS += ("delta_psnr", "delta_ssim", "guard", "gain")


def case_rows(args: argparse.Namespace, loss: str) -> list[dict]:
    """Rows of one case, one fit with `loss`, one row per ensemble size."""
    case = Case(args.volume, args.factor, args.axis, args.condition, args.profile)
    source = read_volume(args.data / args.volume)
    thick, truth, mask, data_range = acquire(source, case, seed=0)
    spacing = float(thick.spacing[args.axis])
    if case.thickness is not None:  # what the benchmark tells the fit (`method_argv`)
        thick.meta["slice_thickness"] = case.thickness / case.factor * spacing
    if case.condition == "sinc":
        thick.meta["slice_profile"] = "sinc"
    # the truth's grid: its spacing along the axis (not the finest in-plane one, which an
    # anisotropic source's other axes may set)
    target = float(source.spacing[args.axis])
    grid = plan_output_grid(thick.spatial_shape, thick.affine, spacing=target, axis=args.axis)
    base = upsample_baseline(thick, grid, "bspline", keep_dtype=False).array
    base_scores = score(base, truth, mask=mask, axis=args.axis, data_range=data_range)
    device = torch.device("cpu")
    steps = default_fit_steps("auto", device) if args.steps is None else args.steps
    generator, config = load_model(thick, grid, {"model": args.model})
    adapt.FIT_PIXEL_LOSS = loss
    start, guard = time.perf_counter(), {}
    model, _ = adapt_to_grid(
        generator, config, thick, grid, steps=steps, device=device, guard=guard
    )
    fit_seconds = time.perf_counter() - start
    rows = []
    for ensemble in args.ensembles:
        start = time.perf_counter()
        pred = reconstruct_volume(thick, grid, model, device=device, ensemble=ensemble)
        seconds = time.perf_counter() - start
        scores = score(pred, truth, mask=mask, axis=args.axis, data_range=data_range)
        row = {"volume": args.volume.split(".nii")[0], "factor": args.factor, "axis": args.axis}
        row |= {"condition": args.condition, "profile": args.profile, "loss": loss}
        row |= {"steps": steps, "fit_seconds": round(fit_seconds, 1), "ensemble": ensemble}
        row |= {"seconds": round(seconds, 2), "psnr": scores["psnr"], "ssim": scores["ssim"]}
        row |= {"bspline_psnr": base_scores["psnr"], "bspline_ssim": base_scores["ssim"]}
        row |= {"delta_psnr": scores["psnr"] - base_scores["psnr"]}
        row |= {"delta_ssim": scores["ssim"] - base_scores["ssim"]}
        row |= {"guard": guard.get("choice", ""), "gain": guard.get("residual_gain", "")}
        print(
            " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, ("family", "noise", "sinc", "gap"))
    parser.add_argument("--model", help="checkpoint (default: the shipped weights)")
    parser.add_argument("--steps", type=int, help="fit steps (default: the command's)")
    parser.add_argument("--loss", nargs="+", default=["mse"], choices=("mse", "l1"))
    parser.add_argument("--ensembles", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    check_out(args.out, FIELDS)
    torch.manual_seed(0)
    append_rows(args.out, [row for loss in args.loss for row in case_rows(args, loss)], FIELDS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
