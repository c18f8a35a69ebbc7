"""A training run on disk: expand the data paths, resolve the config (defaults, checkpoint,
YAML, --set), and drive a `Trainer` in RUN_DIR, under torchrun or alone (``medsr train``)."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import torch

from medsr.config import Config, checkpoint_config, config_from_dict
from medsr.errors import MedsrError
from medsr.intensity import grey_mean
from medsr.io import Volume
from medsr.runtime import distributed_world
from medsr.train.trainer import Trainer

logger = logging.getLogger(__name__)


#: single 2D images (histology tiles, photographs of sections) usable as training planes
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def expand_data_paths(paths: list[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; a ``.txt`` file lists paths (one per line, ``#`` comments, relative to
    the list); a folder of volume files becomes its files (sorted); a DICOM series or section
    folder stays one volume."""
    from medsr.io import volume_format

    expanded = []
    for item in map(Path, paths):
        if not item.exists():
            raise MedsrError(f"training data not found: '{item}'")
        if item.is_file() and item.suffix.lower() == ".txt":
            lines = [
                line.split("#")[0].strip() for line in item.read_text(encoding="utf-8").splitlines()
            ]
            expanded += expand_data_paths([item.parent / line for line in lines if line])
            continue
        files = []
        if item.is_dir():
            for child in sorted(item.iterdir()):
                try:
                    if child.is_file() and volume_format(child) not in ("tiff", "dicom"):
                        files.append(child)
                except MedsrError:
                    continue
        expanded += files or [item]
    return expanded


def _content_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def check_disjoint(train_paths: list[Path], validation_paths: list[Path]) -> None:
    """Refuse a volume given both to train on and to validate on: the same path (resolved, so
    links and ``..`` count) or the same content under another name (a copy: sizes first, then
    SHA-256 of the same-size ones only).

    Raises:
        MedsrError: the first such volume, in one line.
    """
    from medsr.provenance import sha256

    resolved = {p.resolve(): p for p in train_paths}
    for path in validation_paths:
        if path.resolve() in resolved:
            raise MedsrError(
                f"'{path}' is in both --data and --validation-data; validate on volumes that "
                "are not trained on"
            )
    by_size: dict[int, list[Path]] = {}
    for path in train_paths:
        by_size.setdefault(_content_size(path), []).append(path)
    digests: dict[Path, str] = {}
    for path in validation_paths:
        for twin in by_size.get(_content_size(path), []):
            for item in (path, twin):
                digests.setdefault(item, sha256(item))
            if digests[path] == digests[twin]:
                raise MedsrError(
                    f"'{path}' (--validation-data) is a copy of '{twin}' (--data); validate on "
                    "volumes that are not trained on"
                )


def read_training_volume(path: Path) -> Volume:
    """A volume for training: `read_volume`, or a single 2D image (PNG/JPEG, or a TIFF of one
    plane) as a volume of one slice with unit pixels. Colour becomes its grey mean."""
    from medsr.io import read_volume
    from medsr.io.sections import read_section

    is_tiff = path.suffix.lower() in (".tif", ".tiff")
    if path.suffix.lower() in IMAGE_SUFFIXES or is_tiff:
        image = np.asarray(read_section(path))
        if is_tiff and image.ndim == 3 and image.shape[-1] not in (3, 4):
            try:
                return read_volume(path)  # a stack
            except MedsrError as error:
                if "no spacing" not in str(error):
                    raise
                logger.warning("'%s' has no spacing; training on it as isotropic", path)
                return read_volume(path, spacing=(1.0, 1.0, 1.0))
        grey = grey_mean(image[..., :3] if image.ndim == 3 else image, image.ndim == 3)
        return Volume(np.asarray(grey, np.float32)[:, :, None], np.eye(4))
    return read_volume(path)


def resolve_config(
    run_dir: Path, config_path: str | None, overrides: list[str], resume: bool
) -> Config:
    """The run's config: defaults (or, with `resume`, the checkpoint's), then file, then --set."""
    from medsr.config import apply_overrides, config_to_dict, read_config_file

    values: dict = {}
    latest = run_dir / "checkpoints" / "latest.pt"
    if resume:
        if not latest.exists():
            raise MedsrError(f"--resume: no checkpoint at '{latest}'")
        stored = torch.load(latest, map_location="cpu", weights_only=True)["config"]
        values = config_to_dict(checkpoint_config(stored))  # a pre-tail run resumes without one
    if config_path is not None:
        for section, fields in read_config_file(config_path).items():
            values[section] = {**values.get(section, {}), **fields}
    return config_from_dict(apply_overrides(values, overrides))


def run_training(
    data_paths: list,
    run_dir: str | os.PathLike[str],
    config: Config,
    *,
    resume: bool = False,
    progress: bool = False,
    validation_paths: list | None = None,
) -> dict[str, float]:
    """Read the data, train (resuming from ``RUN_DIR/checkpoints/latest.pt`` if asked), and
    save the resolved config in RUN_DIR. Works under torchrun (one process per rank).

    With `validation_paths`, validation uses whole held-out volumes (`PairSampler.
    validation_planes` of their sources) and the training data is used whole; without, a block
    of each training volume (``data.validation_fraction``, the same voxels in every
    orientation) is held out for validation and never trained on. A volume given in both
    lists (the same path or a copy) is refused before anything is written."""
    from medsr.config import save_config
    from medsr.runtime import close_distributed, init_distributed, resolve_device, seed_everything
    from medsr.train.pairs import build_sampler

    run_dir = Path(run_dir)
    if not resume and (run_dir / "checkpoints" / "latest.pt").exists():
        raise MedsrError(
            f"'{run_dir}' already holds a run; use --resume to continue it or choose another --out"
        )
    from medsr.io import make_output_folder

    paths = expand_data_paths(data_paths)  # missing data: an error before anything is written
    held_out_paths = expand_data_paths(validation_paths) if validation_paths else []
    check_disjoint(paths, held_out_paths)
    make_output_folder(run_dir)
    rank, local_rank, world = distributed_world()
    device = resolve_device(config.train.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    init_distributed(device)
    try:
        seed_everything(config.train.seed + rank)
        volumes = [(read_training_volume(p), p.name) for p in paths]
        # held-out volumes validate: nothing of the training volumes is held back then
        whole = dataclasses.replace(config.data, validation_fraction=0.0)
        sampler = build_sampler(
            volumes, whole if held_out_paths else config.data, config.model.neighbours
        )
        validation = None
        if held_out_paths:
            held_out = [(read_training_volume(p), p.name) for p in held_out_paths]
            validation = build_sampler(held_out, whole, config.model.neighbours).validation_planes(
                max_sources=24
            )
        trainer = Trainer(config, sampler, device, run_dir, validation=validation)
        if resume:
            trainer.load_checkpoint(run_dir / "checkpoints" / "latest.pt")
            logger.info("resumed at step %d", trainer.step)
        if rank == 0:
            save_config(config, run_dir / "config.yaml")
        result = trainer.fit(progress=progress)
        close_distributed(synchronise=True)
        return result
    finally:
        close_distributed()
