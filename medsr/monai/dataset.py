"""Training pairs as a MONAI dataset, so that a `DataLoader` with workers draws them."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from monai.data import IterableDataset
from torch.utils.data import get_worker_info

from medsr.data import Batch, PairSampler


class TrainingPairs(IterableDataset):
    """An endless stream of training batches drawn by a `PairSampler`, one stream per worker.

    An `IterableDataset` rather than a map-style dataset: a batch is drawn (source, factor,
    degradation, patches), not looked up, and one batch shares one factor, so the sampler, not the
    `DataLoader`, assembles it (use ``batch_size=None``). Each worker draws from its own
    generator, seeded from (seed, rank, worker, start step), so a run is reproducible for a given
    number of workers, and a resumed run continues with fresh, seeded streams. The sampler holds
    views of one normalised copy of each volume; forked workers share those pages.

    Args:
        sampler: the run's pair sampler.
        seed: the run's seed.
        rank: process rank (distributed training).
        start_step: the step the stream starts at (a resumed run's step).
    """

    def __init__(self, sampler: PairSampler, seed: int, rank: int = 0, start_step: int = 0):
        super().__init__(data=[])
        self.sampler, self.seed, self.rank, self.start_step = sampler, seed, rank, start_step

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        rng = np.random.default_rng([self.seed, self.rank, worker, self.start_step])
        while True:
            yield self.sampler.sample(rng)
