"""What the MONAI bundle's ``run`` calls: each volume read, upsampled and written in turn."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)


def run_each(dataset: Iterable[Any], transform: Callable[[Any], Any]) -> int:
    """Apply `transform` (upsample, then write) to every item of `dataset`, one at a time.

    Nothing is kept: each output is written by `transform` and released before the next item is
    read, so memory stays that of one volume however many the folder holds (a list of outputs,
    as a comprehension in the config would build, grows with every volume).

    Returns:
        The number of items done.
    """
    count = 0
    for item in dataset:
        transform(item)
        count += 1
        logger.info("volume %d done", count)
    return count
