"""MRI benchmark on the test volumes of pipelines/configs/split.yaml: medsr (the default
`medsr upsample`, and its shipped prior alone) against linear and cubic B-spline interpolation.

Each case thickens a high-resolution test volume along one array axis with the project's one
acquisition model (`medsr.evaluate.simulate.simulate_acquisition`), writes it as NIfTI and runs
every method on it as a user would (its own process by default, so that wall time and peak RSS
are end to end). Conditions:

- ``family``: boxcar or Gaussian slice profile (FWHM = spacing), the family the prior was trained
  on, factors 2-10 with non-integer ones;
- ``sinc``: the 2D multi-slice profile of a truncated sinc RF pulse, with side lobes into the
  neighbouring slices (`medsr.degrade`, profile ``"sinc"``): never seen in training;
- ``gap``: boxcar slices 0.6 x the spacing thick (a 40 % gap), the thickness given to medsr as a
  DICOM header would (``--slice-thickness``); unseen by the priors trained on 0.8-1.2, inside the
  range of the one shipped since medsr 0.5.0 (0.5-1.2);
- ``noise``: Rician noise (std 3 % of the data range) added to the *thick* slices, after
  thickening, as a scanner adds it (training adds it to the thin truth before thickening).

Outputs lie on the truth's grid by construction (docs/geometry.md) and are scored with
`medsr.evaluate.simulate.score` inside the truth's foreground
(`medsr.evaluate.simulate.evaluation_mask`: Otsu, closed, largest component, filled), with the
data range from the 0.5 and 99.5 percentiles of the truth inside that mask
(`medsr.evaluate.simulate.robust_data_range`): PSNR, 3D SSIM, HFEN (lower is better),
through-plane sharpness ratio (1 = as sharp as the truth).

Usage (from the repository root):
    python pipelines/benchmark_mri.py [--cases all|representative] [--quick]
        [--data ../shared/data/mri] [--out docs/benchmark_mri.csv] [--fit-steps N]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from split import held_out_volumes, read_split

from medsr.degrade import add_rician_noise
from medsr.evaluate.simulate import evaluation_mask, robust_data_range, score, simulate_acquisition
from medsr.io import read_volume, write_volume
from medsr.io.atomic import write_text_atomically

ICBM = "nilearn_icbm152_2009a_t1_1mm.nii.gz"
MACAQUE = "inia19_macaque_t1_0.5mm.nii.gz"
B0_1, B0_2 = "heudiconv_b0_1.5mm_run1.nii.gz", "heudiconv_b0_1.5mm_run2.nii.gz"
VOLUMES = (ICBM, MACAQUE, B0_1, B0_2)
METHODS = ("misr", "misr_prior", "linear", "bspline")
#: slice thickness / spacing of the ``gap`` condition
GAP_THICKNESS = 0.6
#: Rician noise std of the ``noise`` condition, as a fraction of the robust data range
NOISE_FRACTION = 0.03
FACTOR_GROUPS = ((2.0, 3.9, "x2-x3.7"), (4.0, 6.9, "x4-x6.5"), (7.0, 16.0, "x8-x10"))


@dataclass(frozen=True)
class Case:
    volume: str
    factor: float
    axis: int
    condition: str  # family, sinc, gap, noise
    profile: str = "boxcar"

    @property
    def thickness(self) -> float | None:
        """Slice thickness in thin slices (None: contiguous, = factor)."""
        return GAP_THICKNESS * self.factor if self.condition == "gap" else None


def all_cases(volumes: tuple[str, ...] = VOLUMES) -> list[Case]:
    """Every case: per volume 10 family cases (factors 2-10, boxcar and Gaussian alternating,
    axes 0/1/2 in turn) and 6 cases outside the family (sinc x3, x5; gap x4, x6.5; noise x3,
    x5; the gap inside the shipped prior's training range since medsr 0.5.0)."""
    cases = []
    for v, volume in enumerate(volumes):
        for i, factor in enumerate((2, 2.5, 3, 3.7, 4, 5, 6, 6.5, 8, 10)):
            profile = ("boxcar", "gaussian")[(i + v) % 2]
            cases.append(Case(volume, float(factor), (i + v) % 3, "family", profile))
        others = [("sinc", 3.0, "sinc"), ("sinc", 5.0, "sinc"), ("gap", 4.0, "boxcar")]
        others += [("gap", 6.5, "boxcar"), ("noise", 3.0, "boxcar"), ("noise", 5.0, "boxcar")]
        for i, (condition, factor, profile) in enumerate(others):
            cases.append(Case(volume, factor, (i + v + 1) % 3, condition, profile))
    return cases


def representative_cases(volumes: tuple[str, ...] = VOLUMES) -> list[Case]:
    """Per volume: family x4 and x6.5, sinc x5, gap x4 and noise x3 (each condition once); plus
    x10 on the macaque along axis 2 (0.5 x 0.5 x 5 mm) and x2 on the ICBM T1."""
    wanted = {("family", 4.0), ("family", 6.5), ("sinc", 5.0), ("gap", 4.0), ("noise", 3.0)}
    chosen = [c for c in all_cases(volumes) if (c.condition, c.factor) in wanted]
    order = ["family", "sinc", "gap", "noise"]  # round robin over volumes: a partial run
    chosen.sort(key=lambda c: (order.index(c.condition), c.factor, volumes.index(c.volume)))
    if MACAQUE in volumes:
        chosen.append(Case(MACAQUE, 10.0, 2, "family", "boxcar"))
    if ICBM in volumes:
        chosen.append(Case(ICBM, 2.0, 0, "family", "gaussian"))
    return chosen


def covering_cases() -> list[Case]:
    """Four cases: every test volume once and every condition once (a Latin square)."""
    return [
        Case(ICBM, 4.0, 1, "family", "boxcar"),
        Case(MACAQUE, 5.0, 0, "sinc", "sinc"),
        Case(B0_1, 4.0, 2, "gap", "boxcar"),
        Case(B0_2, 3.0, 2, "noise", "boxcar"),
    ]


def quick_cases(volumes: tuple[str, ...]) -> list[Case]:
    """One case per condition, all on the first volume (a smoke test)."""
    volume = volumes[0]
    return [
        Case(volume, 3.0, 2, "family", "boxcar"),
        Case(volume, 2.5, 0, "sinc", "sinc"),
        Case(volume, 3.0, 1, "gap", "boxcar"),
        Case(volume, 2.0, 2, "noise", "boxcar"),
    ]


def factor_group(factor: float) -> str:
    return next(name for low, high, name in FACTOR_GROUPS if low <= factor <= high)


def acquire(volume, case: Case, seed: int):
    """(thick volume, truth array, mask, data range) of one case."""
    acquisition = simulate_acquisition(
        volume, factor=case.factor, axis=case.axis, profile=case.profile, thickness=case.thickness
    )
    truth = acquisition.truth.array
    mask = evaluation_mask(truth)
    data_range = robust_data_range(truth, mask)
    thick = acquisition.thick
    if case.condition == "noise":  # after thickening: the scanner's noise on the thick slices
        rng = np.random.default_rng(seed)
        noisy = add_rician_noise(thick.array, NOISE_FRACTION * data_range, rng)
        thick = thick.with_array(noisy, thick.affine)
    return thick, truth, mask, data_range


def method_argv(method: str, source: Path, output: Path, case: Case, spacing: float, options):
    """`medsr upsample` arguments of one method."""
    argv = ["upsample", str(source), "-o", str(output), "--dtype", "float32", "--overwrite"]
    if options["threads"] is not None:
        argv += ["--threads", str(options["threads"])]
    fit_steps = options["fit_steps"]
    argv += ["--quiet", "--method", "misr" if method.startswith("misr") else method]
    if method == "misr_prior":
        argv += ["--fit-steps", "0"]
    elif method == "misr" and fit_steps is not None:
        argv += ["--fit-steps", str(fit_steps)]
    if method.startswith("misr") and case.thickness is not None:
        argv += ["--slice-thickness", f"{case.thickness * spacing:.6g}"]
    if method == "misr" and case.condition == "sinc":
        argv += ["--slice-profile", "sinc"]  # as the protocol (2D multi-slice) tells it
    return argv


#: runs its arguments as a child of this small process and prints the child's peak RSS (KiB):
#: Linux keeps a process's RSS high-water mark across fork and exec, so `medsr` forked from the
#: benchmark itself reported at least the benchmark's own RSS (its volumes and scores)
LAUNCHER = (
    "import os, subprocess, sys; "
    "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "_, status, usage = os.wait4(child.pid, 0); print(usage.ru_maxrss); "
    "code = os.waitstatus_to_exitcode(status); "
    "code < 0 and print(f'killed by signal {-code}', file=sys.stderr); "
    "sys.exit(128 - code if code < 0 else code)"
)


def run_method(argv: list[str], in_process: bool) -> tuple[float, float]:
    """Run `medsr` with `argv`; (wall seconds, peak RSS MiB of its process, or nan in-process).
    The process is started by `LAUNCHER`, whose own start-up the wall time includes (about the
    interpreter's, 20-30 ms)."""
    start = time.perf_counter()
    if in_process:
        from medsr.cli import main

        if main(argv):
            raise RuntimeError(f"medsr {' '.join(argv)} failed")
        return time.perf_counter() - start, float("nan")
    command = [sys.executable, "-m", "medsr.cli", *argv]
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command],
        capture_output=True,
        text=True,
        errors="replace",
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        message = done.stderr[-500:]
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}): {message}")
    return seconds, int(done.stdout.strip()) / 1024  # ru_maxrss: KiB on Linux


def benchmark_case(data: Path, case: Case, index: int, options: dict, folder: Path) -> list[dict]:
    """Rows (one per method) of one case."""
    volume = read_volume(data / case.volume)
    thick, truth, mask, data_range = acquire(volume, case, seed=index)
    source = write_volume(thick, folder / "thick.nii.gz", overwrite=True)
    spacing = float(volume.spacing[case.axis])
    rows = []
    for method in options["methods"]:
        output = folder / f"{method}.nii.gz"
        record = output.with_name(output.name + ".json")
        record.unlink(missing_ok=True)  # not an earlier case's
        argv = method_argv(method, source, output, case, spacing, options)
        seconds, memory = run_method(argv, options["in_process"])
        pred = read_volume(output).array
        if pred.shape != truth.shape:
            raise RuntimeError(f"{method}: output {pred.shape} is not the truth's {truth.shape}")
        row = {"case": index, **asdict(case), "factor_group": factor_group(case.factor)}
        row["volume"] = case.volume.split(".nii")[0]
        row["thickness"] = case.thickness or case.factor
        row |= {"method": method, "mask_voxels": int(mask.sum()), "data_range": data_range}
        row |= score(pred, truth, mask=mask, axis=case.axis, data_range=data_range)
        row |= {"seconds": seconds, "peak_mib": memory, **guard_fields(record)}
        rows.append(row)
        print(
            " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )
        sys.stdout.flush()
    return rows


def guard_fields(record: Path) -> dict:
    """The fit guard's choice (``unguarded`` for a fit that held nothing back: an axis of fewer
    than `medsr.upsample.adapt.FIT_GUARD_MIN_SLICES` slices), the residual gain (the prior
    alone's; none after a fit since medsr 0.6.2) and the slice profile estimated from the data
    (`medsr.upsample.profile`; empty where undecided or told) from an output's provenance
    `record` (empty where the output has none: B-spline, the first version)."""
    try:
        guard = json.loads(record.read_text(encoding="utf-8")).get("fit_guard", {})
    except (OSError, ValueError):
        guard = {}
    estimate = guard.get("slice_profile_estimate") or {}
    choice = guard.get("choice", "")
    return {
        "guard": "unguarded" if choice and "reason" in guard else choice,
        "gain": guard.get("residual_gain", ""),
        "estimated_profile": estimate.get("profile") or "",
    }


#: the columns of a row that hold text
TEXT_COLUMNS = ("volume", "condition", "profile", "factor_group", "method", "guard")
TEXT_COLUMNS += ("estimated_profile",)


def read_rows(path: Path) -> list[dict]:
    """Rows of an earlier `--out` CSV, with their numbers as numbers."""
    rows = []
    for row in csv.DictReader(path.open(encoding="utf-8")):
        for key, value in row.items():
            if key in ("case", "axis", "mask_voxels"):
                row[key] = int(value)
            elif key == "gain":
                row[key] = float(value) if value else ""
            elif key not in TEXT_COLUMNS:
                row[key] = float(value) if value else float("nan")  # merged rows lack some
        rows.append(row)
    return rows


def done_cases(rows: list[dict], cases: list[Case]) -> int:
    """How many leading `cases` `rows` (from `--resume`) hold completely; refuses other cases."""
    done = sorted({r["case"] for r in rows})
    if done != list(range(len(done))):
        raise SystemExit(f"error: cases {done} of the CSV are not a prefix of this run's")
    for r in rows:
        case = cases[r["case"]]
        same = (r["volume"], r["factor"], r["axis"], r["condition"], r["profile"])
        if same != (case.volume.split(".nii")[0], case.factor, case.axis, case.condition,
                    case.profile):  # fmt: skip
            raise SystemExit(f"error: row {r} is not case {r['case']} of this run ({case})")
    return len(done)


def benchmark(
    data: Path, cases: list[Case], options: dict, out: Path | None, rows: list[dict] | None = None
) -> list[dict]:
    """Run every case after those `rows` hold; write all rows to `out` (CSV) after each case, so
    a long run keeps them (and `--resume` continues it)."""
    rows = list(rows or [])
    with tempfile.TemporaryDirectory() as folder:
        for index in range(done_cases(rows, cases), len(cases)):
            rows += benchmark_case(data, cases[index], index, options, Path(folder))
            if out is not None:
                write_rows(out, rows)
    return rows


def write_rows(out: Path, rows: list[dict]) -> None:
    """All `rows` as the CSV `out`, atomically (a reader, or a killed run, never leaves half)."""
    text = io.StringIO(newline="")
    columns = list(dict.fromkeys(key for row in rows for key in row))  # older rows lack some
    writer = csv.DictWriter(text, columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(out, text.getvalue())


def gains(rows: list[dict]) -> list[dict]:
    """Rows with ΔPSNR and ΔSSIM against B-spline in the same case (NaN where the run had no
    B-spline: ``--methods`` without it)."""
    reference = {r["case"]: r for r in rows if r["method"] == "bspline"}
    none = {"psnr": float("nan"), "ssim": float("nan")}
    out = []
    for r in rows:
        ref = reference.get(r["case"], none)
        out.append(r | {"dpsnr": r["psnr"] - ref["psnr"], "dssim": r["ssim"] - ref["ssim"]})
    return out


def summary_table(rows: list[dict], key: str) -> list[str]:
    """Markdown: per value of `key` and method, the means (ΔPSNR, SSIM, ΔSSIM, HFEN)."""
    header = "| method | cases | mean PSNR | mean ΔPSNR vs B-spline | mean SSIM | mean ΔSSIM "
    lines = [f"| {key} {header}| mean HFEN | SSIM above B-spline |", "|---" * 9 + "|"]
    rows = gains(rows)
    for value in dict.fromkeys(r[key] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r[key] == value and r["method"] == method]
            above = sum(r["dssim"] > 0 for r in mine)
            lines.append(
                f"| {value} | {method} | {len(mine)} | {np.mean([r['psnr'] for r in mine]):.2f} | "
                f"{np.mean([r['dpsnr'] for r in mine]):+.2f} | "
                f"{np.mean([r['ssim'] for r in mine]):.4f} | "
                f"{np.mean([r['dssim'] for r in mine]):+.4f} | "
                f"{np.mean([r['hfen'] for r in mine]):.3f} | {above} of {len(mine)} |"
            )
    return lines


def markdown(rows: list[dict]) -> str:
    """Per-case table, then means per factor group, per condition and over all cases."""
    lines = [f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores", ""]
    header = "| case | volume | factor | axis | condition | profile | thickness | method "
    header += "| PSNR (dB) | ΔPSNR | SSIM | ΔSSIM | HFEN | sharpness | time (s) | peak RSS (MiB) |"
    lines += [header, "|---" * 16 + "|"]
    for r in gains(rows):
        lines.append(
            f"| {r['case']} | {r['volume']} | {r['factor']:g} | {r['axis']} | {r['condition']} | "
            f"{r['profile']} | {r['thickness']:.3g} | {r['method']} | {r['psnr']:.2f} | "
            f"{r['dpsnr']:+.2f} | {r['ssim']:.4f} | {r['dssim']:+.4f} | {r['hfen']:.3f} | "
            f"{r['sharpness']:.3f} | {r['seconds']:.1f} | {r['peak_mib']:.0f} |"
        )
    for key in ("factor_group", "condition"):
        lines += ["", *summary_table(rows, key)]
    everything = [r | {"all": "all cases"} for r in rows]
    lines += ["", *summary_table(everything, "all")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mri"))
    parser.add_argument("--cases", choices=["all", "representative", "cover"], default="all")
    parser.add_argument("--resume", action="store_true", help="continue the cases of --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--quick", action="store_true", help="one case per condition")
    parser.add_argument("--volumes", nargs="+", help="volumes under --data (default: the four)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--fit-steps", type=int, help="misr adaptation steps (default: medsr's)")
    parser.add_argument("--threads", type=int, help="CPU threads of medsr (default: torch's)")
    parser.add_argument("--in-process", action="store_true", help="no subprocess (no RSS)")
    parser.add_argument("--out", type=Path, help="CSV of every row")
    parser.add_argument("--markdown", type=Path, help="write the tables here too")
    args = parser.parse_args(argv)
    volumes = tuple(args.volumes or VOLUMES)
    if args.volumes is None:  # the shipped volumes must be test volumes of the split
        outside = set(volumes) - set(held_out_volumes(read_split()))
        if outside:
            raise SystemExit(f"error: {sorted(outside)} are not test volumes in split.yaml")
    if args.quick:
        cases = quick_cases(volumes)
    else:
        named = {"all": all_cases, "representative": representative_cases}
        cases = covering_cases() if args.cases == "cover" else named[args.cases](volumes)
    options = {"methods": args.methods, "fit_steps": args.fit_steps, "threads": args.threads}
    options["in_process"] = args.in_process
    if args.out and args.out.exists() and not (args.resume or args.overwrite):
        raise SystemExit(
            f"error: {args.out} exists (--resume continues it, --overwrite replaces it)"
        )
    rows = read_rows(args.out) if args.resume and args.out and args.out.exists() else []
    table = markdown(benchmark(args.data, cases, options, args.out, rows))
    print("\n" + table)
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
