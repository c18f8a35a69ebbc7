"""`medsr evaluate` and `medsr compare`: their parsers and commands."""

from __future__ import annotations

import argparse

from medsr.cli.options import add_fit_options, add_runtime_options, fit_settings


def evaluate_parser(commands) -> None:
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
    add_fit_options(evaluate)
    evaluate.add_argument("--out", required=True, metavar="REPORT_DIR")
    evaluate.add_argument(
        "--overwrite", action="store_true", help="replace the report's files if they exist"
    )
    add_runtime_options(evaluate, batch_size=False)


def compare_parser(commands) -> None:
    compare = commands.add_parser(
        "compare", help="figure of the same world planes through an input and its outputs"
    )
    compare.add_argument("low", metavar="IN_LOW")
    compare.add_argument("outputs", nargs="+", metavar="OUT")
    compare.add_argument("--out", required=True, metavar="FIG.png")
    compare.add_argument("--overwrite", action="store_true", help="replace an existing figure")
    compare.add_argument("--quiet", action="store_true")


def evaluate_command(args: argparse.Namespace) -> int:
    from medsr.evaluate.report import run_evaluation

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    misr = {
        **fit_settings(args),
        "device": args.device,
        "precision": args.precision,
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


def compare_command(args: argparse.Namespace) -> int:
    from medsr.evaluate.report import run_compare

    path = run_compare(args.low, args.outputs, args.out, overwrite=args.overwrite)
    if not args.quiet:
        print(f"wrote {path}")
    return 0
