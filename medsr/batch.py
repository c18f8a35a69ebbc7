"""`medsr batch`: every scan file and every section-series folder under INPUT_ROOT becomes an
output under OUTPUT_ROOT at the same relative path.

A manifest (``OUTPUT_ROOT/medsr_manifest.json``) records, per input, its checksum, the settings,
the output and its checksum, the status ('done' or 'failed' with the error) and the time. A rerun
skips inputs that are done with the same input checksum and settings and whose output still
exists; failures are retried. One failing input never stops the others. Work runs in local worker
processes, or on an existing Dask distributed cluster (``--scheduler ADDRESS``, or ``local`` for
a local cluster) with the same task function.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from medsr.errors import MedsrError
from medsr.io import (
    VOLUME_SUFFIXES,
    default_output_suffix,
    make_output_folder,
    split_volume_name,
)
from medsr.io.tiff import SECTION_SUFFIXES
from medsr.provenance import sha256

logger = logging.getLogger(__name__)

MANIFEST = "medsr_manifest.json"


@dataclass(frozen=True)
class Task:
    """One input and where its output goes."""

    source: str
    output: str
    key: str  # the input's path relative to INPUT_ROOT (and ``#<series>`` for DICOM series)
    series: str | None = None  # the DICOM series of a folder holding several


def is_dicom_file(path: Path) -> bool:
    """A DICOM file by content (the ``DICM`` magic after the 128-byte preamble), whatever its
    name: exports often have no extension."""
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _is_2d_image(path: Path) -> bool:
    if path.suffix.lower() not in (".tif", ".tiff"):
        return True  # PNG / JPEG
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return len(series.shape) == 2 or (len(series.shape) == 3 and series.shape[-1] in (3, 4))
    except Exception:  # unreadable: not a section; the file is reported as its own input
        return False


def folder_kind(folder: Path) -> str | None:
    """``"sections"``, ``"dicom"`` or None (a plain folder whose files are inputs of their own).

    A folder is a section series when it has ``series.json`` or ``order.txt``, or holds 2D images
    only (at least two, and no volume files); it is a DICOM series when it holds DICOM files (by
    content). 3D TIFF stacks, NIfTI and the like are always inputs of their own.
    """
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if (folder / "series.json").exists() or (folder / "order.txt").exists():
        return "sections"
    if any(p.suffix.lower() == ".dcm" or (not p.suffix and is_dicom_file(p)) for p in files):
        return "dicom"
    images = [p for p in files if p.suffix.lower() in SECTION_SUFFIXES]
    volumes = [p for p in files if p.name.lower().endswith(VOLUME_SUFFIXES) and p not in images]
    if len(images) >= 2 and not volumes and all(_is_2d_image(p) for p in images):
        return "sections"
    return None


def discover(
    input_root: Path, output_root: Path, pattern: str | None, suffix: str | None
) -> list[Task]:
    """Scan files and series folders under `input_root` (a series folder is one input);
    `output_root` is never read as input, even inside `input_root`."""
    tasks, series = [], []
    skip = output_root.resolve()
    for folder, subfolders, files in os.walk(input_root):
        folder = Path(folder)
        subfolders[:] = [d for d in subfolders if (folder / d).resolve() != skip]
        if folder != input_root and folder_kind(folder) is not None:
            series.append(folder)
            subfolders.clear()
            continue
        for name in sorted(files):
            lower = name.lower()
            if not lower.endswith(VOLUME_SUFFIXES) or name == MANIFEST:
                continue
            if lower.endswith((".tif", ".tiff")) and _is_2d_image(folder / name):
                continue  # a stray 2D image (a QC picture, a lone section) is not a volume
            if pattern and not fnmatch(name, pattern):
                continue
            tasks.append(folder / name)
    tasks += [s for s in series if not pattern or fnmatch(s.name, pattern)]
    result = []
    for source in sorted(tasks):
        relative = source.relative_to(input_root)
        stem, _ = split_volume_name(relative)
        ext = suffix or default_output_suffix(source)
        ids = dicom_series_ids(source)
        for series_id in ids:  # one input per DICOM series
            name = f"{stem}_series{series_id}{ext}"
            output = output_root / relative.parent / name
            result.append(Task(str(source), str(output), f"{relative}#{series_id}", series_id))
        if not ids:
            output = output_root / relative.parent / (stem + ext)
            result.append(Task(str(source), str(output), str(relative)))
    return result


def dicom_series_ids(path: Path) -> list[str]:
    """The series of a DICOM folder holding several (numbers, or UIDs where numbers repeat);
    empty for anything else, which is one input as it is."""
    if not path.is_dir() or folder_kind(path) != "dicom":
        return []
    from medsr.io.itk import list_dicom_series

    found = list_dicom_series(path)
    if len(found) < 2:
        return []
    numbers = [s.number for s in found]
    unique = all(numbers) and len(set(numbers)) == len(numbers)
    return [s.number if unique else s.uid for s in found]


def process_one(task: Task, settings: dict) -> dict:
    """Run one input (in a worker process or on a cluster); never raises."""
    import torch

    from medsr.inference import upsample_file

    torch.set_num_threads(max(1, settings.pop("threads", 1)))
    start = time.perf_counter()
    record = {"input": task.key, "output": task.output, "input_sha256": sha256(task.source)}
    try:
        Path(task.output).parent.mkdir(parents=True, exist_ok=True)
        output = upsample_file(
            task.source, task.output, overwrite=True, series=task.series, **settings
        )
        record.update(status="done", output_sha256=sha256(output))
    except MedsrError as error:
        record.update(status="failed", error=str(error))
    except Exception as error:  # a bug or an unexpected library error must not stop the batch
        record.update(status="failed", error=f"{type(error).__name__}: {error}")
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def _load_manifest(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("inputs", {})
    except (json.JSONDecodeError, AttributeError):
        logger.warning("manifest '%s' is unreadable; starting afresh", path)
        return {}


def _save_manifest(path: Path, entries: dict, settings: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(
        json.dumps({"settings": settings, "inputs": entries}, indent=2) + "\n", encoding="utf-8"
    )
    os.replace(temporary, path)


def run_batch(
    input_root: str | os.PathLike[str],
    output_root: str | os.PathLike[str],
    *,
    settings: dict,
    pattern: str | None = None,
    suffix: str | None = None,
    workers: int = 2,
    scheduler: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[dict], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Process every input not already done; returns the manifest's entries.

    An existing output that the manifest does not record as this batch's is never replaced
    without `overwrite` (that input fails with a one-line reason).

    `on_start` receives the number of inputs found (skipped ones included), `on_done` every
    record, skipped or new, as it is settled.
    """
    input_root, output_root = Path(input_root), Path(output_root)
    if not input_root.is_dir():
        raise MedsrError(f"input folder not found: '{input_root}'")
    tasks = discover(input_root, output_root, pattern, suffix)
    if not tasks:
        raise MedsrError(f"no scans or section folders under '{input_root}'")
    make_output_folder(output_root)
    manifest_path = output_root / MANIFEST
    entries = _load_manifest(manifest_path)
    settings_key = json.dumps(settings, sort_keys=True)
    if on_start:
        on_start(len(tasks))
    todo = []
    for task in tasks:
        entry = entries.get(task.key)
        if (
            entry
            and entry.get("status") == "done"
            and entry.get("settings") == settings_key
            and Path(task.output).exists()
            and entry.get("input_sha256") == sha256(task.source)
        ):
            logger.info("skip %s (done)", task.key)
            if on_done:
                on_done(entry)
            continue
        owned = entry is not None and entry.get("output") == task.output
        if Path(task.output).exists() and not owned and not overwrite:
            result = {
                "input": task.key,
                "output": task.output,
                "status": "failed",
                "error": f"output exists and is not this batch's: '{task.output}' "
                "(use --overwrite to replace it)",
            }
            result["settings"] = settings_key
            entries[task.key] = result
            if on_done:
                on_done(result)
            continue
        todo.append(task)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))

    def record(result: dict) -> None:
        result["settings"] = settings_key
        entries[result["input"]] = result
        _save_manifest(manifest_path, entries, settings)  # after every input: resumable
        if on_done:
            on_done(result)

    job_settings = [
        dict(settings, threads=threads, **worker_device(settings, index))
        for index in range(len(todo))
    ]
    if scheduler:
        _run_on_dask(todo, job_settings, scheduler, workers, record)
    elif workers <= 1:
        for task, options in zip(todo, job_settings, strict=True):
            record(process_one(task, options))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(process_one, t, o) for t, o in zip(todo, job_settings, strict=True)
            ]
            for future in as_completed(futures):
                record(future.result())
    _save_manifest(manifest_path, entries, settings)
    return entries


def worker_device(settings: dict, index: int) -> dict:
    """The device of job `index`: on a machine with several GPUs, jobs asking for ``auto`` or
    ``cuda`` are spread over them (``cuda:0``, ``cuda:1``...); anything else is kept."""
    device = settings.get("device")
    if settings.get("method") != "misr" or device not in ("auto", "cuda", None):
        return {}
    import torch

    count = torch.cuda.device_count()
    return {"device": f"cuda:{index % count}"} if count > 1 else {}


def _run_on_dask(tasks, job_settings, scheduler: str, workers: int, record) -> None:
    try:
        from dask.distributed import Client, LocalCluster
        from dask.distributed import as_completed as dask_completed
    except ImportError as error:
        raise MedsrError("--scheduler needs Dask: pip install 'medsr[distributed]'") from error
    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        futures = client.map(process_one, tasks, job_settings, pure=False)
        for future in dask_completed(futures):
            record(future.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
