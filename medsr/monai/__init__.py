"""medsr in MONAI pipelines: a reader for every format medsr reads, transforms for thick-slice
simulation and through-plane upsampling, and the training pairs as a dataset for a `DataLoader`.

Import from here: ``from medsr.monai import MedsrReader, ThroughPlaneUpsampled``.
"""

from medsr.monai.bundle import run_each
from medsr.monai.datalist import volume_datalist
from medsr.monai.dataset import TrainingPairs
from medsr.monai.reader import MedsrReader
from medsr.monai.transforms import (
    RandSimulateThickSlicesd,
    SimulateThickSlices,
    SimulateThickSlicesd,
    ThroughPlaneUpsample,
    ThroughPlaneUpsampled,
)
from medsr.monai.writer import MedsrWriter

__all__ = [
    "MedsrReader",
    "MedsrWriter",
    "RandSimulateThickSlicesd",
    "SimulateThickSlices",
    "SimulateThickSlicesd",
    "ThroughPlaneUpsample",
    "ThroughPlaneUpsampled",
    "TrainingPairs",
    "run_each",
    "volume_datalist",
]
