"""The arbitrary-scale multi-image super-resolution generator."""

from __future__ import annotations

import math

import torch
from torch import nn

from medsr.nets.blocks import (
    ResidualBlock,
    bspline_sample_last_axis,
    conv_layer,
    gather_last_axis,
    gather_layout,
)


class MISRGenerator(nn.Module):
    """Multi-image SR generator with an arbitrary-scale output along the thick (last) axis.

    An encoder reads k neighbouring low-resolution planes that contain the thick axis (after Sood
    et al., MedIA 2021: multi-image SR of through-plane planes) plus a channel carrying the
    log-factor, and computes features at the low resolution. A local implicit decoder restricted
    to one axis (in the spirit of Meta-SR, Hu et al. CVPR 2019; LIIF, Chen et al. CVPR 2021;
    ArSSR, Wu et al. JBHI 2022) then predicts, for every requested output position, a residual
    over the exact cubic B-spline value there, from the features of the two low-resolution
    samples around the position, the position's offset from the first of them and the factor.

    The decoder's first layer is linear in the features, so it runs at the low resolution (two
    1x1 projections); only a two-layer MLP of `hidden` channels runs per output sample. Its last
    layer starts at zero: an untrained generator *is* cubic B-spline interpolation.

    Args:
        neighbours: k, number of input planes (odd).
        num_features: encoder feature channels.
        num_blocks: encoder residual blocks (no batch norm).
        hidden: decoder channels per output sample.
        spatial_dims: 2 for planes (N, k, W, n), 3 for slabs (N, k, D, W, n).
    """

    def __init__(
        self,
        neighbours: int = 3,
        num_features: int = 32,
        num_blocks: int = 4,
        hidden: int = 32,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if neighbours < 1 or neighbours % 2 == 0:
            raise ValueError(f"neighbours must be odd and >= 1, got {neighbours}")
        if num_features < 1 or hidden < 1 or num_blocks < 0:
            raise ValueError(
                f"bad sizes: features {num_features}, hidden {hidden}, blocks {num_blocks}"
            )
        self.neighbours = neighbours
        self.head = conv_layer(neighbours + 1, num_features, spatial_dims)
        blocks = [ResidualBlock(num_features, spatial_dims) for _ in range(num_blocks)]
        self.body = nn.Sequential(*blocks, conv_layer(num_features, num_features, spatial_dims))
        pointwise = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        # features of the samples left and right of a query, projected at the low resolution
        self.project = pointwise(num_features, 2 * hidden, kernel_size=1)
        self.query = nn.Linear(2, hidden)  # offset and log-factor of the query
        self.decode = nn.Sequential(
            nn.ReLU(inplace=True),
            pointwise(hidden, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            pointwise(hidden, 1, kernel_size=1),
        )
        nn.init.zeros_(self.decode[-1].weight)
        nn.init.zeros_(self.decode[-1].bias)

    def forward(self, lr: torch.Tensor, positions: torch.Tensor, factor: float) -> torch.Tensor:
        """Upsample the centre plane of `lr` along its last axis.

        Args:
            lr: (N, k, ..., n) low-resolution planes, intensities about [0, 1].
            positions: (M,) output positions as continuous indices along the last axis of `lr`
                (sample `i` spans ``i - 0.5 .. i + 0.5``; the slab convention).
            factor: low-resolution spacing / output spacing (> 1).

        Returns:
            (N, 1, ..., M): the centre plane at `positions`.
        """
        return self.predict_at(self.encode(lr, factor), positions)

    def encode(self, lr: torch.Tensor, factor: float) -> tuple:
        """The low-resolution part: (left and right projections, centre plane, log-factor).
        Split from `predict_at` so that large outputs can be decoded in chunks of positions.
        The projections are laid out once for the decoder's gather (`gather_layout`): the same
        values, read as whole rows by every chunk."""
        log_factor = math.log(max(float(factor), 1.0))
        code = torch.full_like(lr[:, :1], log_factor)
        features = self.head(torch.cat([lr, code], dim=1))
        features = features + self.body(features)
        left_proj, right_proj = map(gather_layout, self.project(features).chunk(2, dim=1))
        centre = lr[:, self.neighbours // 2 : self.neighbours // 2 + 1]
        return left_proj, right_proj, centre, log_factor

    def predict_at(self, encoded: tuple, positions: torch.Tensor) -> torch.Tensor:
        """The plane at `positions` from `encode`'s output: B-spline value + decoded residual.

        The B-spline base is computed in float32 (or the input's wider type) outside any
        autocast region, so it stays exact under mixed precision (fp16 would cost up to 1e-3 of
        the intensity range); only the residual runs in the autocast type, and it is added to the
        base in the base's type.
        """
        left_proj, right_proj, centre, log_factor = encoded
        count = centre.shape[-1]
        positions = positions.to(device=centre.device, dtype=centre.dtype)
        left = torch.clamp(torch.floor(positions), 0, max(count - 2, 0)).long()
        right = torch.clamp(left + 1, max=count - 1)
        offset = positions - left.to(positions.dtype)
        query = torch.stack([offset, torch.full_like(offset, log_factor)], dim=1)
        query = self.query(query).T  # (hidden, M)
        query = query.reshape(1, -1, *([1] * (centre.dim() - 3)), query.shape[-1])
        hidden = gather_last_axis(left_proj, left) + gather_last_axis(right_proj, right)
        residual = self.decode(hidden + query.to(hidden.dtype))
        return exact_bspline(centre, positions) + residual.to(_exact_dtype(centre.dtype))


def _exact_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype == torch.float64 else torch.float32


def exact_bspline(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`bspline_sample_last_axis` in float32 (float64 stays) with autocast off, whatever the
    caller's mixed precision: the base the generator's residual is added to."""
    dtype = _exact_dtype(x.dtype)
    with torch.autocast(x.device.type, enabled=False):
        return bspline_sample_last_axis(x.to(dtype), positions.to(dtype))
