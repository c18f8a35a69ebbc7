"""The slice-profile estimate on simulated acquisitions of the training and validation volumes:
the cases that set its thresholds (`medsr.upsample.profile`), and a check that they still hold.

Each case is the MRI benchmark's acquisition (`benchmark_mri.acquire`) of a volume along an
axis; the estimate sees what the fit sees (`medsr.upsample.adapt.adapt_to_scan`: the grey,
normalised in-plane slices of the thick volume and their voxel noise). Test volumes are never
read (pipelines/configs/split.yaml): the Haase T1 (training) along each axis, the ITK T1 and its
smoothed copy (validation, `make_validation_volumes.py`) and the EPI (training) along their thick
axis; x2-x8 (the EPI's 35 slices: up to x4); boxcar, Gaussian and sinc, with and without Rician
noise. A row per case; the summary counts the decisions by true profile (sinc counts as
boxcar-like) and the largest best-candidate misfit of a decided case.

Usage (from the repository root):
    python pipelines/profile_estimate_cases.py --data ../shared/data/mri --validation VAL \
        --out profile_cases.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from benchmark_mri import Case, acquire

from medsr.io import read_volume
from medsr.train.noise import scan_noise
from medsr.upsample.adapt import scan_sources
from medsr.upsample.profile import estimate_slice_profile

#: (file, folder key, axes)
VOLUMES = (
    ("itk_t1_2x2x3mm.nii.gz", "validation", (2,)),
    ("itk_t1_smooth.nii.gz", "validation", (2,)),
    ("haase_t1_head_1.6mm.nii.gz", "data", (0, 1, 2)),
    ("heudiconv_epi_3.25x3.25x3.6mm.nii.gz", "data", (2,)),
)
FACTORS = (2, 3, 4, 5, 6.5, 8)
#: (condition, profile) of the benchmark's acquisitions
ACQUISITIONS = (
    ("family", "boxcar"),
    ("family", "gaussian"),
    ("sinc", "sinc"),
    ("noise", "boxcar"),
    ("noise", "gaussian"),
)
FIELDS = ("volume", "factor", "axis", "condition", "profile", "estimate", "reason")
FIELDS += tuple(
    f"{shape}_{kind}" for shape in ("boxcar", "gaussian", "sinc") for kind in ("level", "power")
)


def cases(folders: dict) -> list[dict]:
    rows = []
    for name, folder, axes in VOLUMES:
        volume = read_volume(folders[folder] / name)
        for factor in FACTORS:
            if name.startswith("heudiconv") and factor > 4:
                continue
            for axis in axes:
                for condition, profile in ACQUISITIONS:
                    rows.append(one_case(volume, name, factor, axis, condition, profile))
                    print(*(rows[-1][key] for key in FIELDS[:7]), flush=True)
    return rows


def one_case(volume, name: str, factor: float, axis: int, condition: str, profile: str) -> dict:
    thick, *_ = acquire(volume, Case(name, factor, axis, condition, profile), seed=0)
    sources = scan_sources(thick, axis, factor)
    estimate = estimate_slice_profile(sources, factor, 1.0, scan_noise(sources[0].array))
    row = {"volume": name.split(".nii")[0], "factor": factor, "axis": axis}
    row |= {"condition": condition, "profile": profile, "estimate": estimate.profile or ""}
    row["reason"] = estimate.reason
    for shape, scores in estimate.scores.items():
        row |= {f"{shape}_{kind}": value for kind, value in scores.items()}
    return row


def summary(rows: list[dict]) -> str:
    decided = [r for r in rows if "bins" not in r["reason"]]
    lines = [f"{len(decided)} cases with enough slices ({len(rows)} in all)"]
    for kind, members in (("Gaussian", ("gaussian",)), ("boxcar-like", ("boxcar", "sinc"))):
        mine = [r for r in decided if r["profile"] in members]
        named = {p: sum(r["estimate"] == p for r in mine) for p in ("gaussian", "boxcar", "")}
        lines.append(f"{kind} acquisitions: {len(mine)}; named {named}")
    best = [
        min(r["gaussian_level"], r["boxcar_level"], r["sinc_level"])
        for r in decided
        if r["estimate"]
    ]
    lines.append(f"largest best-candidate level misfit of a decided case: {max(best):.4g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mri"))
    parser.add_argument("--validation", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = cases({"data": args.data, "validation": args.validation})
    with args.out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, FIELDS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
