"""Building blocks shared by the networks."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from medsr.baselines import interpolation_matrix

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


def conv_layer(in_channels: int, out_channels: int, spatial_dims: int) -> nn.Module:
    """3x3(x3) convolution with 'same' padding for 2D or 3D inputs."""
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return _CONV[spatial_dims](in_channels, out_channels, kernel_size=3, padding=1)


class ResidualBlock(nn.Module):
    """conv-ReLU-conv with an identity skip and no batch norm (EDSR, Lim et al. CVPRW 2017).

    Batch norm is left out because it normalises away the absolute intensity and contrast that
    super-resolution must keep, and it costs memory and time.
    """

    def __init__(self, num_features: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_layer(num_features, num_features, spatial_dims),
            nn.ReLU(inplace=True),
            conv_layer(num_features, num_features, spatial_dims),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@lru_cache(maxsize=64)
def _bspline_matrix(count: int, scale: int) -> np.ndarray:
    # (count * scale, count): samples -> the thin slices of the slab convention
    positions = (np.arange(count * scale) + 0.5) / scale - 0.5
    return interpolation_matrix(count, positions).astype(np.float32)


def bspline_upsample_last_axis(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Cubic B-spline upsampling of the last axis by an integer `scale` (slab convention).

    Args:
        x: tensor (..., n).

    Returns:
        Tensor (..., n * scale): slab `i` divided into `scale` thin slices, the same values as
        `medsr.baselines` gives on that grid.
    """
    matrix = torch.from_numpy(_bspline_matrix(int(x.shape[-1]), int(scale)))
    return x @ matrix.to(device=x.device, dtype=x.dtype).T


def shuffle_last_axis(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Sub-pixel shuffle along the last axis: (N, scale, ..., n) -> (N, 1, ..., n * scale).

    Channel `j` at position `i` becomes output position ``i * scale + j`` (ESPCN, Shi et al.
    CVPR 2016, along one axis only).
    """
    moved = x.movedim(1, -1)  # (N, ..., n, scale)
    return moved.reshape(*moved.shape[:-2], moved.shape[-2] * scale).unsqueeze(1)
