"""Train the generator shipped with medsr and export it into the package.

Reproduces `medsr/weights/misr_default.pt` with one command (from the repository root, with
../shared beside it):

    python pipelines/train_default_model.py \
        --vgg-weights ../shared/weights/vgg16_imagenet_features.pth

It cuts the 2D histology images into a training (left) half and a benchmark (right) half, runs
`medsr train` with `pipelines/configs/default_model.yaml` on the volumes listed in
`pipelines/configs/default_model_data.txt`, validating on the whole held-out volumes of
`default_model_validation.txt` (resumable with --resume), then keeps only what inference needs
(generator weights, config, version, step) in the package file. Both lists must be exactly the
train and validation entries of `pipelines/configs/split.yaml` (disjoint by subject from the
test volumes); the script refuses to train otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
import torch
from split import SPLIT_FILE, check_lists, read_split

from medsr import __version__
from medsr.cli import main as medsr_main
from medsr.io.sections import read_section

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "pipelines" / "configs"
HISTOLOGY = ["stardist_he.jpg", "wsidicom_he_tile.png", "stardist_fluo_nuclei.tif"]


def histology_halves(data: Path, out: Path) -> None:
    """Left halves (columns) of the 2D histology images, for training; the right halves are
    the histology benchmark's (pipelines/benchmark_histology.py)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for name in HISTOLOGY:
        image = np.asarray(read_section(data / "histology" / name))
        left = np.ascontiguousarray(image[:, : image.shape[1] // 2])
        stem = name.rsplit(".", 1)[0]
        if name.endswith(".tif"):
            tifffile.imwrite(out / f"{stem}_left.tif", left)
        else:
            Image.fromarray(left).save(out / f"{stem}_left.png")


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
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "default_model")
    parser.add_argument("--vgg-weights", required=True)
    parser.add_argument("--config", type=Path, default=CONFIGS / "default_model.yaml")
    parser.add_argument("--data", type=Path, default=CONFIGS / "default_model_data.txt")
    parser.add_argument("--validation", type=Path, default=CONFIGS / "default_model_validation.txt")
    parser.add_argument(
        "--export", type=Path, default=ROOT / "medsr" / "weights" / "misr_default.pt"
    )
    parser.add_argument("--split", type=Path, default=SPLIT_FILE)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    try:
        check_lists(read_split(args.split), args.data, args.validation)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    histology_halves(args.shared_data, ROOT / "runs" / "default_model" / "histology_train")
    argv = ["train", "--data", str(args.data), "--validation-data", str(args.validation)]
    argv += ["--out", str(args.out), "--config", str(args.config)]
    argv += ["--vgg-weights", args.vgg_weights]
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
