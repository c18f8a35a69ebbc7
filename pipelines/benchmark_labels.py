"""Label maps: shape-based interpolation against nearest-neighbour, Dice per label.

    python pipelines/benchmark_labels.py [--data ../shared/data/mri]

Tissue-class maps of real high-resolution MRI: 1D k-means (3 classes, initialised at intensity
quantiles, deterministic) of the intensities inside the head mask, background 0. Each map is made
thick along array axis 2 by x4 and x8 the way a segmentation drawn on thick slices is: every
thick slice carries the label of the thin slice at its centre. Both methods bring it back onto the
original grid; Dice per class against the original map (over the slabs covered).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from medsr.degrade import thick_slice_affine
from medsr.evaluate.metrics import foreground_mask
from medsr.geometry import plan_output_grid
from medsr.io import Volume, read_volume
from medsr.labels import dice, nearest_labels, upsample_labels

VOLUMES = [
    "heudiconv_b0_1.5mm_run1.nii.gz",
    "haase_t1_head_1.6mm.nii.gz",
    "inia19_macaque_t1_0.5mm.nii.gz",
]
CLASSES = 3


def tissue_classes(volume: Volume) -> np.ndarray:
    """Background 0 and k-means classes 1..CLASSES by increasing intensity."""
    array = volume.array.astype(np.float32)
    mask = foreground_mask(array)
    values = array[mask]
    centres = np.quantile(values, (np.arange(CLASSES) + 0.5) / CLASSES)
    for _ in range(50):
        nearest = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        centres = np.array([values[nearest == k].mean() for k in range(CLASSES)])
    labels = np.zeros(array.shape, np.uint8)
    labels[mask] = 1 + np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mri"))
    args = parser.parse_args()
    print("| volume | factor | class | Dice shape-based | Dice nearest | Δ |")
    print("|---|---|---|---|---|---|")
    for name in VOLUMES:
        volume = read_volume(args.data / name)
        truth = tissue_classes(volume)
        for factor in (4, 8):
            count = truth.shape[2] // factor
            centres = (np.arange(count) * factor + factor // 2).astype(int)
            thick = Volume(truth[:, :, centres], thick_slice_affine(volume.affine, 2, factor))
            grid = plan_output_grid(thick.spatial_shape, thick.affine, spacing=volume.spacing[2])
            reference = truth[:, :, : count * factor]
            start = time.perf_counter()
            shaped = upsample_labels(thick, grid).array
            seconds = time.perf_counter() - start
            nearest = nearest_labels(thick, grid).array
            for label in range(1, CLASSES + 1):
                a, b = dice(shaped, reference, label), dice(nearest, reference, label)
                row = f"| {name.split('.nii')[0]} | x{factor} | {label} | {a:.4f} | {b:.4f} |"
                print(f"{row} {a - b:+.4f} |")
            print(f"<!-- {name} x{factor}: shape-based {seconds:.1f} s -->", flush=True)


if __name__ == "__main__":
    main()
