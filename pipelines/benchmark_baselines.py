"""Time and peak memory of the interpolation baselines (linear, cubic B-spline).

Cases: the bundled sample (4x4x5 mm -> 4 mm isotropic), the 1.5 mm b0 run 1 thickened to 4.5 mm
slices (boxcar, factor 3) and reconstructed to 1.5 mm (also scored against the true volume inside
the head), and a synthetic 256x256x64 volume of 1x1x4 mm to 1 mm.

Time is the median of `--repeats` runs of `upsample_volume` (no file I/O); peak memory is the
largest traced numpy/Python allocation during one more run (tracemalloc), input excluded.

Usage: python pipelines/benchmark_baselines.py [--data ../shared/data/mri] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

from medsr.evaluate.metrics import foreground_mask, psnr, ssim
from medsr.evaluate.simulate import simulate_acquisition
from medsr.io import Volume, read_volume
from medsr.upsample.api import upsample_volume


def _cases(data: Path) -> list[tuple[str, Volume, np.ndarray | None]]:
    sample = read_volume(Path(__file__).parents[1] / "sample_data" / "dipy_aniso_vox.nii.gz")
    b0 = read_volume(data / "heudiconv_b0_1.5mm_run1.nii.gz")
    acquisition = simulate_acquisition(b0, factor=3, axis=2)
    b0_thick, truth = acquisition.thick, acquisition.truth.array
    rng = np.random.default_rng(0)
    synthetic = Volume(
        array=rng.random((256, 256, 64), dtype=np.float32), affine=np.diag([1.0, 1.0, 4.0, 1.0])
    )
    return [
        ("sample dipy b0 58x58x24, 4x4x5 mm -> 4 mm", sample, None),
        ("b0 152x150x27, 1.5x1.5x4.5 mm -> 1.5 mm", b0_thick, truth),
        ("synthetic 256x256x64, 1x1x4 mm -> 1 mm", synthetic, None),
    ]


def _measure(volume: Volume, method: str, repeats: int) -> tuple[float, float, Volume]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = upsample_volume(volume, method=method, keep_dtype=False)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    upsample_volume(volume, method=method, keep_dtype=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak / 2**20, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mri"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{len(__import__('os').sched_getaffinity(0))} cores, numpy {np.__version__}\n"
    )
    print(
        "| case | output shape | method | time (s) | peak memory (MiB) | output (MiB) "
        "| PSNR (dB) | SSIM |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, volume, truth in _cases(args.data):
        for method in ("linear", "bspline"):
            seconds, peak, result = _measure(volume, method, args.repeats)
            scores = ["", ""]
            if truth is not None:
                mask = foreground_mask(truth)
                data_range = float(truth.max() - truth.min())
                scores = [
                    f"{psnr(result.array, truth, data_range=data_range, mask=mask):.2f}",
                    f"{ssim(result.array, truth, data_range=data_range, mask=mask):.4f}",
                ]
            shape = "x".join(map(str, result.spatial_shape))
            print(
                f"| {name} | {shape} | {method} | {seconds:.3f} | {peak:.0f} | "
                f"{result.array.nbytes / 2**20:.0f} | {scores[0]} | {scores[1]} |"
            )


if __name__ == "__main__":
    main()
