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


@lru_cache(maxsize=64)
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


def gather_layout(x: torch.Tensor) -> torch.Tensor:
    """`x` (..., W, n) with its memory laid out as (..., n, W): the same values and shape, but
    `gather_last_axis` then reads whole contiguous rows of W instead of single elements.

    Call it once on a tensor that is gathered from many times (the decoder's projections)."""
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


def gather_last_axis(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[..., index]`` for a 1D index tensor: (..., W, n) -> (..., W, M), values equal.

    `index_select` along the innermost axis copies one element at a time and was the largest
    cost of the decoder on CPU; along the next axis it copies rows of W. So the samples are
    gathered as rows of the (..., n, W) layout: `x` as it is if it already has that layout
    (`gather_layout`), otherwise only the span of samples that `index` reaches, transposed
    (a chunk of output positions reaches a few samples of n). The result is a view in the
    (..., M, W) layout; elementwise ops keep it.
    """
    index = index.to(x.device)
    if x.dim() < 2 or index.numel() == 0:
        return x.index_select(-1, index)
    if x.stride(-2) != 1:  # not in the gather layout: lay out the reached span only
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= x.shape[-1]:
            return x.index_select(-1, index)  # its IndexError, as for any bad index
        x = gather_layout(x[..., low : high + 1])
        index = index - low
    return x.transpose(-1, -2).index_select(-2, index).transpose(-1, -2)
