"""Adapting a trained generator to one scan within a time budget (self-supervised, source 2).

The scan's own in-plane slices are degraded to its thick-slice spacing along each in-plane axis
and the generator is fine-tuned with the pixel loss to undo that, starting from trained weights
(SMORE/ECLARE idea, warm-started). Only the pixel loss is used: it is the fastest signal in a
short budget, and the perceptual/adversarial character comes from the pre-trained weights.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch

from medsr.config import Config
from medsr.data import PairSampler, stacks_self_supervised
from medsr.io import Volume
from medsr.models import MISRGenerator
from medsr.training import Trainer

logger = logging.getLogger(__name__)

#: learning rate of the fine-tuning (constant: the number of steps is set by the clock)
ADAPTATION_LEARNING_RATE = 2e-4


def adapt_to_scan(
    generator: MISRGenerator,
    config: Config,
    volume: Volume,
    *,
    scale: int,
    seconds: float,
    device: torch.device,
    progress: bool = False,
) -> MISRGenerator:
    """Fine-tune a copy of `generator` on `volume`'s in-plane slices for `seconds`.

    Args:
        generator: trained generator (left unchanged).
        config: its config (model sizes, patch sizes, seed).
        volume: the grey anisotropic scan to be reconstructed.
        scale: integer network factor inference will use.
        seconds: wall-clock budget for fitting.
        device: torch device.
        progress: show a progress bar.

    Returns:
        The adapted generator, in eval mode.
    """
    adapt_config = dataclasses.replace(
        config,
        loss=dataclasses.replace(config.loss, perceptual_weight=0.0, adversarial_weight=0.0),
        data=dataclasses.replace(config.data, self_supervised=True, validation_fraction=0.0),
        train=dataclasses.replace(
            config.train,
            steps=10**9,
            warmup_steps=0,
            learning_rate=ADAPTATION_LEARNING_RATE,
            lr_schedule="constant",
            validate_every=10**9,
        ),
    )
    sampler = PairSampler(
        stacks_self_supervised(volume, "scan", scale=scale), adapt_config.data, generator.neighbours
    )
    torch.manual_seed(config.train.seed)
    trainer = Trainer(adapt_config, sampler, device)
    trainer.generator.load_state_dict(generator.state_dict())
    start = time.perf_counter()
    trainer.fit(progress=progress, deadline=start + seconds)
    logger.info(
        "adapted to the scan: %d steps in %.1f s", trainer.step, time.perf_counter() - start
    )
    return trainer.generator.eval()
