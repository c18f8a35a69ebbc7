"""Build and load a generator: from a `ModelConfig`, or from a checkpoint of ``medsr train``
(``weights_only``), and the weights shipped inside the package."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

from medsr.config import Config, checkpoint_config
from medsr.errors import MedsrError
from medsr.nets.generator import MISRGenerator


def build_generator(config: Config) -> MISRGenerator:
    """The generator described by `config.model`."""
    model = config.model
    return MISRGenerator(
        neighbours=model.neighbours,
        num_features=model.num_features,
        num_blocks=model.num_blocks,
        hidden=model.hidden,
        tail_knots=model.tail_knots,
    )


def load_generator(path: str | os.PathLike[str], device: torch.device | str = "cpu"):
    """Generator and config from a checkpoint (inference needs nothing else).

    Returns:
        (generator in eval mode on `device`, `Config`).
    """
    try:
        state = torch.load(Path(path), map_location=device, weights_only=True)
        config = checkpoint_config(state["config"])
        generator = build_generator(config)
        generator.load_state_dict(state["generator"])
    except Exception as error:  # unpickling errors, missing keys, shape mismatches
        reason = " ".join(str(error).split())[:300]  # state_dict errors list keys on lines
        raise MedsrError(
            f"cannot load model checkpoint '{path}' (not a medsr checkpoint?): "
            f"{type(error).__name__}: {reason}"
        ) from error
    return generator.to(device).eval(), config


def default_model_path() -> Path:
    """The generator weights shipped inside the package."""
    return Path(str(resources.files("medsr") / "weights" / "misr_default.pt"))
