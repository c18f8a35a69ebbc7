"""A 4D series fitted once against a fit per frame: time, peak memory and PSNR against the truth.

The series (simulated, from the three b0 runs of ../shared/data/mri, one subject):
- each run cropped to 64 x 64 x 60 voxels of 1.5 mm (x 40:104, y 40:104, z 10:70), float32;
- frame t (t = 0 .. frames-1) is run ``t % 3`` times a slow drift ``1 + 0.03 sin(2 pi t /
  frames)`` and a random gain of standard deviation 0.5 % (seeded): its **truth**, thin;
- its **input** is the truth thickened along z by 3 (`medsr.degrade.simulate_thick_slices`,
  boxcar: 20 slices of 4.5 mm) plus Gaussian noise of 1 % of the truth's 99.5th percentile;
- the inputs are one 4D NIfTI (float32); the outputs have the truth's 60 slices of 1.5 mm.

Each run is `medsr.upsample.files.upsample_file` in a fresh subprocess (the learned method, the
shipped prior, the default fit steps unless --fit-steps), which reports its wall time and its
peak resident memory (VmHWM of /proc/self/status). Fit once: all frames. Per frame: the first
--per-frame-frames frames only (a fit per frame costs the same for every frame: its time per
frame is extrapolated to the whole series, and said so). PSNR: each output frame against its
truth frame, inside the truth's foreground (`evaluation_mask`), data range from its 0.5 and 99.5
percentiles (`robust_data_range`), on the frames both runs made.

Usage (from the repository root):
    python pipelines/benchmark_series4d.py [--frames 60] [--per-frame-frames 4] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

MRI = Path(__file__).resolve().parents[2] / "shared" / "data" / "mri"
FACTOR = 3

RUNNER = """
import json, sys, time
from medsr.upsample.files import upsample_file
source, output, mode, steps = sys.argv[1:5]
options = {"fit_per_frame": mode == "per-frame", "progress": False}
if steps != "default":
    options["fit_steps"] = int(steps)
start = time.perf_counter()
upsample_file(source, output, **options)
seconds = time.perf_counter() - start
status = open("/proc/self/status").read().splitlines()
peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024}))
"""


def truth_frames(frames: int, data: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The thin truth frames (float32, 64 x 64 x 60) and their 1.5 mm affine."""
    runs, affine = [], None
    for run in (1, 2, 3):
        image = nib.load(data / f"heudiconv_b0_1.5mm_run{run}.nii.gz")
        runs.append(np.asarray(image.dataobj, dtype=np.float32)[40:104, 40:104, 10:70])
        affine = image.affine.copy()
    affine[:3, 3] = (affine @ np.array([40.0, 40.0, 10.0, 1.0]))[:3]
    gains = np.random.default_rng(0).normal(0.0, 0.005, frames)
    drift = 1 + 0.03 * np.sin(2 * np.pi * np.arange(frames) / frames) + gains
    return [runs[t % 3] * np.float32(drift[t]) for t in range(frames)], affine


def write_series(truths: list[np.ndarray], affine: np.ndarray, path: Path) -> None:
    """The thick, noisy inputs of `truths` as one 4D NIfTI."""
    from medsr.degrade import simulate_thick_slices, thick_slice_affine

    rng = np.random.default_rng(1)
    sigma = 0.01 * float(np.percentile(truths[0], 99.5))
    thick = [
        simulate_thick_slices(t, 2, FACTOR) + rng.normal(0, sigma, (64, 64, 60 // FACTOR))
        for t in truths
    ]
    image = nib.Nifti1Image(np.stack(thick, axis=3).astype(np.float32), None)
    image.set_sform(thick_slice_affine(affine, 2, FACTOR), code=1)
    image.set_qform(thick_slice_affine(affine, 2, FACTOR), code=1)
    nib.save(image, path)


def run(source: Path, output: Path, mode: str, steps: str) -> dict:
    """One `upsample_file` in a fresh process: its seconds and peak memory."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-c", RUNNER, str(source), str(output), mode, steps]
    done = subprocess.run(command, cwd=root, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def frame_psnr(output: Path, truths: list[np.ndarray], count: int) -> list[float]:
    from medsr.evaluate.metrics import psnr
    from medsr.evaluate.simulate import evaluation_mask, robust_data_range

    image, scores = nib.load(output), []
    for t in range(count):
        truth = truths[t]
        mask = evaluation_mask(truth)
        predicted = np.asarray(image.dataobj[..., t], dtype=np.float32)
        scores.append(psnr(predicted, truth, data_range=robust_data_range(truth, mask), mask=mask))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=MRI)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--per-frame-frames", type=int, default=4)
    parser.add_argument("--fit-steps", default="default")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="medsr-series4d-"))
    out.mkdir(parents=True, exist_ok=True)
    truths, affine = truth_frames(args.frames, args.data)
    few = args.per_frame_frames
    write_series(truths, affine, out / "series.nii.gz")
    write_series(truths[:few], affine, out / "series_few.nii.gz")
    once = run(out / "series.nii.gz", out / "once.nii.gz", "once", args.fit_steps)
    each = run(out / "series_few.nii.gz", out / "each.nii.gz", "per-frame", args.fit_steps)
    once_psnr = frame_psnr(out / "once.nii.gz", truths, few)
    each_psnr = frame_psnr(out / "each.nii.gz", truths, few)
    per_frame_total = each["seconds"] / few * args.frames
    result = {
        "frames": args.frames,
        "fit_once": once,
        "per_frame_measured_frames": few,
        "per_frame": each,
        "per_frame_extrapolated_seconds": per_frame_total,
        "psnr_once": once_psnr,
        "psnr_per_frame": each_psnr,
        "psnr_once_minus_per_frame_mean": float(np.mean(np.subtract(once_psnr, each_psnr))),
    }
    print(json.dumps(result, indent=2))
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
