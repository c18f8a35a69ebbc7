"""What produced an output: a JSON record beside it and a short line in its header.

The record holds no clock times, so the same command on the same input writes the same record
(and, with a fixed number of fit steps, the same volume).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from medsr.geometry import OutputGrid
from medsr.io import Volume


def sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (as ``sha256sum`` prints it); of a folder (DICOM series,
    section folder): of its files' relative names and contents, in sorted order."""
    digest = hashlib.sha256()
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        files = [path]
    for item in files:
        if path.is_dir():
            digest.update(str(item.relative_to(path)).encode())
        with item.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def provenance_record(volume: Volume, grid: OutputGrid, method: str, details: dict) -> dict:
    """What produced an output: medsr and torch versions, method, factor, output grid, and the
    learned method's model, its sha256, fit steps and seed. No clock times, so that the same
    command writes the same record."""
    import torch

    from medsr import __version__

    return {
        "medsr_version": __version__,
        "torch_version": torch.__version__,
        "method": method,
        "factor": float(volume.spacing[grid.axis] / grid.spacing),
        "thick_axis": int(grid.axis),
        "input_shape": list(volume.spatial_shape),
        "input_spacing": [float(s) for s in volume.spacing],
        "output_shape": list(grid.shape),
        "output_spacing": float(grid.spacing),
        "unit": volume.unit,
        "output_affine": np.asarray(grid.affine).round(9).tolist(),
        **details,
    }


def provenance_description(record: dict) -> str:
    """The record in short, for the 80-byte NIfTI description."""
    text = f"medsr {record['medsr_version']} {record['method']} x{record['factor']:.3g}"
    if "model_sha256" in record:
        text += f" m{record['model_sha256'][:8]} s{record['fit_steps_run']} r{record['seed']}"
    return text


def write_provenance(record: dict, output: Path) -> Path:
    """``<output>.json`` beside the output, written atomically."""
    sidecar = output.with_name(output.name + ".json")
    temporary = sidecar.with_name(f".{sidecar.name}.tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, sidecar)
    return sidecar
