"""Losses of the SR-GAN: pixel (MSE, or L1), perceptual (VGG16 features),
adversarial (non-saturating).

No optimisers and no file I/O beyond loading the VGG weights that the caller points to.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from medsr.errors import MedsrError

#: the pixel term of the generator's loss, by `medsr.config.LossConfig.pixel_loss`
PIXEL_LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}

VGG_ENV = "MEDSR_VGG_WEIGHTS"
# torchvision's VGG16 `features`: numbers are conv output channels, "M" max pooling
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
#: index (in `features`) of the ReLU that ends each named layer
VGG_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def find_vgg_weights(path: str | os.PathLike[str] | None = None) -> Path:
    """Locate VGG16 feature weights: `path`, then $MEDSR_VGG_WEIGHTS, then torch's cache file.

    Raises:
        MedsrError: none found; the message says how to provide them or train without them.
    """
    candidates = [path, os.environ.get(VGG_ENV)]
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    candidates += [hub / "vgg16-397923af.pth", hub / "vgg16_imagenet_features.pth"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    if path:
        raise MedsrError(f"VGG16 weights not found at '{path}'")
    raise MedsrError(
        "the perceptual loss needs ImageNet VGG16 weights and none were found: give "
        f"--vgg-weights PATH or set ${VGG_ENV} (torchvision layout), or train without the "
        "perceptual loss with --set loss.perceptual_weight=0"
    )


class VGGFeatures(nn.Module):
    """VGG16 convolutional features up to `layer`, in torchvision's module layout (frozen).

    Args:
        layer: last layer kept, ``"relu1_2"``, ``"relu2_2"`` or ``"relu3_3"``.
        weights: a state dict of `torchvision.models.vgg16().features` (keys ``0.weight``...) or
            of the whole model (keys ``features.0.weight``...).
    """

    def __init__(self, layer: str = "relu2_2", weights: dict[str, torch.Tensor] | None = None):
        super().__init__()
        if layer not in VGG_LAYERS:
            raise ValueError(f"unknown VGG layer {layer!r}; use one of {list(VGG_LAYERS)}")
        modules: list[nn.Module] = []
        channels = 3
        for item in _VGG16:
            if item == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                channels = int(item)
        self.features = nn.Sequential(*modules[: VGG_LAYERS[layer] + 1])
        if weights is not None:
            weights = {k.removeprefix("features."): v for k, v in weights.items()}
            keep = {k: v for k, v in weights.items() if int(k.split(".")[0]) <= VGG_LAYERS[layer]}
            self.features.load_state_dict(keep)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        """Features of grey planes (N, 1, H, W) with intensities in about [0, 1]."""
        rgb = grey.expand(-1, 3, -1, -1)  # grey replicated to the three colour channels
        return self.features((rgb - self.mean) / self.std)


def load_vgg_features(path: str | os.PathLike[str] | None, layer: str) -> VGGFeatures:
    """Build `VGGFeatures` from the weights file found by `find_vgg_weights`."""
    weights_path = find_vgg_weights(path)
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        return VGGFeatures(layer, state)
    except (RuntimeError, KeyError, ValueError, OSError) as error:
        raise MedsrError(f"cannot load VGG16 weights from '{weights_path}': {error}") from error


class PerceptualLoss(nn.Module):
    """Relative distance between VGG16 features of prediction and target (Johnson et al.,
    ECCV 2016): ``mean((f(pred) - f(target))**2) / mean(f(target)**2)``.

    Dividing by the target's feature energy makes the loss scale-free (so `perceptual_weight`
    keeps its meaning across layers and intensity ranges) without normalising each position to
    unit length, which would turn the near-zero features of background into noise-driven unit
    vectors. 0 for identical inputs; it grows with blur.
    """

    def __init__(self, features: VGGFeatures) -> None:
        super().__init__()
        self.features = features

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target_features = self.features(target)
        energy = target_features.pow(2).mean().clamp_min(1e-8)
        return (self.features(pred) - target_features).pow(2).mean() / energy


class AdversarialLoss(nn.Module):
    """Non-saturating GAN loss on patch logits (Goodfellow et al. 2014; BCE as in MONAI's
    `PatchAdversarialLoss`).

    The generator minimises ``-log D(fake)`` (target "real"), the discriminator
    ``-log D(real) - log(1 - D(fake))``. Computed from logits in float32
    (`binary_cross_entropy_with_logits`): numerically stable, and allowed next to CUDA autocast,
    which refuses BCE on probabilities (MONAI's sigmoid + `BCELoss`). Callers pass logits cast to
    float32, outside the autocast region.
    """

    @staticmethod
    def _bce(logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        logits = logits.float()
        target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
        return F.binary_cross_entropy_with_logits(logits, target)

    def generator_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return self._bce(fake_logits, True)

    def discriminator_loss(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor
    ) -> torch.Tensor:
        return 0.5 * (self._bce(real_logits, True) + self._bce(fake_logits, False))
