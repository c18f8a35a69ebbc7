"""The multi-image super-resolution generator."""

from __future__ import annotations

import torch
from torch import nn

from medsr.models.blocks import (
    ResidualBlock,
    bspline_upsample_last_axis,
    conv_layer,
    shuffle_last_axis,
)


class MISRGenerator(nn.Module):
    """Multi-image SR generator for through-plane planes (after Sood et al., MedIA 2021).

    Input: k neighbouring low-resolution planes that contain the thick axis (last axis). Output:
    the centre plane with the thick axis upsampled by an integer factor. The network runs at the
    low resolution (cost per output voxel divided by the factor) and predicts, through a
    per-factor sub-pixel head, a residual over the exact cubic B-spline upsampling of the centre
    plane. Heads start at zero, so an untrained generator *is* the B-spline baseline. Residual
    blocks without batch norm (EDSR lineage). Non-integer factors are the inference driver's
    job: the next integer factor, then an exact resample onto the target grid.

    Args:
        neighbours: k, number of input planes (odd).
        num_features: feature channels.
        num_blocks: residual blocks.
        scales: integer factors with an output head.
        spatial_dims: 2 for planes (N, k, W, n), 3 for slabs (N, k, D, W, n).
    """

    def __init__(
        self,
        neighbours: int = 3,
        num_features: int = 32,
        num_blocks: int = 4,
        scales: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8),
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if neighbours < 1 or neighbours % 2 == 0:
            raise ValueError(f"neighbours must be odd and >= 1, got {neighbours}")
        if not scales or min(scales) < 1:
            raise ValueError(f"scales must be integers >= 1, got {scales}")
        self.neighbours = neighbours
        self.scales = tuple(int(s) for s in scales)
        self.head = conv_layer(neighbours, num_features, spatial_dims)
        blocks = [ResidualBlock(num_features, spatial_dims) for _ in range(num_blocks)]
        self.body = nn.Sequential(*blocks, conv_layer(num_features, num_features, spatial_dims))
        self.tails = nn.ModuleDict(
            {str(s): conv_layer(num_features, s, spatial_dims) for s in self.scales}
        )
        for tail in self.tails.values():
            nn.init.zeros_(tail.weight)
            nn.init.zeros_(tail.bias)

    def forward(self, lr: torch.Tensor, scale: int) -> torch.Tensor:
        """Upsample the centre plane of `lr` (N, k, ..., n) to (N, 1, ..., n * scale)."""
        if str(scale) not in self.tails:
            raise ValueError(f"no output head for scale {scale}; heads: {self.scales}")
        features = self.head(lr)
        features = features + self.body(features)
        residual = shuffle_last_axis(self.tails[str(scale)](features), scale)
        centre = lr[:, self.neighbours // 2 : self.neighbours // 2 + 1]
        return bspline_upsample_last_axis(centre, scale) + residual
