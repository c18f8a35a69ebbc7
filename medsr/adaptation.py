"""Adapting a trained generator to one scan (self-supervised), a fixed number of steps.

The scan's own in-plane slices are degraded to its thick-slice spacing along each in-plane axis
and the generator is fine-tuned with the pixel loss to undo that, starting from trained weights
(SMORE/ECLARE idea, warm-started). Only the pixel loss is used: it is the fastest signal in a
short budget, and the perceptual/adversarial character comes from the pre-trained weights.

The fit is a number of steps, not a time: for a given seed and device the same scan gives the
same adapted weights, so the same command writes the same file. A time limit is an optional upper
bound on top (then the result depends on the machine's speed, and the steps run are recorded).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch

from medsr.config import Config
from medsr.data import PairSampler, sources_self_supervised
from medsr.io import Volume
from medsr.models import MISRGenerator
from medsr.training import Trainer

logger = logging.getLogger(__name__)

#: learning rate of the fine-tuning (constant: short fits gain nothing from a decay)
ADAPTATION_LEARNING_RATE = 2e-4


def adaptation_config(
    config: Config, steps: int, seed: int, thickness_ratio: float | None = None
) -> Config:
    """`config` turned into the fine-tuning's: pixel loss only, the scan's own factor, no
    intensity or noise augmentation, constant learning rate, `steps` steps; with
    `thickness_ratio` (the scan's slice thickness / spacing), that slice profile only."""
    ratios = config.data.thickness_ratios if thickness_ratio is None else (thickness_ratio,) * 2
    return dataclasses.replace(
        config,
        loss=dataclasses.replace(config.loss, perceptual_weight=0.0, adversarial_weight=0.0),
        data=dataclasses.replace(
            config.data,
            self_supervised=True,
            validation_fraction=0.0,
            noise_max=0.0,
            gamma_range=(1.0, 1.0),
            gain_range=(1.0, 1.0),
            thickness_ratios=ratios,
        ),
        train=dataclasses.replace(
            config.train,
            steps=max(1, steps),
            warmup_steps=0,
            learning_rate=ADAPTATION_LEARNING_RATE,
            lr_schedule="constant",
            validate_every=10**9,
            seed=seed,
        ),
    )


def adapt_to_scan(
    generator: MISRGenerator,
    config: Config,
    volume: Volume,
    *,
    steps: int,
    device: torch.device,
    seed: int = 0,
    seconds: float | None = None,
    thickness_ratio: float | None = None,
    progress: bool = False,
) -> tuple[MISRGenerator, int]:
    """Fine-tune a copy of `generator` on `volume`'s in-plane slices.

    Args:
        generator: trained generator (left unchanged).
        config: its config (model sizes, patch sizes).
        volume: the grey anisotropic scan to be reconstructed.
        steps: optimisation steps (0: return the generator as it is).
        device: torch device.
        seed: seed of the patch sampling.
        seconds: optional wall-clock upper bound on the fit.
        thickness_ratio: the scan's slice thickness / slice spacing, if known (below 1: a gap);
            default: the range the model was trained with.
        progress: show a progress bar.

    Returns:
        (the adapted generator in eval mode, the number of steps run).
    """
    if steps <= 0:
        return generator.eval(), 0
    adapt_config = adaptation_config(config, steps, seed, thickness_ratio)
    sampler = PairSampler(
        sources_self_supervised(volume, "scan"), adapt_config.data, generator.neighbours
    )
    trainer = Trainer(adapt_config, sampler, device, validation=[])
    trainer.generator.load_state_dict(generator.state_dict())
    start = time.perf_counter()
    deadline = None if seconds is None else start + seconds
    trainer.fit(progress=progress, deadline=deadline, description="adapting to the scan")
    logger.info(
        "adapted to the scan: %d steps in %.1f s", trainer.step, time.perf_counter() - start
    )
    return trainer.generator.eval(), trainer.step
