"""MRI benchmark: medsr (default `medsr upsample`, and its shipped prior alone) against linear,
cubic B-spline and the plain SMORE-style baseline, on thick slices simulated from high-resolution
volumes that were never used for training (pipelines/configs/default_model_validation.txt).

Each case thickens a high-resolution volume along one array axis (boxcar or Gaussian profile,
factor 2.5-12, integer and not), writes it as NIfTI, and runs every method as its own process (as
a user would), so that wall time and peak memory (max RSS of that process) are end to end. The
SMORE-style ablation gets the same fitting time as misr's adaptation took in that case (misr's
wall time minus the prior-only run's). Outputs lie on the
high-resolution grid by construction (docs/geometry.md) and are scored against the truth inside a
head mask (Otsu, closed, filled): PSNR, 3D SSIM, and an edge-sharpness ratio (mean through-plane
gradient magnitude of the output over that of the truth, inside the mask; 1 = as sharp as truth)
and HFEN (relative error of Laplacian-of-Gaussian filtered images; lower is better).

Usage: python pipelines/benchmark_mri.py [--data ../shared/data/mri] [--fit-steps N]
           [--cases all|quick] [--out docs/benchmark_mri.csv]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medsr.evaluation import simulate_acquisition
from medsr.io import Volume, read_volume, write_volume
from medsr.metrics import foreground_mask, hfen, psnr, sharpness_ratio, ssim

# (volume file, factor, profile, thick array axis)
CASES = [
    ("heudiconv_b0_1.5mm_run1.nii.gz", 3.0, "boxcar", 2),
    ("heudiconv_b0_1.5mm_run1.nii.gz", 2.5, "gaussian", 0),
    ("heudiconv_b0_1.5mm_run2.nii.gz", 4.0, "gaussian", 1),
    ("heudiconv_b0_1.5mm_run2.nii.gz", 5.0, "boxcar", 2),
    ("inia19_macaque_t1_0.5mm.nii.gz", 5.0, "boxcar", 2),
    ("inia19_macaque_t1_0.5mm.nii.gz", 4.0, "gaussian", 0),
    ("heudiconv_b0_1.5mm_run1.nii.gz", 8.0, "boxcar", 2),
    ("heudiconv_b0_1.5mm_run2.nii.gz", 10.0, "gaussian", 1),
    ("inia19_macaque_t1_0.5mm.nii.gz", 12.0, "boxcar", 0),
    # 0.5 x 0.5 x 5 mm, the routine clinical case the per-factor heads could not do
    ("inia19_macaque_t1_0.5mm.nii.gz", 10.0, "boxcar", 2),
    # non-integer factors, next to the integer ones above
    ("heudiconv_b0_1.5mm_run1.nii.gz", 3.7, "gaussian", 1),
    ("inia19_macaque_t1_0.5mm.nii.gz", 6.5, "boxcar", 2),
]
METHODS = ("misr", "misr_prior", "smore", "linear", "bspline")


def thicken(volume: Volume, factor: float, profile: str, axis: int) -> tuple[Volume, np.ndarray]:
    """Thick volume and the truth cropped to the slabs it covers (a whole number of slices)."""
    acquisition = simulate_acquisition(volume, factor=factor, axis=axis, profile=profile)
    return acquisition.thick, acquisition.truth.array


def run_timed(command: list[str]) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS in MiB) of that process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {process.stderr.read().decode()[-500:]}")
    return seconds, usage.ru_maxrss / 1024


def method_command(method: str, source: Path, output: Path, options: dict) -> list[str]:
    if method == "smore":
        seconds = str(options["smore_seconds"])
        return [sys.executable, __file__, "--smore", str(source), str(output), "--seconds", seconds]
    command = [sys.executable, "-m", "medsr.cli", "upsample", str(source), "-o", str(output)]
    command += ["--method", "misr" if method.startswith("misr") else method]
    command += ["--dtype", "float32", "--quiet", "--overwrite"]
    if method == "misr" and options.get("fit_steps") is not None:
        command += ["--fit-steps", str(options["fit_steps"])]
    if method == "misr_prior":
        command += ["--fit-steps", "0"]
    return command


def run_smore(source: Path, output: Path, seconds: float) -> None:
    """The SMORE-style baseline as one process: fit on the scan, then the same reconstruction
    path as misr (both orientations, exact resample, fusion), write."""
    import torch

    from medsr.geometry import plan_output_grid
    from medsr.reconstruction import reconstruct_volume
    from medsr.smore import fit_smore

    volume = read_volume(source)
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = fit_smore(volume, seconds=seconds, device=device)
    out = reconstruct_volume(volume, grid, network, device=device)
    write_volume(volume.with_array(out, grid.affine), output, overwrite=True)


def benchmark(data: Path, cases: list, fit_steps: int | None, rows_out: Path | None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, factor, profile, axis in cases:
            thick, truth = thicken(read_volume(data / name), factor, profile, axis)
            source = write_volume(thick, Path(folder) / "thick.nii.gz", overwrite=True)
            mask = foreground_mask(truth)
            data_range = float(truth.max() - truth.min())
            options: dict = {"fit_steps": fit_steps}
            times = {}
            for method in METHODS:
                output = Path(folder) / f"{method}.nii.gz"
                if method == "smore":
                    options["smore_seconds"] = max(1.0, times["misr"] - times["misr_prior"])
                seconds, memory = run_timed(method_command(method, source, output, options))
                times[method] = seconds
                pred = read_volume(output).array
                assert pred.shape == truth.shape, (pred.shape, truth.shape)
                rows.append(
                    {
                        "volume": name.split(".nii")[0],
                        "factor": factor,
                        "profile": profile,
                        "axis": axis,
                        "method": method,
                        "psnr": psnr(pred, truth, data_range=data_range, mask=mask),
                        "ssim": ssim(pred, truth, data_range=data_range, mask=mask),
                        "sharpness": sharpness_ratio(pred, truth, axis=axis, mask=mask),
                        "hfen": hfen(pred, truth, mask=mask),
                        "seconds": seconds,
                        "peak_mib": memory,
                    }
                )
                print(
                    " ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in rows[-1].items()
                    ),
                    flush=True,
                )
    if rows_out:
        with rows_out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


def print_markdown(rows: list[dict]) -> None:
    print(f"\nmachine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores\n")
    print(
        "| volume | factor | profile | axis | method | PSNR (dB) | ΔPSNR vs B-spline | SSIM "
        "| HFEN | sharpness | time (s) | peak RSS (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    reference = {
        (r["volume"], r["factor"], r["profile"], r["axis"]): r
        for r in rows
        if r["method"] == "bspline"
    }
    for r in rows:
        ref = reference[(r["volume"], r["factor"], r["profile"], r["axis"])]
        print(
            f"| {r['volume']} | {r['factor']} | {r['profile']} | {r['axis']} | {r['method']} | "
            f"{r['psnr']:.2f} | {r['psnr'] - ref['psnr']:+.2f} | {r['ssim']:.4f} | "
            f"{r['hfen']:.3f} | {r['sharpness']:.3f} | {r['seconds']:.1f} | "
            f"{r['peak_mib']:.0f} |"
        )
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        gain = np.mean(
            [
                r["psnr"] - reference[(r["volume"], r["factor"], r["profile"], r["axis"])]["psnr"]
                for r in mine
            ]
        )
        print(
            f"\n{method}: mean ΔPSNR vs B-spline {gain:+.2f} dB, mean SSIM "
            f"{np.mean([r['ssim'] for r in mine]):.4f}, max time "
            f"{max(r['seconds'] for r in mine):.1f} s",
            end="",
        )
    ssim_ref = {k: r["ssim"] for k, r in reference.items()}
    by_case = {}
    for r in rows:
        by_case.setdefault((r["volume"], r["factor"], r["profile"], r["axis"]), {})[r["method"]] = r
    misr = [case["misr"]["psnr"] - case["smore"]["psnr"] for case in by_case.values()]
    above = sum(
        case["misr"]["psnr"] > case["bspline"]["psnr"] and case["misr"]["ssim"] > ssim_ref[key]
        for key, case in by_case.items()
    )
    print(f"\n\nmisr vs SMORE-style (same fitting time): mean {np.mean(misr):+.2f} dB")
    print(f"misr above B-spline in PSNR and SSIM: {above} of {len(by_case)} cases")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mri"))
    parser.add_argument("--fit-steps", type=int, help="misr adaptation steps (default: medsr's)")
    parser.add_argument("--seconds", type=float, default=45.0, help=argparse.SUPPRESS)
    parser.add_argument("--cases", choices=["all", "quick"], default="all")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--smore", nargs=2, type=Path, metavar=("IN", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.smore:
        run_smore(*args.smore, args.seconds)
        return
    cases = CASES if args.cases == "all" else CASES[:1]
    print_markdown(benchmark(args.data, cases, args.fit_steps, args.out))


if __name__ == "__main__":
    main()
