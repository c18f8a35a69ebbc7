"""Confidence-map benchmark on the test volumes of pipelines/configs/split.yaml (issue 17): does
the map of ``medsr upsample --confidence`` (`medsr.upsample.confidence`) rank the learned
method's error, and what does it cost?

Each case thickens a test volume with benchmark_mri's acquisition (`benchmark_mri.acquire`, the
one model of `medsr.evaluate.simulate`), then upsamples it twice in this process with the default
learned method (shipped prior + the per-scan fit): a plain run, and a run with ``confidence=True``
(whose output must be the plain run's, to the bit). Per case, over the evaluation mask
(`medsr.evaluate.simulate.evaluation_mask`):

- ``spearman``: Spearman's rank correlation of the map u with |misr - truth|
  (`scipy.stats.spearmanr`, on at most `SAMPLE` mask voxels drawn with seed 0);
- ``top10_share``: the share of the squared error held by the 10 % of mask voxels with the
  largest u (a map that knows nothing scores 0.10);
- ``spearman_between``, ``top10_between``: the same over the mask's reconstructed voxels only,
  without the output slices on input slice centres (odd integer factors), which the map marks
  as measured (0) although the thick slice there is a slab average, not the thin truth;
- ``time_plain``, ``time_confidence``: wall seconds of the two runs; ``map_seconds``: the map's
  own computation (B-spline, sums, Gaussian; timed inside the second run), and ``overhead``:
  map_seconds / (time_confidence - map_seconds), the share it adds. Targets: spearman >= 0.4,
  top10_share >= 0.25, overhead <= 0.20.

Usage (from the repository root):
    python pipelines/benchmark_confidence.py [--cases N] [--fit-steps N] [--data DIR]
        [--out docs/benchmark_confidence.csv]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from benchmark_mri import B0_1, B0_2, ICBM, MACAQUE, Case, acquire
from scipy import stats
from split import held_out_volumes, read_split

import medsr.upsample.confidence as confidence_module
from medsr.geometry import plan_output_grid
from medsr.io import read_volume
from medsr.upsample.api import upsample_volume
from medsr.upsample.checks import DEFAULT_FIT_STEPS

#: most mask voxels the rank correlation is computed on (fixed-seed subsample)
SAMPLE = 400_000

#: the cases, in the order a partial run (--cases N) takes them: every test volume by the 4th,
#: odd and even, integer and non-integer factors, boxcar, Gaussian and the unseen sinc profile
CASES = (
    Case(ICBM, 4.0, 2, "family", "gaussian"),
    Case(MACAQUE, 5.0, 1, "family", "boxcar"),
    Case(B0_1, 4.0, 2, "family", "gaussian"),
    Case(B0_2, 3.0, 0, "family", "boxcar"),
    Case(ICBM, 6.5, 1, "family", "boxcar"),
    Case(B0_1, 5.0, 2, "sinc", "sinc"),
)


def ranking_scores(uncertainty: np.ndarray, error: np.ndarray, mask: np.ndarray) -> dict:
    """Spearman of `uncertainty` with `error` inside `mask`, and the squared error's share held
    by the 10 % most uncertain mask voxels (exactly 10 %: ties broken by a stable sort)."""
    u, e = uncertainty[mask].astype(np.float64), error[mask].astype(np.float64)
    rng = np.random.default_rng(0)
    sample = rng.choice(u.size, SAMPLE, replace=False) if u.size > SAMPLE else slice(None)
    rho = float(stats.spearmanr(u[sample], e[sample]).statistic)
    top = np.argsort(u, kind="stable")[-int(np.ceil(0.1 * u.size)) :]
    squared = e**2
    return {"spearman": rho, "top10_share": float(squared[top].sum() / squared.sum())}


def timed_map():
    """Wrap `confidence_map` so that its wall time is recorded: (restore, seconds list)."""
    original, seconds = confidence_module.confidence_map, []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return result

    confidence_module.confidence_map = timed
    return lambda: setattr(confidence_module, "confidence_map", original), seconds


def benchmark_case(data: Path, case: Case, index: int, fit_steps: int) -> dict:
    """One row: the map's ranking scores and its time cost."""
    volume = read_volume(data / case.volume)
    thick, truth, mask, _ = acquire(volume, case, seed=index)
    options = {"spacing": float(volume.spacing[case.axis]), "axis": case.axis}
    options |= {"keep_dtype": False, "fit_steps": fit_steps, "device": "cpu"}
    if case.thickness is not None:
        thick.meta["slice_thickness"] = case.thickness * float(volume.spacing[case.axis])
    start = time.perf_counter()
    plain = upsample_volume(thick, **options).array
    time_plain = time.perf_counter() - start
    restore, map_seconds = timed_map()
    try:
        start = time.perf_counter()
        result = upsample_volume(thick, confidence=True, **options)
        time_confidence = time.perf_counter() - start
    finally:
        restore()
    if not np.array_equal(result.array, plain):
        raise RuntimeError(f"case {index}: the output with --confidence is not the plain one")
    error = np.abs(result.array - truth)
    grid = plan_output_grid(
        thick.spatial_shape, thick.affine, spacing=options["spacing"], axis=case.axis
    )
    row = {"case": index, "volume": case.volume.split(".nii")[0], "factor": case.factor}
    row |= {"axis": case.axis, "condition": case.condition, "profile": case.profile}
    row |= {"fit_steps": fit_steps, "mask_voxels": int(mask.sum())}
    uncertainty = result.meta["confidence"].array
    row |= ranking_scores(uncertainty, error, mask)
    between = mask.copy()
    measured = [slice(None)] * 3
    measured[case.axis] = confidence_module.measured_slices(grid)
    between[tuple(measured)] = False
    row["measured_share"] = 1 - between.sum() / mask.sum()
    scores = ranking_scores(uncertainty, error, between)
    row |= {"spearman_between": scores["spearman"], "top10_between": scores["top10_share"]}
    row |= {"time_plain": time_plain, "time_confidence": time_confidence}
    row |= {"map_seconds": map_seconds[0]}
    row["overhead"] = map_seconds[0] / (time_confidence - map_seconds[0])
    return row


def markdown(rows: list[dict]) -> str:
    """The per-case table and its means."""
    lines = [f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores", ""]
    lines += [
        "| case | volume | factor | axis | profile | Spearman | top-10 % share | measured voxels "
        "| Spearman, reconstructed only | top-10 %, reconstructed only | plain (s) "
        "| with map (s) | map (s) | map overhead |",
        "|---" * 14 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['volume']} | {r['factor']:g} | {r['axis']} | {r['profile']} | "
            f"{r['spearman']:.3f} | {r['top10_share']:.3f} | {100 * r['measured_share']:.0f} % | "
            f"{r['spearman_between']:.3f} | {r['top10_between']:.3f} | {r['time_plain']:.1f} | "
            f"{r['time_confidence']:.1f} | {r['map_seconds']:.2f} | {100 * r['overhead']:.1f} % |"
        )
    keys = ("spearman", "top10_share", "spearman_between", "top10_between", "overhead")
    means = {k: np.mean([r[k] for r in rows]) for k in keys}
    lines.append(
        f"| mean | | | | | {means['spearman']:.3f} | {means['top10_share']:.3f} | | "
        f"{means['spearman_between']:.3f} | {means['top10_between']:.3f} | | | | "
        f"{100 * means['overhead']:.1f} % |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mri"))
    parser.add_argument("--cases", type=int, default=len(CASES), help="the first N cases")
    parser.add_argument("--fit-steps", type=int, default=DEFAULT_FIT_STEPS)
    parser.add_argument("--out", type=Path, help="CSV of every row (rewritten after each case)")
    parser.add_argument("--markdown", type=Path, help="write the table here too")
    args = parser.parse_args(argv)
    cases = CASES[: args.cases]
    outside = {c.volume for c in cases} - set(held_out_volumes(read_split()))
    if outside:
        raise SystemExit(f"error: {sorted(outside)} are not test volumes in split.yaml")
    rows = []
    for index, case in enumerate(cases):
        rows.append(benchmark_case(args.data, case, index, args.fit_steps))
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in
                       rows[-1].items()), flush=True)  # fmt: skip
        if args.out is not None:
            with args.out.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    table = markdown(rows)
    print("\n" + table)
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
