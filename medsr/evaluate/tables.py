"""Score tables: the mean row per method, ``metrics.csv`` / ``metrics.json``, score formatting."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from medsr.evaluate.simulate import SCORE_NAMES


def mean_rows(rows: list[dict]) -> list[dict]:
    """One 'mean' row per method over the volumes (inf PSNR stays inf)."""
    means = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        row = {"volume": "mean", "method": method}
        for key in (*SCORE_NAMES, "seconds"):
            row[key] = float(np.mean([r[key] for r in mine]))
        means.append(row)
    return means


def _json_value(value):
    if isinstance(value, float) and math.isinf(value):
        return "inf"  # JSON has no infinity; the report says so in words too
    return value


def write_tables(rows: list[dict], folder: Path) -> None:
    """metrics.csv and metrics.json: per-volume rows then per-method means."""
    all_rows = rows + (mean_rows(rows) if len({r["volume"] for r in rows}) > 1 else [])
    columns = list(dict.fromkeys(k for r in all_rows for k in r))
    with (folder / "metrics.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(all_rows)
    data = [{k: _json_value(v) for k, v in r.items()} for r in all_rows]
    (folder / "metrics.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def format_score(name: str, value: float) -> str:
    if math.isinf(value):
        return "inf (identical)"
    return f"{value:.2f}" if name == "psnr" else f"{value:.4f}"
