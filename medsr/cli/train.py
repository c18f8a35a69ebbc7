"""`medsr train`: its parser and the command."""

from __future__ import annotations

import argparse

from medsr.cli.options import threads


def train_parser(commands) -> None:
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
    train.add_argument("--threads", type=threads, metavar="N", help="CPU threads for torch")
    train.add_argument("--quiet", action="store_true", help="no progress bar, errors only")


def train_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medsr.train.run import resolve_config, run_training

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
