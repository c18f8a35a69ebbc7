"""The training run's ``metrics.csv``: its columns and the writer that keeps it resumable."""

from __future__ import annotations

import csv
from pathlib import Path

METRIC_COLUMNS = [
    "step",
    "seconds",
    "factor",
    "loss_g",
    "loss_pixel",
    "loss_perceptual",
    "loss_adversarial",
    "loss_d",
    "val_psnr",
    "val_psnr_bspline",
    "val_ssim",
    "val_ssim_bspline",
]


class MetricsLog:
    """``metrics.csv``: one row per step; on resume, rows after the resumed step are dropped."""

    def __init__(self, path: Path | None, resume_step: int) -> None:
        self.path = path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if path.exists():
            with path.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        if self.path is None:
            return
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, METRIC_COLUMNS).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
