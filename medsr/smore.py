"""The plain SMORE-style baseline (ablation): a single-plane CNN on cubic pre-upsampled planes,
fitted with an L1 loss to the scan's own in-plane slices (after Zhao et al., SMORE, IEEE TMI 2021,
reduced to the plain network the benchmarks compare with)."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from medsr.config import DataConfig
from medsr.data import PairSampler, sources_self_supervised
from medsr.io import Volume
from medsr.models.blocks import bspline_sample_last_axis

logger = logging.getLogger(__name__)


class SmoreNet(nn.Module):
    """8 convolutions of 32 channels (ReLU between) predicting a residual over the cubic
    B-spline pre-upsampled plane (on the output grid); the same call signature as
    `MISRGenerator` (k = 1)."""

    neighbours = 1

    def __init__(self, num_features: int = 32, num_layers: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(num_layers):
            in_channels = 1 if index == 0 else num_features
            out_channels = 1 if index == num_layers - 1 else num_features
            layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
            if index < num_layers - 1:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)

    def forward(self, lr: torch.Tensor, positions: torch.Tensor, factor: float) -> torch.Tensor:
        upsampled = bspline_sample_last_axis(lr, positions)
        return upsampled + self.body(upsampled)


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
