"""Histology benchmark: real 2D sections turned into section series with a known truth between
the sections, reconstructed by misr, linear and cubic B-spline; and `medsr batch` throughput.

No public package ships a real serial-section stack (../shared/data/PROVENANCE.md). A series is
therefore cut from one real image I (rows y, columns x): the truth volume is
T(x, y, z) = I(y + z, x) for a window of rows y and z = 0..Z-1, i.e. the tissue seen through a
window that slides one pixel per thin slice. Thin sections (profile width 1 pixel) are kept every
`factor` slices (factors 4-8, as sections far apart), which degrades z exactly as a section
spacing would; the method must restore the skipped rows. The in-plane content is sharp and real,
which is what the self-supervised (source 2) training of medsr relies on. Only the right half
(columns) of each image is used: the left halves train the shipped model
(pipelines/train_default_model.py).

Scores: PSNR over all channels and voxels (range 255 for RGB, max-min for 16-bit), SSIM on the
grey (channel mean) volume; wall time per method, in this process.

Usage: python pipelines/benchmark_histology.py [--data ../shared/data/histology]
           [--fit-steps N] [--model CHECKPOINT] [--batch-series 4]   (--batch-series 0: quality
           only; --model: misr with that checkpoint instead of the shipped prior)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from medsr.evaluate.metrics import psnr, ssim
from medsr.evaluate.simulate import simulate_acquisition
from medsr.io import Volume
from medsr.upsample.api import upsample_volume

IMAGES = ["stardist_he.jpg", "wsidicom_he_tile.png", "stardist_fluo_nuclei.tif"]
FACTORS = (4, 8, 12, 16)
WINDOW = 96  # rows seen by each section
PIXEL_UM = 0.5


def load_image(path: Path) -> np.ndarray:
    """The right half (columns) of a 2D image: the part never used for training."""
    if path.suffix.lower() in (".tif", ".tiff"):
        image = tifffile.imread(path)
    else:
        image = np.asarray(Image.open(path).convert("RGB"))
    return np.ascontiguousarray(image[:, image.shape[1] // 2 :])


def truth_volume(image: np.ndarray) -> Volume:
    """T(x, y, z) = I(y + z, x): shape (X, WINDOW, rows - WINDOW)."""
    depth = image.shape[0] - WINDOW
    stack = np.stack([image[z : z + WINDOW] for z in range(depth)])  # (Z, Y, X[, C])
    array = np.moveaxis(stack, [0, 1, 2], [2, 1, 0])
    return Volume(
        array=np.ascontiguousarray(array),
        affine=np.diag([PIXEL_UM] * 3 + [1.0]),
        meta={"unit": "um"},
    )


def scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    data_range = 255.0 if truth.dtype == np.uint8 else float(truth.max() - truth.min())
    grey = (lambda a: a.mean(axis=3)) if truth.ndim == 4 else (lambda a: a)
    return (
        psnr(pred.astype(np.float32), truth.astype(np.float32), data_range=data_range),
        ssim(grey(pred.astype(np.float32)), grey(truth.astype(np.float32)), data_range=data_range),
    )


def quality(data: Path, fit_steps: int | None, model: Path | None = None) -> list[dict]:
    rows = []
    given = (("fit_steps", fit_steps), ("model", model))
    misr = {key: value for key, value in given if value is not None}
    for name in IMAGES:
        volume = truth_volume(load_image(data / name))
        for factor in FACTORS:
            acquisition = simulate_acquisition(volume, factor=factor, axis=2, thickness=1.0)
            thick = acquisition.thick.with_array(
                np.clip(
                    np.rint(acquisition.thick.array), 0, np.iinfo(volume.array.dtype).max
                ).astype(volume.array.dtype)
            )
            # the sections are thin (one pixel) and far apart: said as users say it
            # (--slice-thickness, or "thickness" in series.json), it sets the fit's profile
            thick.meta["slice_thickness"] = PIXEL_UM
            truth = acquisition.truth.array
            for method in ("misr", "linear", "bspline"):
                start = time.perf_counter()
                options = misr if method == "misr" else {}
                result = upsample_volume(thick, method=method, spacing=PIXEL_UM, axis=2, **options)
                seconds = time.perf_counter() - start
                value_psnr, value_ssim = scores(result.array, truth)
                rows.append(
                    {
                        "image": name,
                        "factor": factor,
                        "method": method,
                        "psnr": value_psnr,
                        "ssim": value_ssim,
                        "seconds": seconds,
                        "sections": thick.spatial_shape[2],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def throughput(
    data: Path, count: int, fit_steps: int | None, model: Path | None = None
) -> list[tuple[str, float, int, float]]:
    """Section series per minute through `medsr batch` (2 workers), per method."""
    results = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "in"
        sections = 0
        for index in range(count):
            image = load_image(data / IMAGES[index % 2])
            series = root / f"series{index}"
            series.mkdir(parents=True)
            for number, top in enumerate(range(index, image.shape[0] - WINDOW, 8)):
                Image.fromarray(image[top : top + WINDOW, :256]).save(series / f"s{number}.png")
                sections += 1
            (series / "series.json").write_text(json.dumps({"spacing": [0.5, 0.5, 4.0]}))
        for method in ("bspline", "misr"):
            command = [
                sys.executable,
                "-m",
                "medsr.cli",
                "batch",
                str(root),
                str(Path(folder) / f"out_{method}"),
                "--method",
                method,
                "--quiet",
                "--workers",
                "2",
            ]
            if method == "misr" and fit_steps is not None:
                command += ["--fit-steps", str(fit_steps)]
            if method == "misr" and model is not None:
                command += ["--model", str(model)]
            start = time.perf_counter()
            subprocess.run(command, check=True)
            minutes = (time.perf_counter() - start) / 60
            results.append((method, count / minutes, sections, sections / minutes))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/histology"))
    parser.add_argument("--fit-steps", type=int, help="misr adaptation steps (default: medsr's)")
    parser.add_argument("--model", type=Path, help="misr checkpoint (default: the shipped prior)")
    parser.add_argument("--batch-series", type=int, default=4)
    args = parser.parse_args()
    rows = quality(args.data, args.fit_steps, args.model)
    print(
        f"\n{os.cpu_count()} cores\n\n| image | factor | sections | method | PSNR (dB) | "
        "ΔPSNR vs B-spline | SSIM | time (s) |\n|---|---|---|---|---|---|---|---|"
    )
    reference = {(r["image"], r["factor"]): r for r in rows if r["method"] == "bspline"}
    for r in rows:
        ref = reference[(r["image"], r["factor"])]
        print(
            f"| {r['image']} | {r['factor']} | {r['sections']} | {r['method']} | "
            f"{r['psnr']:.2f} | {r['psnr'] - ref['psnr']:+.2f} | {r['ssim']:.4f} | "
            f"{r['seconds']:.1f} |"
        )
    if args.batch_series <= 0:
        return
    print("\n| method | series / min | sections | sections / min |\n|---|---|---|---|")
    for method, series_rate, sections, section_rate in throughput(
        args.data, args.batch_series, args.fit_steps, args.model
    ):
        print(f"| {method} | {series_rate:.2f} | {sections} | {section_rate:.1f} |")


if __name__ == "__main__":
    main()
