"""What produced an output: a JSON record beside it and a short line in its header.

The record holds no clock times, so the same command on the same input, on the same machine
(same CPU/GPU and torch thread count), writes the same record (and, with a fixed number of fit
steps, the same volume). The record names the device, CPU and thread count for that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from medsr.geometry import OutputGrid
from medsr.io import Volume
from medsr.io.atomic import write_text_atomically

#: digests known for (resolved path, size, mtime) while a `known_sha256` block runs
_KNOWN: dict[tuple[str, int, int], str] = {}


def input_stat(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(size in bytes, mtime in ns) of a file; of a folder: the total size of its files and the
    newest mtime of its files and folders (adding, removing or renaming a file changes its
    folder's). What a rerun compares before it decides to hash."""
    path = Path(path)
    if not path.is_dir():
        info = path.stat()
        return info.st_size, info.st_mtime_ns
    size, newest = 0, path.stat().st_mtime_ns
    for item in path.rglob("*"):
        info = item.stat()
        newest = max(newest, info.st_mtime_ns)
        if item.is_file():
            size += info.st_size
    return size, newest


def sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (as ``sha256sum`` prints it); of a folder (DICOM series,
    section folder): of its files' relative names and contents, in sorted order."""
    path = Path(path)
    known = _KNOWN.get((str(path.resolve()), *input_stat(path))) if _KNOWN else None
    if known is not None:
        return known
    digest = hashlib.sha256()
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


@contextmanager
def known_sha256(
    path: str | os.PathLike[str], digest: str, stat: tuple[int, int] | None = None
) -> Iterator[None]:
    """Within the block, `sha256(path)` is `digest` without reading the file again, as long as
    its `input_stat` is still `stat` (default: as it is now): an input is hashed once per run,
    even where the hash is computed in another process."""
    key = (str(Path(path).resolve()), *(stat or input_stat(path)))
    _KNOWN[key] = digest
    try:
        yield
    finally:
        _KNOWN.pop(key, None)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_record(device: str) -> dict:
    """What the result depends on beyond the command: the device (and GPU model), the CPU model
    and torch's thread count (floating-point sums are ordered by both)."""
    import torch

    record = {"device": device, "cpu": cpu_model(), "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return record


def provenance_record(volume: Volume, grid: OutputGrid, method: str, details: dict) -> dict:
    """What produced an output: medsr and torch versions, the machine (`machine_record`),
    method, factor, output grid, and the learned method's model, its sha256, fit steps and seed
    (a 4D series adds ``fit_mode``: ``"mean"``, ``"frame N"`` or ``"per-frame"``,
    `medsr.upsample.series4d`). No clock times, so that the same command on the same machine
    writes the same record."""
    import torch

    from medsr._version import __version__

    return {
        "medsr_version": __version__,
        "torch_version": torch.__version__,
        **machine_record(str(details.get("device", "cpu"))),
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
    if "fit_mode" in record:  # a 4D series: "mean", "frame N" or "per-frame"
        text += f" fit:{record['fit_mode'].replace(' ', '')}"
    return text


def provenance_path(output: str | os.PathLike[str]) -> Path:
    """Where the record of `output` goes: ``<output>.json`` beside it (of a DICOM series folder
    ``<folder>.json``, the name of a BIDS sidecar: checked before any work, never replaced
    without --overwrite)."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def write_provenance(record: dict, output: Path) -> Path:
    """``<output>.json`` beside the output (`provenance_path`), written atomically."""
    sidecar = provenance_path(output)
    return write_text_atomically(sidecar, json.dumps(record, indent=2, sort_keys=True) + "\n")
