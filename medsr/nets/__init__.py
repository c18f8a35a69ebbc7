"""Networks: architecture only (`forward`); losses and optimisers live elsewhere."""

from medsr.nets.discriminator import PlaneDiscriminator
from medsr.nets.generator import MISRGenerator

__all__ = ["MISRGenerator", "PlaneDiscriminator"]
