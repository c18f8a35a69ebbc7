"""Building blocks shared by the networks."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from medsr.interp import interpolation_matrix

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


@lru_cache(maxsize=256)  # a self-ensemble's mirrored positions double the keys of a volume
def _bspline_matrix(count: int, positions: tuple[float, ...]) -> np.ndarray:
    # (M, count): samples -> values at `positions`, exactly `medsr.interp`' cubic B-spline
    return interpolation_matrix(count, np.asarray(positions)).astype(np.float32)


def bspline_sample_last_axis(x: torch.Tensor, positions: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Cubic B-spline interpolation of the last axis at continuous `positions`.

    Args:
        x: tensor (..., n).
        positions: (M,) continuous indices along the last axis (sample `i` at index `i`).

    Returns:
        Tensor (..., M): the values `medsr.interp` gives at those positions.
    """
    if isinstance(positions, torch.Tensor):
        positions = positions.detach().cpu().numpy()
    key = tuple(np.round(np.asarray(positions, np.float64), 9).tolist())
    matrix = torch.from_numpy(_bspline_matrix(int(x.shape[-1]), key))
    return x @ matrix.to(device=x.device, dtype=x.dtype).T
