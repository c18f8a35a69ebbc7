"""Fit curves: PSNR / SSIM against fit steps and seconds, for one or more models, on cases of
the MRI benchmark (issue 16, item 2: how fast a decoder adapts to a scan).

Each point is its own `medsr upsample --fit-steps N` process on the simulated thick volume
(`benchmark_mri.acquire`: the same acquisition, mask and robust data range as the MRI benchmark),
scored against the truth; B-spline is run once per case. A model is ``label=checkpoint`` (the
shipped weights: ``label=default``), or ``label=first-version:PATH`` for a checkout of the
first version (commit e9434e4, per-factor sub-pixel heads, integer factors only), whose CLI fits
for ``--fit-seconds`` instead of steps: its points are taken at the seconds given. A model spec
may end in ``,lr=RATE`` and ``,schedule=constant|cosine``: the fit's learning rate and schedule
for that model (the experiments that chose `medsr.upsample.adapt.ADAPTATION_LEARNING_RATE` and
`ADAPTATION_LR_SCHEDULE`), and in ``,profile=boxcar|gaussian|sinc`` and ``,thickness=RATIO``:
what the fit is told of the acquisition (``--slice-profile``; ``--slice-thickness`` as RATIO times
the thick spacing), as a header or the user would; ``,precision=auto|bf16|fp32``: the
``--precision`` of fit and reconstruction; ``,ensemble=1|2|4|8`` the reconstruction's
self-ensemble (``--ensemble``); ``,seed=N`` the fit's seed (``--seed``);
``,orientations=1|2`` the reconstruction's plane orientations (``--orientations``),
``,orientation=0|1`` one of the two alone (the experiment that chose
`medsr.upsample.reconstruct.plane_orientations`' rule); ``,noise=on|off``
puts the scan's noise back on the fit's thickened inputs or not
(`medsr.upsample.adapt.MATCH_SCAN_NOISE`); ``,gain=on|off`` scales the residual by the gain
fitted on in-plane slices or not (`CALIBRATE_GAIN`), ``,fitgain=on|off`` after a fit too, on
its held-back slices (`CALIBRATE_AFTER_FIT`; off by default);
``,slabs=N`` fits the prior alone's residual gain on N slabs
(`NO_FIT_CALIBRATION_SLABS`); ``,queries=N`` trains the fit's decoder on N stratified thin
positions of each patch a step (`FIT_QUERY_POSITIONS`; 0: all); ``,loss=mse|l1`` sets the fit's
pixel loss (`FIT_PIXEL_LOSS`); ``,lean=N`` draws each boxcar-like profile N times per Gaussian
where the profile is undecided (`UNDECIDED_BOXCAR_WEIGHT`; 1: an even mixture).
``--condition`` takes the MRI benchmark's conditions: ``noise`` adds its Rician noise to the thick
slices, ``gap`` thins the slices (and states their thickness, as a header would), ``sinc``
(with ``--profile sinc``, the 2D multi-slice profile) tells the fitted points the profile, as
the protocol would; what each point is told is what `benchmark_mri.method_argv` tells it.

Design choices are made on the validation volume of pipelines/configs/split.yaml
(`itk_t1_2x2x3mm.nii.gz` since 2026-12-02; the Haase T1 before); the test volumes are only
measured.

Usage (from the repository root):
    python pipelines/fit_curves.py --data ../shared/data/mri --volume itk_t1_2x2x3mm.nii.gz \
        --factor 4 --axis 2 --model shipped=default --steps 0 100 200 400 --out curves.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_mri import Case, acquire, guard_fields

from medsr.evaluate.simulate import score
from medsr.io import read_volume, write_volume

FIELDS = (
    "volume",
    "factor",
    "axis",
    "condition",
    "profile",
    "model",
    "steps",
    "fit_seconds",
    "seconds",
)
FIELDS += ("psnr", "ssim", "hfen", "bspline_psnr", "bspline_ssim", "delta_psnr", "delta_ssim")
#: the output's fit guard: its choice, the residual gain used and the estimated slice profile
FIELDS += ("guard", "gain", "estimated_profile")


#: the fit setting of ``,orientation=0|1``: not a name in adapt, the point's process reconstructs
#: that orientation of `medsr.upsample.reconstruct.plane_orientations` alone
ORIENTATION = "ORIENTATION"

#: what a model spec's ``,key=value`` sets in `medsr.upsample.adapt`, and how it is read
FIT_OPTIONS = {
    "lr": ("ADAPTATION_LEARNING_RATE", float),
    "schedule": ("ADAPTATION_LR_SCHEDULE", str),
    "noise": ("MATCH_SCAN_NOISE", lambda value: _on_off(value)),
    "gain": ("CALIBRATE_GAIN", lambda value: _on_off(value)),
    "fitgain": ("CALIBRATE_AFTER_FIT", lambda value: _on_off(value)),
    "queries": ("FIT_QUERY_POSITIONS", int),
    "loss": ("FIT_PIXEL_LOSS", lambda value: _one_of(value, ("mse", "l1"), "loss")),
    "estimate": ("ESTIMATE_PROFILE", lambda value: _on_off(value)),
    "lean": ("UNDECIDED_BOXCAR_WEIGHT", lambda value: _at_least_one(value, "lean")),
    "slabs": ("NO_FIT_CALIBRATION_SLABS", lambda value: _at_least_one(value, "slabs")),
    # not in adapt: which of `plane_orientations`' two the point reconstructs alone (`medsr`)
    "orientation": (ORIENTATION, lambda value: int(_one_of(value, ("0", "1"), "orientation"))),
}

#: a model spec's ``,key=value`` passed as `medsr upsample` options: what the fit is told of the
#: acquisition (``thickness`` is the slice thickness / the thick spacing; ``profile`` the
#: profile's shape) and the arithmetic of fit and reconstruction (``precision``)
COMMAND_OPTIONS = {
    "thickness": "--slice-thickness",
    "profile": "--slice-profile",
    "precision": "--precision",
    "ensemble": "--ensemble",
    "orientations": "--orientations",
    "seed": "--seed",
}


def _one_of(value: str, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        raise ValueError(f"{key}= takes one of {choices}, not {value!r}")
    return value


def _at_least_one(value: str, key: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{key}= takes a whole number of at least 1, not {value!r}")
    return int(value)


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise ValueError(f"noise=, gain=, fitgain= and estimate= take on or off, not {value!r}")
    return value == "on"


def medsr(argv: list[str], pythonpath: str | None = None, fit: dict | None = None) -> float:
    """Run `medsr` in its own process (with the fit's settings `fit`, names of
    `medsr.upsample.adapt` to values); its wall seconds."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, "-m", "medsr.cli", *argv]
    if fit:
        code = "import sys, medsr.upsample.adapt as a; from medsr.cli import main; "
        if ORIENTATION in fit:  # one of both, whatever the rule of `orientations=1` would take
            code += "import medsr.upsample.reconstruct as r; o = r.plane_orientations; "
            code += f"r.plane_orientations = lambda *x: [o(*x[:2])[{fit[ORIENTATION]}]]; "
        settings = {name: value for name, value in fit.items() if name != ORIENTATION}
        code += "".join(f"a.{name} = {value!r}; " for name, value in settings.items())
        code += "sys.exit(main(sys.argv[1:]))"
        command = [sys.executable, "-c", code, *argv]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"medsr {' '.join(argv)} failed: {done.stderr[-800:]}")
    return time.perf_counter() - start


def fit_settings(options: list[str]) -> dict:
    """`FIT_OPTIONS` of a model spec's ``key=value`` parts, as {name in adapt: value}
    (`COMMAND_OPTIONS` are skipped: `command_argv` reads them)."""
    fit = {}
    for option in options:
        key, _, value = option.partition("=")
        if key in COMMAND_OPTIONS and value:
            continue
        if key not in FIT_OPTIONS or not value:
            known = sorted(FIT_OPTIONS) + sorted(COMMAND_OPTIONS)
            raise ValueError(f"unknown fit option {option!r} (known: {known})")
        name, kind = FIT_OPTIONS[key]
        fit[name] = kind(value)
    return fit


def command_argv(options: list[str], spacing: float) -> list[str]:
    """`medsr upsample` options for a model spec's `COMMAND_OPTIONS` (``thickness`` in units
    of the thick input's `spacing`)."""
    argv = []
    for option in options:
        key, _, value = option.partition("=")
        if key == "thickness":
            argv += [COMMAND_OPTIONS[key], f"{float(value) * spacing:.6g}"]
        elif key in COMMAND_OPTIONS:
            argv += [COMMAND_OPTIONS[key], value]
    return argv


def points(
    model: str, steps: list[int], seconds: list[float], spacing: float, case: Case | None = None
) -> list[tuple]:
    """(extra argv, row fields, PYTHONPATH, fit settings) per point of one model (`spacing`: the
    thick input's, for a ``thickness=`` option; `case`: what its condition tells each point,
    `condition_argv`, goes before the model's own options)."""
    label, _, spec = model.partition("=")
    spec, *options = spec.split(",")
    fit = fit_settings(options) or None
    if spec.startswith("first-version:"):
        if options:
            raise ValueError(f"the first version takes no fit options, got {options}")
        root = spec.split(":", 1)[1]
        return [
            (
                ["--fit-seconds", f"{s:g}"],
                {"model": label, "fit_seconds": s, "steps": ""},
                root,
                None,
            )
            for s in seconds
        ]
    model_argv = [] if spec == "default" else ["--model", spec]

    def told(n: int) -> list[str]:
        return [] if case is None else condition_argv(case, spacing, fitted=n > 0)

    return [
        (
            [*model_argv, *told(n), *command_argv(options, spacing), "--fit-steps", str(n)],
            {"model": label, "steps": n, "fit_seconds": ""},
            None,
            fit,
        )
        for n in steps
    ]


def condition_argv(case: Case, spacing: float, fitted: bool) -> list[str]:
    """What the MRI benchmark tells its learned methods of a case's acquisition.

    As `benchmark_mri.method_argv` does: a gap's slice thickness to every point (a header states
    it), the ``sinc`` condition's profile to fitted points only (its protocol does; the
    benchmark's prior alone is not told it).

    Args:
        case: the case.
        spacing: the thick input's spacing along the case's axis (mm).
        fitted: whether the point fits (``--fit-steps`` above 0).

    Returns:
        `medsr upsample` options.
    """
    argv = []
    if case.thickness is not None:
        argv += ["--slice-thickness", f"{case.thickness / case.factor * spacing:.6g}"]
    if case.condition == "sinc" and fitted:
        argv += ["--slice-profile", "sinc"]
    return argv


def run(args: argparse.Namespace) -> list[dict]:
    case = Case(args.volume, args.factor, args.axis, args.condition, args.profile)
    volume = read_volume(args.data / args.volume)
    thick, truth, mask, data_range = acquire(volume, case, seed=0)
    spacing = float(thick.spacing[args.axis])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        source = write_volume(thick, Path(folder) / "thick.nii.gz", overwrite=True)
        common = ["-o", str(Path(folder) / "out.nii.gz"), "--overwrite", "--quiet"]
        common += ["--dtype", "float32", "--axis", str(args.axis)]
        # the truth's grid: its spacing along the axis (an anisotropic source's finest in-plane
        # spacing, the default target, may be finer)
        common += ["--spacing", f"{float(volume.spacing[args.axis]):.9g}"]
        medsr(["upsample", str(source), *common, "--method", "bspline"])
        base = score(
            read_volume(Path(folder) / "out.nii.gz").array,
            truth,
            mask=mask,
            axis=args.axis,
            data_range=data_range,
        )
        for model in args.model:
            for extra, fields, pythonpath, fit in points(
                model, args.steps, args.seconds, spacing, case
            ):
                (Path(folder) / "out.nii.gz.json").unlink(missing_ok=True)  # not the last point's
                seconds = medsr(["upsample", str(source), *common, *extra], pythonpath, fit)
                pred = read_volume(Path(folder) / "out.nii.gz").array
                scores = score(pred, truth, mask=mask, axis=args.axis, data_range=data_range)
                row = {"volume": args.volume.split(".nii")[0], "factor": args.factor}
                row |= {"axis": args.axis, "condition": args.condition}
                row |= {"profile": args.profile, **fields}
                row |= {"seconds": round(seconds, 1), "psnr": scores["psnr"]}
                row |= {"ssim": scores["ssim"], "hfen": scores["hfen"]}
                row |= {"bspline_psnr": base["psnr"], "bspline_ssim": base["ssim"]}
                row |= {"delta_psnr": scores["psnr"] - base["psnr"]}
                row |= {"delta_ssim": scores["ssim"] - base["ssim"]}
                row |= guard_fields(Path(folder) / "out.nii.gz.json")
                print(
                    " ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in row.items()
                    ),
                    flush=True,
                )
                rows.append(row)
    return rows


def check_out(out: Path, fields: tuple[str, ...] = FIELDS) -> None:
    """`--out` is appended to: refuse, before any work, a CSV whose header is not `fields` (one
    written by an older version of the script, whose rows would not line up)."""
    if out.exists() and out.stat().st_size:
        with out.open(newline="", encoding="utf-8") as stream:
            header = next(csv.reader(stream), [])
        if tuple(header) != fields:
            raise SystemExit(
                f"error: {out} has other columns than this script writes; use a new --out"
            )


def append_rows(out: Path, rows: list[dict], fields: tuple[str, ...] = FIELDS) -> None:
    """`rows` appended to the CSV `out` (its header first if it is new or empty)."""
    new = not out.exists() or out.stat().st_size == 0
    with out.open("a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def add_case_arguments(parser: argparse.ArgumentParser, conditions: tuple[str, ...]) -> None:
    """The options that name one case of the MRI benchmark's acquisition (`benchmark_mri.Case`)."""
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mri"))
    parser.add_argument("--volume", required=True)
    parser.add_argument("--factor", type=float, required=True)
    parser.add_argument("--axis", type=int, default=2)
    parser.add_argument("--profile", default="boxcar")
    parser.add_argument(
        "--condition",
        default="family",
        choices=conditions,
        help="the MRI benchmark's acquisition condition (noise: Rician noise on the thick slices)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, ("family", "noise", "gap", "sinc"))
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=CKPT")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 100, 200, 400])
    parser.add_argument("--seconds", type=float, nargs="+", default=[15, 45])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.condition == "sinc" and args.profile != "sinc":
        parser.error("--condition sinc acquires with the sinc profile: give --profile sinc")
    check_out(args.out)
    append_rows(args.out, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
