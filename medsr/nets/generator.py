"""The arbitrary-scale multi-image super-resolution generator."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from medsr.nets.blocks import ResidualBlock, bspline_sample_last_axis, conv_layer


class Encoded(NamedTuple):
    """The low-resolution part of a forward pass (`MISRGenerator.encode`), decoded at any
    positions by `MISRGenerator.predict_at`. Feature maps are in the decoder's layout
    (`decoder_layout`): (N, n, ..., W, C), the low-resolution samples along dim 1 and the
    channels last."""

    left: torch.Tensor  # decoder projections of the sample left of a query
    right: torch.Tensor  # ... and right of it
    tail: torch.Tensor | None  # the offset tail's knot values (N, n, ..., W, J), or None
    centre: torch.Tensor  # (N, 1, ..., n): the centre low-resolution plane
    log_factor: float

    def float(self) -> Encoded:
        """The feature maps in float32 (after a bf16 encoder); the centre plane as it is."""
        tail = None if self.tail is None else self.tail.float()
        return self._replace(left=self.left.float(), right=self.right.float(), tail=tail)


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
    1x1 projections); only a two-layer MLP of `hidden` channels runs per output sample.

    Beside it, the *offset tail* gives the decoder spatial context and position-dependent
    filters: a 3x3 convolution of the features predicts, at every low-resolution sample, the
    residual at `tail_knots` offsets spread evenly over the sample's slab (-0.5 .. +0.5), and a
    query takes the linear interpolation of these knots at its offset from the nearest sample.
    This is Meta-SR's weight prediction with the weights linear in a fixed (hat) basis of the
    offset: at an integer factor up to ``tail_knots - 1`` it spans the first version's
    factor-specific sub-pixel 3x3 head (`tail_knots` = 9: every factor up to 8), while one set of
    weights serves every factor, and being linear in its weights it adapts to a scan as fast as
    that head did. Both last layers start at zero: an untrained generator *is* cubic B-spline
    interpolation.

    Args:
        neighbours: k, number of input planes (odd).
        num_features: encoder feature channels.
        num_blocks: encoder residual blocks (no batch norm).
        hidden: decoder channels per output sample.
        tail_knots: knots of the offset tail (0: no tail; else >= 2).
        spatial_dims: 2 for planes (N, k, W, n), 3 for slabs (N, k, D, W, n).
    """

    def __init__(
        self,
        neighbours: int = 3,
        num_features: int = 32,
        num_blocks: int = 4,
        hidden: int = 32,
        tail_knots: int = 9,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if neighbours < 1 or neighbours % 2 == 0:
            raise ValueError(f"neighbours must be odd and >= 1, got {neighbours}")
        if num_features < 1 or hidden < 1 or num_blocks < 0:
            raise ValueError(
                f"bad sizes: features {num_features}, hidden {hidden}, blocks {num_blocks}"
            )
        if tail_knots == 1 or tail_knots < 0:
            raise ValueError(f"tail_knots must be 0 or >= 2, got {tail_knots}")
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
        self.tail = conv_layer(num_features, tail_knots, spatial_dims) if tail_knots else None
        if self.tail is not None:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

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

    def encode(self, lr: torch.Tensor, factor: float) -> Encoded:
        """The low-resolution part (`Encoded`). Split from `predict_at` so that large outputs
        can be decoded in chunks of positions. The feature maps are laid out once for the
        decoder (`decoder_layout`): every chunk gathers whole rows of them.

        `lr` is laid out as the encoder's weights are (channels_last after
        ``generator.to(memory_format=torch.channels_last)``, which the CPU's convolutions run
        faster). Under CPU autocast (bf16) only the convolutions run in bf16: the maps come back
        in float32, and `predict_at` decodes in float32 on the CPU."""
        if lr.dim() == 4 and self.head.weight.is_contiguous(memory_format=torch.channels_last):
            lr = lr.contiguous(memory_format=torch.channels_last)
        log_factor = math.log(max(float(factor), 1.0))
        code = torch.full_like(lr[:, :1], log_factor)
        features = self.head(torch.cat([lr, code], dim=1))
        features = features + self.body(features)
        left_proj, right_proj = map(decoder_layout, self.project(features).chunk(2, dim=1))
        tail = None if self.tail is None else decoder_layout(self.tail(features))
        centre = lr[:, self.neighbours // 2 : self.neighbours // 2 + 1]
        encoded = Encoded(left_proj, right_proj, tail, centre, log_factor)
        return encoded.float() if _cpu_autocast(lr) else encoded

    def predict_at(self, encoded: Encoded, positions: torch.Tensor) -> torch.Tensor:
        """The plane at `positions` from `encode`'s output: B-spline value + decoded residual.

        The decoder works channels-last, (N, M, ..., W, C): a gather copies whole rows of W x C
        values, and its 1x1 layers are matrix products over the channels (`pointwise`): on
        the CPU about a third less time, forwards and backwards, than 1x1 convolutions of
        gathered (N, C, ..., W, M) maps (docs/benchmarks.md, "The decoder channels-last").

        The B-spline base is computed in float32 (or the input's wider type) outside any
        autocast region, so it stays exact under mixed precision (fp16 would cost up to 1e-3 of
        the intensity range); only the residual runs in the autocast type, and it is added to the
        base in the base's type. On the CPU the decoder runs in float32 even under autocast
        (`encode`): bf16 would cost the residual's precision and save little there.
        """
        if _cpu_autocast(encoded.centre):
            with torch.autocast("cpu", enabled=False):
                return self.predict_at(encoded.float(), positions)
        left_proj, right_proj, tail, centre, log_factor = encoded
        count = centre.shape[-1]
        positions = positions.to(device=centre.device, dtype=centre.dtype)
        left = torch.clamp(torch.floor(positions), 0, max(count - 2, 0)).long()
        right = torch.clamp(left + 1, max=count - 1)
        offset = positions - left.to(positions.dtype)
        query = self.query(torch.stack([offset, torch.full_like(offset, log_factor)], dim=1))
        query = query.reshape(1, len(positions), *([1] * (left_proj.dim() - 3)), -1)
        hidden = left_proj.index_select(1, left) + right_proj.index_select(1, right)
        hidden = torch.relu_(hidden + query.to(hidden.dtype))
        hidden = torch.relu_(pointwise(self.decode[1], hidden))
        residual = pointwise(self.decode[3], hidden)  # (N, M, ..., W, 1)
        if tail is not None:
            residual = residual + offset_tail(tail, positions).to(residual.dtype)
        residual = residual.movedim(1, -1).movedim(-2, 1)  # (N, 1, ..., W, M)
        return exact_bspline(centre, positions) + residual.to(_exact_dtype(centre.dtype))


def _cpu_autocast(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


def decoder_layout(x: torch.Tensor) -> torch.Tensor:
    """(N, C, ..., W, n) feature maps as the decoder reads them: (N, n, ..., W, C), contiguous,
    so that gathering samples along dim 1 copies whole rows."""
    return x.movedim(-1, 1).movedim(2, -1).contiguous()


def pointwise(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution `layer` applied to channels-last `x` (..., C_in) -> (..., C_out), as one
    matrix product (the weights keep the convolution's layout, as checkpoints store them)."""
    return F.linear(x, layer.weight.flatten(1), layer.bias)


def offset_tail(knots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The offset tail at `positions`: (N, n, ..., W, J) knot values -> (N, M, ..., W, 1).

    Knot j of sample i is the residual at ``i - 0.5 + j / (J - 1)``; a position takes the linear
    interpolation of its nearest sample's knots (hat weights of its offset from that sample)."""
    count, num_knots = knots.shape[1], knots.shape[-1]
    nearest = torch.clamp(torch.round(positions), 0, count - 1)
    offset = torch.clamp(positions - nearest, -0.5, 0.5)  # outside only beyond the edge slabs
    grid = torch.linspace(-0.5, 0.5, num_knots, device=positions.device, dtype=positions.dtype)
    weights = torch.clamp(1 - (offset[:, None] - grid[None]).abs() * (num_knots - 1), min=0)
    weights = weights.reshape(1, len(positions), *([1] * (knots.dim() - 3)), num_knots)
    gathered = knots.index_select(1, nearest.long())
    return (gathered * weights.to(knots.dtype)).sum(dim=-1, keepdim=True)


def _exact_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype == torch.float64 else torch.float32


def exact_bspline(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`bspline_sample_last_axis` in float32 (float64 stays) with autocast off, whatever the
    caller's mixed precision: the base the generator's residual is added to."""
    dtype = _exact_dtype(x.dtype)
    with torch.autocast(x.device.type, enabled=False):
        return bspline_sample_last_axis(x.to(dtype), positions.to(dtype))
