"""SMORE's network (Zhao et al. 2021), the self-supervised ablation baseline: an EDSR-style net on
one thick slice's B-spline upsampling (fitted by `medsr.train.smore.fit_smore`)."""

from __future__ import annotations

import torch
from torch import nn

from medsr.nets.blocks import bspline_sample_last_axis


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
