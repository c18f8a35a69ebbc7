"""The `medsr` command: argparse subcommands that parse, call one function and map errors.

Exit codes: 0 success, 1 a known error (`MedsrError`, one line on stderr), 2 usage error,
130 interrupted. Heavy imports happen inside the commands so that `medsr --help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _length(text: str) -> str:
    """argparse type of a length with an optional unit (``0.5``, ``0.5mm``, ``2um``)."""
    from medsr.io.volume import parse_length

    try:
        parse_length(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def _add_input_geometry(parser: argparse.ArgumentParser, *, series: bool = True) -> None:
    if series:
        parser.add_argument(
            "--series",
            metavar="ID",
            help="DICOM series to read from a folder holding several (its number or UID; "
            "'medsr info FOLDER' lists them)",
        )
    parser.add_argument(
        "--slice-thickness",
        type=_length,
        metavar="LENGTH",
        help="slice thickness, overriding the header's (DICOM SliceThickness); below the "
        "spacing is a gap; the learned method's fit uses it as the slice profile",
    )
    parser.add_argument(
        "--input-spacing",
        nargs=3,
        type=_length,
        metavar=("X", "Y", "Z"),
        help="voxel size of the input, overriding (or supplying) its header; each may carry a "
        "unit (0.5mm, 2um)",
    )
    parser.add_argument(
        "--input-unit",
        choices=["mm", "um"],
        help="unit of bare --input-spacing numbers (default: the file's, µm for TIFF)",
    )


def _input_geometry(args: argparse.Namespace) -> tuple[list[float] | None, str | None]:
    """(--input-spacing as numbers, their unit); one unit for all three values."""
    from medsr.errors import MedsrError
    from medsr.io.volume import parse_length

    if not getattr(args, "input_spacing", None):
        return None, getattr(args, "input_unit", None)
    parsed = [parse_length(text) for text in args.input_spacing]
    units = {unit for _, unit in parsed if unit} | ({args.input_unit} if args.input_unit else set())
    if len(units) > 1:
        raise MedsrError(f"--input-spacing mixes units {sorted(units)}; use one")
    return [value for value, _ in parsed], (units.pop() if units else None)


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--spacing",
        type=_length,
        metavar="LENGTH",
        help="target thick-axis spacing, e.g. 0.5mm or 2um (a bare number is in the input's "
        "own unit: mm for medical formats, µm for TIFF and section folders; default: the "
        "finest in-plane spacing)",
    )
    target.add_argument("--scale", type=float, metavar="R", help="upsampling factor")
    parser.add_argument(
        "--allow-coarser",
        action="store_true",
        help="accept a target coarser than the input (integrated over each slab, not decimated)",
    )


def _add_runtime_options(parser: argparse.ArgumentParser, *, batch_size: bool = True) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    if batch_size:
        parser.add_argument(
            "--batch-size", type=int, default=8, metavar="N", help="planes per generator call"
        )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's)"
    )
    parser.add_argument("--quiet", action="store_true", help="print errors only")


def _add_fit_options(parser: argparse.ArgumentParser) -> None:
    """Options of the learned method, the same for upsample, batch and evaluate."""
    parser.add_argument(
        "--model",
        metavar="CKPT",
        help="checkpoint from 'medsr train' (default: the shipped weights)",
    )
    parser.add_argument(
        "--fit-steps",
        type=int,
        metavar="N",
        help="steps adapting the model to each scan (default 200, about 25 s for 256x256x60 "
        "on 2 CPU cores; 0: the shipped prior alone)",
    )
    parser.add_argument(
        "--fit-seconds",
        type=float,
        metavar="S",
        help="optional upper bound on the adaptation's time (the result then depends on the "
        "machine's speed)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the adaptation (default 0; same seed, same file)",
    )


def _fit_settings(args: argparse.Namespace) -> dict:
    """The learned method's options from parsed arguments (checked before any work)."""
    from medsr.errors import MedsrError
    from medsr.inference import DEFAULT_FIT_STEPS
    from medsr.runtime import resolve_device

    resolve_device(getattr(args, "device", "auto"))  # an unavailable device: before any work
    steps = DEFAULT_FIT_STEPS if args.fit_steps is None else args.fit_steps
    if steps < 0:
        raise MedsrError(f"--fit-steps must be >= 0, got {steps}")
    if args.fit_seconds is not None and args.fit_seconds < 0:
        raise MedsrError(f"--fit-seconds must be >= 0, got {args.fit_seconds}")
    return {
        "model": args.model,
        "fit_steps": steps,
        "fit_seconds": args.fit_seconds,
        "seed": args.seed,
    }


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line on stderr (exit 2), pointing at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _upsample_parser(commands) -> None:
    up = commands.add_parser("upsample", help="upsample a thick-slice volume along its thick axis")
    up.add_argument("input", help="volume file (NIfTI, NRRD, MHA, DICOM, TIFF) or folder")
    up.add_argument("-o", "--output", help="output file (default: beside the input)")
    up.add_argument(
        "--method",
        choices=["misr", "linear", "bspline", "labels"],
        default="misr",
        help="misr: the learned SR-GAN (default); linear / bspline: interpolation; labels: the "
        "input is a label map (shape-based interpolation)",
    )
    up.add_argument(
        "--labels",
        metavar="SEG",
        help="a label map on the input's grid (drawn on the thick slices), written on the "
        "output grid too",
    )
    up.add_argument(
        "--labels-out", metavar="PATH", help="where --labels goes (default: <output>_labels)"
    )
    _add_fit_options(up)
    _add_target_options(up)
    up.add_argument(
        "--axis",
        type=int,
        choices=[0, 1, 2],
        help="array axis to upsample (default: the thickest, from the header)",
    )
    up.add_argument(
        "--dtype",
        choices=["input", "float32"],
        default="input",
        help="output voxel type (default: the input's, rounded and clipped)",
    )
    _add_input_geometry(up)
    up.add_argument(
        "--align", action="store_true", help="rigidly align consecutive sections first (histology)"
    )
    up.add_argument("--overwrite", action="store_true", help="replace an existing output")
    up.add_argument(
        "--format",
        choices=["dicom"],
        dest="output_format",
        help="dicom: write a DICOM series into the folder -o names (default: from -o's suffix)",
    )
    up.add_argument(
        "--dicom-patient-id",
        metavar="ID",
        help="patient ID (and name) of the DICOM series of a non-DICOM input (default MEDSR-ANON)",
    )
    up.add_argument(
        "--dicom-modality",
        choices=["MR", "CT"],
        help="modality of the DICOM series of a non-DICOM input (default MR; a DICOM input's own)",
    )
    _add_runtime_options(up)


def _train_parser(commands) -> None:
    train = commands.add_parser("train", help="train the multi-image SR-GAN")
    train.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="high-resolution volumes, 2D images, thick scans (self-supervised at their own "
        "factor), folders of volumes, or .txt files listing them",
    )
    train.add_argument(
        "--validation-data",
        nargs="+",
        metavar="PATH",
        help="whole held-out volumes to validate on, none of them in --data (default: a block of "
        "each --data volume, never trained on)",
    )
    train.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    train.add_argument("--config", metavar="YAML", help="config file (unknown keys are errors)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a config field, e.g. train.steps=2000",
    )
    train.add_argument(
        "--self-supervised",
        action="store_true",
        help="learn from the in-plane slices of anisotropic scans",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue from RUN_DIR/checkpoints/latest.pt"
    )
    train.add_argument(
        "--vgg-weights", metavar="PTH", help="VGG16 feature weights for the perceptual loss"
    )
    train.add_argument("--device", help="auto, cpu or cuda:N (default: config's)")
    train.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch")
    train.add_argument("--quiet", action="store_true", help="no progress bar, errors only")


def _batch_parser(commands) -> None:
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
    batch.add_argument(
        "--format",
        choices=["dicom"],
        dest="output_format",
        help="dicom: every output is a DICOM series folder (the output name without a suffix)",
    )
    batch.add_argument(
        "--dicom-patient-id",
        metavar="ID",
        help="patient ID of every non-DICOM input's series, each its own study (default: "
        "MEDSR- and a hash of the input's relative path; DICOM inputs keep their own)",
    )
    batch.add_argument(
        "--dicom-modality",
        choices=["MR", "CT"],
        help="modality of the non-DICOM inputs' series (default MR; DICOM inputs keep their own)",
    )
    batch.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    batch.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on a Dask distributed scheduler (or 'local' for a local cluster)",
    )
    _add_target_options(batch)
    _add_fit_options(batch)
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
    _add_input_geometry(batch, series=False)
    _add_runtime_options(batch)


def _evaluate_parser(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="simulate thick slices of HR volumes and score every method"
    )
    evaluate.add_argument("volumes", nargs="+", metavar="HR_VOLUME")
    evaluate.add_argument("--factor", type=float, required=True, help="thick / thin spacing")
    evaluate.add_argument(
        "--axis", type=int, choices=[0, 1, 2], default=2, help="array axis made thick (default 2)"
    )
    evaluate.add_argument("--profile", choices=["boxcar", "gaussian"], default="boxcar")
    evaluate.add_argument(
        "--methods",
        default="misr,linear,bspline",
        help="comma-separated methods (default misr,linear,bspline)",
    )
    evaluate.add_argument("--mask", metavar="VOLUME", help="evaluation mask (default: Otsu)")
    _add_fit_options(evaluate)
    evaluate.add_argument("--out", required=True, metavar="REPORT_DIR")
    evaluate.add_argument(
        "--overwrite", action="store_true", help="replace the report's files if they exist"
    )
    _add_runtime_options(evaluate, batch_size=False)


def _compare_parser(commands) -> None:
    compare = commands.add_parser(
        "compare", help="figure of the same world planes through an input and its outputs"
    )
    compare.add_argument("low", metavar="IN_LOW")
    compare.add_argument("outputs", nargs="+", metavar="OUT")
    compare.add_argument("--out", required=True, metavar="FIG.png")
    compare.add_argument("--overwrite", action="store_true", help="replace an existing figure")
    compare.add_argument("--quiet", action="store_true")


def _info_parser(commands) -> None:
    info = commands.add_parser(
        "info", help="print shape, spacing, orientation, thick axis and the default output grid"
    )
    info.add_argument("input")
    _add_input_geometry(info)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="medsr", description="Medical volumetric super-resolution.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (
        _upsample_parser,
        _train_parser,
        _batch_parser,
        _evaluate_parser,
        _compare_parser,
        _info_parser,
    ):
        add(commands)
    return parser


def _run_upsample(args: argparse.Namespace) -> int:
    from medsr.errors import MedsrError
    from medsr.inference import labels_output_path, upsample_file

    options = {}
    if args.method == "misr":
        options = {
            **_fit_settings(args),
            "device": args.device,
            "batch_size": args.batch_size,
            "progress": not args.quiet,
        }
    elif args.model or args.fit_seconds is not None or args.fit_steps is not None:
        raise MedsrError("--model, --fit-steps and --fit-seconds apply to --method misr only")
    if args.labels_out and not args.labels:
        raise MedsrError("--labels-out needs --labels")
    if args.method == "labels" and args.labels:
        raise MedsrError("--method labels upsamples the input itself; --labels is for an image")
    if args.output_format != "dicom" and (args.dicom_patient_id or args.dicom_modality):
        raise MedsrError("--dicom-patient-id and --dicom-modality need --format dicom")
    input_spacing, input_unit = _input_geometry(args)
    output = upsample_file(
        args.input,
        args.output,
        method=args.method,
        spacing=args.spacing,
        scale=args.scale,
        axis=args.axis,
        input_spacing=input_spacing,
        input_unit=input_unit,
        keep_dtype=args.dtype == "input",
        overwrite=args.overwrite,
        align=args.align,
        allow_coarser=args.allow_coarser,
        series=args.series,
        slice_thickness=args.slice_thickness,
        labels=args.labels,
        labels_output=args.labels_out,
        output_format=args.output_format,
        dicom_patient_id=args.dicom_patient_id,
        dicom_modality=args.dicom_modality,
        **options,
    )
    if not args.quiet:
        print(f"wrote {output}")
        if args.labels:
            print(f"wrote {labels_output_path(output, args.labels_out)}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medsr.training_run import resolve_config, run_training

    overrides = list(args.overrides)
    if args.self_supervised:
        overrides.append("data.self_supervised=true")
    if args.vgg_weights:
        overrides.append(f"loss.vgg_weights={args.vgg_weights}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    config = resolve_config(Path(args.out), args.config, overrides, args.resume)
    scores = run_training(
        args.data,
        args.out,
        config,
        resume=args.resume,
        progress=not args.quiet,
        validation_paths=args.validation_data,
    )
    if not args.quiet and scores:
        print(
            f"validation PSNR {scores['val_psnr']:.2f} dB (B-spline "
            f"{scores['val_psnr_bspline']:.2f}), SSIM {scores['val_ssim']:.4f} "
            f"(B-spline {scores['val_ssim_bspline']:.4f})"
        )
    if not args.quiet:
        print(f"checkpoint: {Path(args.out) / 'checkpoints' / 'latest.pt'}")
    return 0


def _run_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medsr.batch import OutputCollisionError, run_batch

    input_spacing, input_unit = _input_geometry(args)
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
    if args.method == "misr":
        settings.update(_fit_settings(args), device=args.device, batch_size=args.batch_size)
    if args.output_format == "dicom":  # only then: older manifests' settings stay the same
        settings.update(
            output_format="dicom",
            dicom_patient_id=args.dicom_patient_id,
            dicom_modality=args.dicom_modality,
        )
    elif args.dicom_patient_id or args.dicom_modality:
        from medsr.errors import MedsrError

        raise MedsrError("--dicom-patient-id and --dicom-modality need --format dicom")
    if args.dry_run:
        return _dry_run_batch(args, settings)
    bar = None

    def start(total: int) -> None:  # the bar appears once there is work: errors come first
        nonlocal bar
        bar = tqdm(total=total, disable=args.quiet, unit="input", desc="batch")

    def done(entry: dict) -> None:
        bar.update(1)
        if entry["status"] != "done":
            bar.write(f"failed: {entry['input']}: {entry.get('error', '')}")

    try:
        entries = run_batch(
            args.input_root,
            args.output_root,
            settings=settings,
            pattern=args.pattern,
            suffix=args.output_suffix,
            workers=args.workers,
            scheduler=args.scheduler,
            on_start=start,
            on_done=done,
            overwrite=args.overwrite,
        )
    except OutputCollisionError as error:  # one line per collision, nothing written
        for line in error.problems:
            print(f"medsr: error: {line}", file=sys.stderr)
        return 1
    if bar is not None:
        bar.close()
    failed = [k for k, e in entries.items() if e["status"] != "done"]
    if not args.quiet:
        print(
            f"{len(entries) - len(failed)} done, {len(failed)} failed; manifest in "
            f"{Path(args.output_root) / 'medsr_manifest.json'}"
        )
    return 1 if failed else 0


def _dry_run_batch(args: argparse.Namespace, settings: dict) -> int:
    """`medsr batch --dry-run`: every input -> output pair and every problem; writes nothing."""
    from medsr.batch import plan_batch

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
    for task in plan.tasks:
        if task.key in plan.colliding:
            action[task.key] = "collides"
        source = task.source + (f" (series {task.series})" if task.series else "")
        print(f"{source} -> {task.output}  [{action[task.key]}]")
    for line in plan.problems:
        print(f"problem: {line}")
    print(
        f"{len(plan.tasks)} inputs: {len(plan.run)} to run, {len(plan.skip)} done, "
        f"{len(plan.problems)} problem(s); dry run, nothing written"
    )
    return 1 if plan.problems else 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from medsr.report import run_evaluation

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    misr = {
        **_fit_settings(args),
        "device": args.device,
        "progress": not args.quiet,
    }
    run_evaluation(
        args.volumes,
        args.out,
        factor=args.factor,
        axis=args.axis,
        profile=args.profile,
        methods=methods,
        mask_path=args.mask,
        misr_options=misr,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    if not args.quiet:
        print(f"wrote {args.out}/report.md, metrics.csv, metrics.json and figures")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from medsr.report import run_compare

    path = run_compare(args.low, args.outputs, args.out, overwrite=args.overwrite)
    if not args.quiet:
        print(f"wrote {path}")
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from medsr.geometry import (
        ISOTROPY_TOLERANCE,
        anisotropy,
        orientation_codes,
        plan_output_grid,
        thick_axis,
    )
    from medsr.io import read_volume

    input_spacing, input_unit = _input_geometry(args)
    path = Path(args.input)
    if path.is_dir() and args.series is None:
        from medsr.io import folder_kind
        from medsr.io.itk import list_dicom_series

        found = list_dicom_series(path) if folder_kind(path) == "dicom" else []
        if len(found) > 1:
            print(f"folder:      {args.input} ({len(found)} DICOM series; pick one with --series)")
            for item in found:
                print(f"  {item.summary()}")
            return 0
    from medsr.io import volume_frames

    frames = volume_frames(path) if path.is_file() else 1
    volume = read_volume(
        path,
        spacing=input_spacing,
        unit=input_unit,
        series=args.series,
        frame=0 if frames > 1 else None,
    )
    spacing = " x ".join(f"{s:.4g}" for s in volume.spacing)
    channels = "RGB" if volume.num_channels == 3 else "grey"
    print(f"file:        {args.input} ({volume.meta.get('format', '?')})")
    print(
        f"shape:       {' x '.join(map(str, volume.spatial_shape))} ({channels}, "
        f"{volume.array.dtype})"
    )
    print(f"spacing:     {spacing} {volume.unit}")
    print(f"orientation: {orientation_codes(volume.affine)}")
    print(f"thick axis:  {thick_axis(volume.affine)}")
    print(f"anisotropy:  {anisotropy(volume.affine):.3g}")
    if frames > 1:
        print(f"volumes:     {frames} (a 4D series; each is upsampled as a 3D volume)")
    if "series_uid" in volume.meta:
        print(f"series:      {volume.meta['series_uid']}")
    if "slice_thickness" in volume.meta:
        print(f"thickness:   {volume.meta['slice_thickness']:.4g} {volume.unit} slices")
    if anisotropy(volume.affine) >= ISOTROPY_TOLERANCE:
        from medsr.inference import learned_coverage

        grid = plan_output_grid(volume.spatial_shape, volume.affine)
        factor = volume.spacing[grid.axis] / grid.spacing
        print(
            f"output grid: {' x '.join(map(str, grid.shape))}, {grid.spacing:.4g} {volume.unit} "
            f"along axis {grid.axis} (factor {factor:.3g}, default upsample)"
        )
        print(f"learned:     {learned_coverage(factor)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with `argv` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from medsr import __version__

        print(f"medsr {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.captureWarnings(True)
    from medsr.errors import MedsrError

    handlers = {
        "batch": _run_batch,
        "upsample": _run_upsample,
        "train": _run_train,
        "evaluate": _run_evaluate,
        "compare": _run_compare,
        "info": _run_info,
    }
    from tqdm.contrib.logging import logging_redirect_tqdm

    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            print(f"medsr: error: --threads must be >= 1, got {threads}", file=sys.stderr)
            return 1
        import torch

        torch.set_num_threads(threads)

    try:
        with logging_redirect_tqdm():  # log lines never break a progress bar
            return handlers[args.command](args)
    except MedsrError as error:
        print(f"medsr: error: {' '.join(str(error).split())}", file=sys.stderr)  # one line
        return 1
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("medsr: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
