"""The discriminator: MONAI's PatchGAN behind a small interface."""

from __future__ import annotations

import torch
from torch import nn


class PlaneDiscriminator(nn.Module):
    """Patch discriminator (PatchGAN, Isola et al. CVPR 2017) returning a map of real/fake logits.

    Instance norm instead of batch norm: batches are small and mix planes of different scans.

    Args:
        channels: channels of the first layer (doubled at each of `num_layers` layers).
        num_layers: strided downsampling layers.
        spatial_dims: 2 or 3.
    """

    def __init__(self, channels: int = 32, num_layers: int = 3, spatial_dims: int = 2) -> None:
        # imported here: MONAI (with matplotlib and tifffile) adds about 130 MiB to every process
        # that imports medsr.nets, and only training builds a discriminator
        from monai.networks.nets import PatchDiscriminator

        super().__init__()
        self.network = PatchDiscriminator(
            spatial_dims=spatial_dims,
            channels=channels,
            in_channels=1,
            out_channels=1,
            num_layers_d=num_layers,
            norm="INSTANCE",
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1, h, w) for an image batch (N, 1, H, W)."""
        return self.network(image)[-1]
