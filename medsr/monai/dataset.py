"""Training pairs as a MONAI dataset, so that a `DataLoader` with workers draws them."""

from __future__ import annotations

from collections.abc import Iterator

from monai.data import IterableDataset

from medsr.train.pairs import Batch, PairSampler, draw_batches


class TrainingPairs(IterableDataset):
    """An endless stream of training batches drawn by a `PairSampler`, one stream per worker:
    `medsr.train.pairs.PairStream` (the trainer's stream, same batches) as a MONAI dataset.

    Use ``batch_size=None`` in the `DataLoader`: the sampler assembles each batch (one factor).

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
        return draw_batches(self.sampler, self.seed, self.rank, self.start_step)
