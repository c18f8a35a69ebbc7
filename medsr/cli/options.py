"""Option groups shared by the subcommands: input geometry, target, runtime and fit options."""

from __future__ import annotations

import argparse


def length(text: str) -> str:
    """argparse type of a length with an optional unit (``0.5``, ``0.5mm``, ``2um``)."""
    from medsr.io.volume import parse_length

    try:
        parse_length(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def threads(text: str) -> int:
    """argparse type of ``--threads`` and ``--batch-size``: a whole number >= 1 (else a usage
    error, exit 2)."""
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"must be a whole number, got '{text}'") from error
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_input_geometry(
    parser: argparse.ArgumentParser, *, series: bool = True, profile: bool = True
) -> None:
    if series:
        parser.add_argument(
            "--series",
            metavar="ID",
            help="DICOM series to read from a folder holding several (its number or UID; "
            "'medsr info FOLDER' lists them)",
        )
    parser.add_argument(
        "--slice-thickness",
        type=length,
        metavar="LENGTH",
        help="slice thickness, overriding the header's (DICOM SliceThickness); below the "
        "spacing is a gap; the learned method's fit uses it as the slice profile's width "
        "(default: the header's; where it has none, the slice spacing: contiguous slices)",
    )
    if profile:
        from medsr.degrade import SLICE_PROFILES  # numpy only: the CLI stays light to start

        parser.add_argument(
            "--slice-profile",
            choices=SLICE_PROFILES,
            help="shape of the slice profile, for the learned method's fit (sinc: a 2D "
            "multi-slice MRI's truncated-sinc RF pulse, side lobes into the neighbours; "
            "default: estimated from the scan, else the model's trained boxcar and Gaussian, "
            "the boxcar drawn three times per Gaussian)",
        )
    parser.add_argument(
        "--input-spacing",
        nargs=3,
        type=length,
        metavar=("X", "Y", "Z"),
        help="voxel size of the input, overriding (or supplying) its header; each may carry a "
        "unit (0.5mm, 2um)",
    )
    parser.add_argument(
        "--input-unit",
        choices=["mm", "um"],
        help="unit of bare --input-spacing numbers (default: the file's, µm for TIFF)",
    )


def input_geometry(args: argparse.Namespace) -> tuple[list[float] | None, str | None]:
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


def add_target_options(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--spacing",
        type=length,
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


def add_runtime_options(parser: argparse.ArgumentParser, *, batch_size: bool = True) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    if batch_size:
        from medsr.config import PLANE_BATCH  # light: numpy and yaml, no torch

        parser.add_argument(
            "--batch-size",
            type=threads,
            default=PLANE_BATCH,
            metavar="N",
            help=f"planes per generator call (default {PLANE_BATCH})",
        )
    parser.add_argument(
        "--threads", type=threads, metavar="N", help="CPU threads for torch (default: torch's)"
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="arithmetic of the learned method, the per-scan fit and the reconstruction: auto "
        "(default) = bf16 for the encoder's convolutions on a CPU with native bf16 (its cost "
        "against fp32 is measured in docs/benchmarks.md), fp16 on CUDA, fp32 otherwise; fp32: "
        "float32 throughout, and the fit's default steps with it (--fit-steps); on CUDA the fit "
        "follows the model's mixed-precision setting",
    )
    parser.add_argument("--quiet", action="store_true", help="print errors only")


def add_fit_options(parser: argparse.ArgumentParser) -> None:
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
        help="steps adapting the model to each scan (default 800 where the fit's encoder runs "
        "in bf16, on a CPU with native bf16: about 22 s of a 37 s 256x256x60 upsample on 2 AMX "
        "CPU cores; where it runs in float32 on the CPU, 100 to 400, as many as a 55 s budget "
        "leaves after the reconstruction: docs/benchmarks.md, 'The default's work on a float32 "
        "CPU'; 0: the shipped prior alone)",
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
    parser.add_argument(
        "--ensemble",
        type=int,
        choices=[1, 2, 4, 8],
        metavar="N",
        help="reconstruction passes averaged, each on flipped planes (1, 2, 4 or 8; default: 4 "
        "for outputs up to 10.7 M voxels, fewer for larger ones, whose passes cost most: "
        "docs/benchmarks.md, 'The fit's pixel loss and the self-ensemble'; on a float32 CPU "
        "only where they leave the fit 200 steps)",
    )
    parser.add_argument(
        "--orientations",
        type=int,
        choices=[1, 2],
        metavar="N",
        help="through-plane orientations reconstructed and averaged (2, or 1 at half the "
        "reconstruction's time; default 2, but 1 on a float32 CPU where both would not leave "
        "the fit 100 steps within its 55 s budget: docs/benchmarks.md, 'One orientation on a "
        "float32 CPU')",
    )


def fit_settings(args: argparse.Namespace) -> dict:
    """The learned method's options from parsed arguments (checked before any work)."""
    from medsr.errors import MedsrError
    from medsr.runtime import resolve_device

    resolve_device(getattr(args, "device", "auto"))  # unavailable: before any work
    steps = args.fit_steps  # None: the default for the scan (`medsr.upsample.budget.default_work`)
    if steps is not None and steps < 0:
        raise MedsrError(f"--fit-steps must be >= 0, got {steps}")
    if args.fit_seconds is not None and args.fit_seconds < 0:
        raise MedsrError(f"--fit-seconds must be >= 0, got {args.fit_seconds}")
    settings = {
        "model": args.model,
        "fit_steps": steps,
        "fit_seconds": args.fit_seconds,
        "seed": args.seed,
    }
    for name in ("ensemble", "orientations"):  # only where given: older settings stay the same
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    return settings


def check_learned_options(args: argparse.Namespace) -> None:
    """Before any work: the learned method's own options with another method are errors, not
    silently ignored (``upsample`` and ``batch`` alike)."""
    from medsr.errors import MedsrError

    if args.method == "misr":
        return
    if args.model or args.fit_seconds is not None or args.fit_steps is not None:
        raise MedsrError("--model, --fit-steps and --fit-seconds apply to --method misr only")
    if getattr(args, "ensemble", None) is not None:
        raise MedsrError("--ensemble averages the learned method's passes: --method misr only")
    if getattr(args, "orientations", None) is not None:
        raise MedsrError("--orientations counts the learned method's planes: --method misr only")
    if args.slice_profile:
        raise MedsrError("--slice-profile shapes the learned method's fit: --method misr only")


class Parser(argparse.ArgumentParser):
    """Usage errors in one line on stderr (exit 2), pointing at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def add_dicom_options(
    parser: argparse.ArgumentParser, *, format_help: str, patient_help: str, modality_help: str
) -> None:
    """``--format dicom``, ``--dicom-patient-id`` and ``--dicom-modality`` (`medsr.io.dicom`);
    the help texts say what they mean for the command (one output, or every output of a batch)."""
    parser.add_argument("--format", choices=["dicom"], dest="output_format", help=format_help)
    parser.add_argument("--dicom-patient-id", metavar="ID", help=patient_help)
    parser.add_argument("--dicom-modality", choices=["MR", "CT"], help=modality_help)


def check_dicom_options(args: argparse.Namespace) -> None:
    """The DICOM header options need ``--format dicom`` (one line, before any work)."""
    if args.output_format != "dicom" and (args.dicom_patient_id or args.dicom_modality):
        from medsr.errors import MedsrError

        raise MedsrError("--dicom-patient-id and --dicom-modality need --format dicom")
