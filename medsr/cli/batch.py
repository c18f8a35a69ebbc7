"""`medsr batch`: its parser, the command and its dry run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medsr.cli.options import (
    add_dicom_options,
    add_fit_options,
    add_input_geometry,
    add_runtime_options,
    add_target_options,
    check_dicom_options,
    check_learned_options,
    fit_settings,
    input_geometry,
)


def batch_parser(commands) -> None:
    batch = commands.add_parser(
        "batch", help="upsample every scan and section folder under a folder, resumably"
    )
    batch.add_argument("input_root", metavar="INPUT_ROOT")
    batch.add_argument("output_root", metavar="OUTPUT_ROOT")
    batch.add_argument("--method", choices=["misr", "linear", "bspline"], default="misr")
    batch.add_argument("--pattern", metavar="GLOB", help="only inputs whose name matches")
    batch.add_argument(
        "--output-suffix",
        metavar="EXT",
        help="output format, e.g. .nii.gz or .ome.tif (default: like the input; "
        "section folders give .ome.tif)",
    )
    add_dicom_options(
        batch,
        format_help="dicom: every output is a DICOM series folder (the output name without a "
        "suffix)",
        patient_help="patient ID of every non-DICOM input's series, each its own study (default: "
        "MEDSR- and a hash of the input's relative path; DICOM inputs keep their own)",
        modality_help="modality of the non-DICOM inputs' series (default MR; DICOM inputs keep "
        "their own)",
    )
    batch.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    batch.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on a Dask distributed scheduler (or 'local' for a local cluster)",
    )
    add_target_options(batch)
    add_fit_options(batch)
    batch.add_argument("--align", action="store_true", help="align sections first")
    batch.add_argument("--dtype", choices=["input", "float32"], default="input")
    batch.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs that this batch's manifest does not own",
    )
    batch.add_argument(
        "--dry-run",
        action="store_true",
        help="list input -> output pairs and the problems found, write nothing "
        "(exit 1 if there are problems)",
    )
    add_input_geometry(batch, series=False)
    add_runtime_options(batch)


def batch_command(args: argparse.Namespace) -> int:
    from medsr.batch import OutputCollisionError, run_batch

    settings = batch_settings(args)
    if args.dry_run:
        return dry_run_batch(args, settings)
    progress = _Progress(args.quiet)
    try:
        entries = run_batch(
            args.input_root,
            args.output_root,
            settings=settings,
            pattern=args.pattern,
            suffix=args.output_suffix,
            workers=args.workers,
            scheduler=args.scheduler,
            on_start=progress.start,
            on_done=progress.done,
            overwrite=args.overwrite,
            threads=args.threads,
        )
    except OutputCollisionError as error:  # one line per collision, nothing written
        for line in error.problems:
            print(f"medsr: error: {line}", file=sys.stderr)
        return 1
    progress.close()
    # this run's inputs only: the manifest keeps entries of inputs removed since
    statuses = {key: entries[key]["status"] for key in progress.settled}
    failed = [k for k, status in statuses.items() if status != "done"]
    if not args.quiet:
        print(
            f"{len(statuses) - len(failed)} done, {len(failed)} failed; manifest in "
            f"{Path(args.output_root) / 'medsr_manifest.json'}"
        )
    return 1 if failed else 0


def batch_settings(args: argparse.Namespace) -> dict:
    """The settings of every input's `upsample_file`, as the manifest records them."""
    input_spacing, input_unit = input_geometry(args)
    settings = {
        "method": args.method,
        "spacing": args.spacing,
        "scale": args.scale,
        "input_spacing": input_spacing,
        "input_unit": input_unit,
        "keep_dtype": args.dtype == "input",
        "align": args.align,
        "allow_coarser": args.allow_coarser,
        "slice_thickness": args.slice_thickness,
    }
    check_learned_options(args)
    if args.slice_profile:  # only then: older manifests' settings stay the same
        settings.update(slice_profile=args.slice_profile)
    if args.method == "misr":
        settings.update(fit_settings(args), device=args.device, batch_size=args.batch_size)
        if args.precision != "auto":  # only then: older manifests' settings stay the same
            settings.update(precision=args.precision)
    check_dicom_options(args)
    if args.output_format == "dicom":  # only then: older manifests' settings stay the same
        settings.update(
            output_format="dicom",
            dicom_patient_id=args.dicom_patient_id,
            dicom_modality=args.dicom_modality,
        )
    return settings


class _Progress:
    """The batch's progress bar, shown once there is work (errors found first come first), and
    a line for every failed input; `settled` holds the inputs of this run as they settle."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None
        self.settled: list[str] = []

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, disable=self.quiet, unit="input", desc="batch")

    def done(self, entry: dict) -> None:
        self.settled.append(entry["input"])
        self.bar.update(1)
        if entry["status"] != "done":
            self.bar.write(f"failed: {entry['input']}: {entry.get('error', '')}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


#: the batch settings that `check_input_file` takes (an inclusion list: a setting added later
#: is not passed on unchecked)
INPUT_SETTINGS = ("method", "spacing", "scale", "input_spacing", "input_unit")
INPUT_SETTINGS += ("slice_thickness", "slice_profile", "model", "fit_steps", "fit_seconds", "seed")


def dry_run_batch(args: argparse.Namespace, settings: dict) -> int:
    """`medsr batch --dry-run`: every input -> output pair and every problem; writes nothing.

    Besides the plan's problems (collisions, outputs it may not replace), every input to run is
    read and given `upsample_file`'s input checks (`check_input_file`: thick axis, slices,
    isotropy, the model's factor range, the fit's extent), so a dry run finds what the batch
    would fail on before it starts; inputs that are done are not read. Not checked: the
    output-side checks that need the volume (a 4D input to a non-NIfTI output, ``--align``
    with a 4D input, DICOM output tags), which the batch still reports per input."""
    from medsr.batch import plan_batch
    from medsr.batch.run import failure_reason
    from medsr.upsample.files import check_input_file

    plan = plan_batch(
        args.input_root,
        args.output_root,
        settings=settings,
        pattern=args.pattern,
        suffix=args.output_suffix,
        overwrite=args.overwrite,
    )
    action = {t.key: "run" for t in plan.run}
    action.update({e["input"]: "skip (done)" for e in plan.skip})
    action.update({e["input"]: "refused" for e in plan.refuse})
    inputs = {k: v for k, v in settings.items() if k in INPUT_SETTINGS}
    problems = list(plan.problems)
    for task in plan.run:
        try:
            check_input_file(task.source, series=task.series, **inputs)
        except Exception as error:  # as the batch's process_one: one input, one line
            action[task.key] = "would fail"
            problems.append(f"{task.key}: {failure_reason(error)}")
    for task in plan.tasks:
        if task.key in plan.colliding:
            action[task.key] = "collides"
        source = task.source + (f" (series {task.series})" if task.series else "")
        print(f"{source} -> {task.output}  [{action[task.key]}]")
    for line in problems:
        print(f"problem: {line}")
    print(
        f"{len(plan.tasks)} inputs: {len(plan.run)} to run, {len(plan.skip)} done, "
        f"{len(problems)} problem(s); dry run, nothing written"
    )
    return 1 if problems else 0
