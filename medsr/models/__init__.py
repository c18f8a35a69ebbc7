"""Networks: architecture only (`forward`); losses and optimisers live elsewhere."""

from medsr.models.discriminator import PlaneDiscriminator
from medsr.models.generator import MISRGenerator

__all__ = ["MISRGenerator", "PlaneDiscriminator"]
