"""The one atomic-write helper: every file medsr writes appears complete or not at all.

Volumes (one file, or a file set such as MHD's header and data), DICOM series folders, provenance
sidecars, batch manifests, checkpoints, configs, reports, score tables, figures and alignment
transforms are all written through `write_atomically` (or its text and folder forms): the writer
fills a hidden temporary folder beside the destination, and the result is renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

#: prefix of the hidden staging folders (beside the output, so that the rename stays on one disk)
STAGING_PREFIX = ".medsr-tmp-"


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Run ``write(staged)``, which writes ``staged`` (a path of `path`'s name in a hidden
    temporary folder beside it) and any files beside that, then move all of them into place,
    the named file last: a reader never sees a partial output. The caller checks for an
    existing output first.
    """
    path = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=path.parent))
    try:
        write(staging / path.name)
        written = sorted(staging.iterdir(), key=lambda p: p.name == path.name)
        for item in written:  # the named file last: it is the one readers look for
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """`text` (UTF-8) at `path`, atomically."""
    return write_atomically(path, lambda staged: staged.write_text(text, encoding="utf-8"))


def write_folder_atomically(path: str | os.PathLike[str], write: Callable[[Path], Path]) -> Path:
    """Run ``write(staged)``, which creates the folder ``staged`` (or returns the folder it made
    beside it), then rename it to `path`. An old folder at `path` (empty, or one the caller may
    replace) is moved aside first, as a folder cannot be renamed onto a non-empty one, and is
    deleted only once the new one is in place (moved back if the rename fails)."""
    path = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=path.parent))
    aside = staging / ".replaced"
    try:
        folder = write(staging / path.name)
        if path.is_dir():
            os.replace(path, aside)
        try:
            os.replace(folder, path)
        except BaseException:
            if aside.is_dir() and not path.exists():
                os.replace(aside, path)  # the old folder back before the staging goes
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
