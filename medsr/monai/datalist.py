"""Data lists for MONAI datasets: every volume medsr reads in a folder."""

from __future__ import annotations

import os
from pathlib import Path

from medsr.io import VOLUME_SUFFIXES


def volume_datalist(folder: str | os.PathLike[str], key: str = "image") -> list[dict[str, str]]:
    """``[{key: path}]`` for each volume file (any medsr suffix) and each subfolder (a DICOM
    series or a section folder) directly in `folder`, sorted by name; medsr's own outputs and
    their sidecars are not inputs."""
    items = []
    for path in sorted(Path(folder).iterdir()):
        name = path.name.lower()
        if name.startswith(".") or name.endswith(".json"):
            continue
        if path.is_dir() or name.endswith(VOLUME_SUFFIXES):
            items.append({key: str(path)})
    return items
