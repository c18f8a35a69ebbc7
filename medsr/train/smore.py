"""The plain SMORE-style baseline (ablation): a single-plane CNN on cubic pre-upsampled planes,
fitted with an L1 loss to the scan's own in-plane slices (after Zhao et al., SMORE, IEEE TMI 2021,
reduced to the plain network the benchmarks compare with)."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from medsr.config import DataConfig
from medsr.io import Volume
from medsr.nets.smore import SmoreNet
from medsr.train.pairs import PairSampler, sources_self_supervised

logger = logging.getLogger(__name__)


def fit_smore(
    volume: Volume,
    *,
    seconds: float,
    device: torch.device,
    seed: int = 0,
    learning_rate: float = 1e-3,
) -> SmoreNet:
    """Fit a fresh `SmoreNet` to `volume`'s in-plane slices for `seconds` (L1, Adam)."""
    rng = np.random.default_rng(seed)
    config = DataConfig(
        self_supervised=True,
        validation_fraction=0.0,
        noise_max=0.0,
        blur_max=0.0,
        gamma_range=(1.0, 1.0),
        gain_range=(1.0, 1.0),
    )
    sampler = PairSampler(sources_self_supervised(volume, "scan"), config, 1)
    with torch.random.fork_rng(devices=[]):  # initial weights from `seed`, global RNG kept
        torch.manual_seed(seed)
        network = SmoreNet().to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate)
    deadline, steps = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline:
        lr, hr, positions, factor = sampler.sample(rng)
        optimiser.zero_grad(set_to_none=True)
        loss = F.l1_loss(network(lr.to(device), positions, factor), hr.to(device))
        loss.backward()
        optimiser.step()
        steps += 1
    logger.info("SMORE baseline: %d steps in %.0f s", steps, seconds)
    return network.eval()
