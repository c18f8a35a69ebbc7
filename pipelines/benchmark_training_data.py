"""Training data path: memory held for one 256^3 volume, and throughput with DataLoader workers.

    python pipelines/benchmark_training_data.py [--steps 300]

Memory: the process's resident set (RSS, /proc/self/status) after the sampler is built, minus
before, for one 256^3 float32 volume (64 MiB), next to the float32 size. Throughput: training
steps per second of the default model and data configuration (MSE only; the pairs' cost does not
depend on the loss) with the pairs drawn in the training process (workers 0) and by 2 DataLoader
workers, each over the same number of steps after a warm-up, on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
import torch

from medsr.config import Config
from medsr.io import Volume
from medsr.train.pairs import build_sampler
from medsr.train.trainer import Trainer


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    config = Config()
    config = dataclasses.replace(
        config,
        loss=dataclasses.replace(config.loss, perceptual_weight=0.0, adversarial_weight=0.0),
        data=dataclasses.replace(config.data, validation_fraction=0.0),
    )
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4000, (256, 256, 256), dtype=np.int16)  # like a scanner's int16
    before = rss_mib()
    sampler = build_sampler([(Volume(raw, np.eye(4)), "synthetic")], config.data, 3)
    held = rss_mib() - before
    print(f"sampler for one 256^3 volume: +{held:.0f} MiB RSS (float32 volume: 64 MiB)")
    print(f"sources: {len(sampler.sources)}, all views: "
          f"{all(s.array.base is not None for s in sampler.sources)}")  # fmt: skip
    for workers in (0, 2):
        run = dataclasses.replace(
            config,
            data=dataclasses.replace(config.data, workers=workers),
            train=dataclasses.replace(config.train, steps=args.steps + 50, validate_every=10**9),
        )
        trainer = Trainer(run, sampler, torch.device("cpu"), validation=[])
        trainer.fit(until_step=50)  # warm-up (and worker start-up)
        start = time.perf_counter()
        trainer.fit(until_step=args.steps + 50)
        rate = args.steps / (time.perf_counter() - start)
        print(f"workers {workers}: {rate:.1f} steps/s over {args.steps} steps "
              f"({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")  # fmt: skip


if __name__ == "__main__":
    main()
