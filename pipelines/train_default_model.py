"""Train the generator shipped with medsr and export it into the package.

Reproduces `medsr/weights/misr_default.pt`:

    python pipelines/train_default_model.py \
        --data ../shared/data/mri/heudiconv_b0_1.5mm_run3.nii.gz \
        --vgg-weights ../shared/weights/vgg16_imagenet_features.pth --out runs/default_model

It runs `medsr train` with `pipelines/configs/default_model.yaml` (resumable with --resume), then
keeps only what inference needs (generator weights, config, version) in the package file.
The benchmark volumes (b0 runs 1 and 2, the macaque template) are not used for training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from medsr import __version__
from medsr.cli import main as medsr_main

ROOT = Path(__file__).resolve().parents[1]


def export_generator(checkpoint: Path, destination: Path) -> None:
    """Write a generator-only checkpoint (a few hundred kB) for inference."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    slim = {
        "generator": state["generator"],
        "config": state["config"],
        "version": __version__,
        "step": state["step"],
    }
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, destination)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "default_model")
    parser.add_argument("--vgg-weights", required=True)
    parser.add_argument(
        "--config", type=Path, default=ROOT / "pipelines" / "configs" / "default_model.yaml"
    )
    parser.add_argument(
        "--export", type=Path, default=ROOT / "medsr" / "weights" / "misr_default.pt"
    )
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    argv = [
        "train",
        "--data",
        *args.data,
        "--out",
        str(args.out),
        "--config",
        str(args.config),
        "--vgg-weights",
        args.vgg_weights,
    ]
    for override in args.overrides:
        argv += ["--set", override]
    if args.resume:
        argv.append("--resume")
    code = medsr_main(argv)
    if code:
        raise SystemExit(code)
    export_generator(args.out / "checkpoints" / "latest.pt", args.export)
    print(f"exported {args.export}")


if __name__ == "__main__":
    main()
