"""Make the validation volumes that the fit's settings are chosen on (docs/benchmarks.md,
docs/training.md): the ITK T1 of the split's validation list as it is, and a copy smoothed by a
Gaussian of 2 mm sigma (1 voxel in-plane, 0.67 along its 3 mm axis), which stands in for smooth,
high-SNR scans (a template, an average) without touching a test volume.

    python pipelines/make_validation_volumes.py --data ../shared/data/mri --out VAL

writes VAL/itk_t1_2x2x3mm.nii.gz (a copy) and VAL/itk_t1_smooth.nii.gz (float32, same affine;
with a .json of what made it). Refuses an existing file unless --overwrite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from split import read_split

from medsr.io import read_volume, write_volume
from medsr.io.atomic import write_atomically, write_text_atomically

SOURCE = "itk_t1_2x2x3mm.nii.gz"
SMOOTH = "itk_t1_smooth.nii.gz"
#: the smoothing's Gaussian sigma, in mm, along every axis
SIGMA_MM = 2.0


def smoothed(array: np.ndarray, spacing: tuple[float, ...], sigma_mm: float = SIGMA_MM):
    """`array` (float32) smoothed by a Gaussian of `sigma_mm` along every axis, in voxels of
    `spacing` (edges reflected)."""
    sigma = [sigma_mm / float(step) for step in spacing]
    return gaussian_filter(array.astype(np.float32), sigma=sigma, mode="reflect")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mri"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    validation = {Path(entry["path"]).name for entry in read_split()["validation"]}
    if SOURCE not in validation:
        raise SystemExit(f"error: {SOURCE} is not a validation volume in split.yaml")
    copy, smooth = args.out / SOURCE, args.out / SMOOTH
    for path in (copy, smooth):
        if path.exists() and not args.overwrite:
            raise SystemExit(f"error: {path} exists (use --overwrite to replace it)")
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(copy, lambda staged: shutil.copyfile(args.data / SOURCE, staged))
    volume = read_volume(args.data / SOURCE)
    result = volume.with_array(smoothed(volume.array, volume.spacing))
    write_volume(result, smooth, overwrite=True)
    record = {"source": SOURCE, "gaussian_sigma_mm": SIGMA_MM, "made_by": Path(__file__).name}
    write_text_atomically(smooth.with_name(SMOOTH + ".json"), json.dumps(record, indent=2) + "\n")
    print(f"wrote {copy} and {smooth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
