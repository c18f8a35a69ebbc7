"""`medsr batch`: every scan file and every section-series folder under INPUT_ROOT becomes an
output under OUTPUT_ROOT at the same relative path.

A manifest (``OUTPUT_ROOT/medsr_manifest.json``) records, per input, its checksum, size and
mtime, the settings, the output and its checksum, the status ('done' or 'failed' with the error)
and the time. A rerun skips inputs that are done with the same settings, whose output is still
the file this batch wrote, and whose input is unchanged: same size and mtime, or (where those
differ) the same checksum; failures are retried. Each input is hashed at most once per run.

Nothing is written over a file that this batch did not create (an output the manifest records
as written by it, with that checksum) without `overwrite`; that input fails with a one-line
reason. Two inputs that would write one output, an output root equal to the input root and an
input root inside the output root are refused before any work. One failing input never stops
the others. Work runs in local worker processes, or on an existing Dask distributed cluster
(``--scheduler ADDRESS``, or ``local`` for a local cluster) with the same task function.

With ``output_format="dicom"`` in the settings each output is a DICOM series folder (the output
name without a suffix), written by `upsample_file` as `medsr upsample --format dicom` writes it.
A folder is this batch's only while the digest of its file names and contents is the one the
manifest recorded (`owns_output`), and an output folder that holds another input's output is a
collision. Patients: `batch_patient_id`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from medsr.batch.plan import (
    MANIFEST,
    OutputCollisionError,
    Task,
    _file_stat,
    batch_patient_id,
    owns_output,
    plan_batch,
    settings_key,
)
from medsr.errors import MedsrError
from medsr.io import make_output_folder
from medsr.io.atomic import write_text_atomically
from medsr.provenance import input_stat, known_sha256, sha256

logger = logging.getLogger(__name__)


def process_one(task: Task, settings: dict) -> dict:
    """Run one input (in a worker process or on a cluster); never raises. The input is hashed
    once (not at all when the planner already did and it has not changed since)."""
    import torch

    from medsr.upsample.files import upsample_file

    torch.set_num_threads(max(1, settings.pop("threads", 1)))
    start = time.perf_counter()
    record: dict = {"input": task.key, "output": task.output}
    try:
        stat = input_stat(task.source)
        known = task.input_sha256 if task.input_sha256 and task.input_stat == stat else None
        digest = known or sha256(task.source)
        record.update(input_sha256=digest, input_stat=list(stat))
        Path(task.output).parent.mkdir(parents=True, exist_ok=True)
        if settings.get("output_format") == "dicom":
            patient_id = batch_patient_id(task, settings)
            settings.update(dicom_patient_id=patient_id)
            if patient_id is None:  # a DICOM input: its own patient, study and modality
                settings.update(dicom_modality=None)
            record.update(dicom_patient_id=patient_id)
        with known_sha256(task.source, digest, stat):  # upsample_file's record: no second read
            output = upsample_file(
                task.source, task.output, overwrite=True, series=task.series, **settings
            )
        record.update(
            status="done", output_sha256=sha256(output), output_stat=_file_stat(Path(output))
        )
    except Exception as error:  # a bug or an unexpected library error must not stop the batch
        record.update(status="failed", error=failure_reason(error))
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def failure_reason(error: Exception) -> str:
    """The one line a failed input gets: a MedsrError's own message; any other error's type
    too (a bug or an unexpected library error)."""
    return str(error) if isinstance(error, MedsrError) else f"{type(error).__name__}: {error}"


def _save_manifest(path: Path, entries: dict, settings: dict) -> None:
    write_text_atomically(
        path, json.dumps({"settings": settings, "inputs": entries}, indent=2) + "\n"
    )


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
    threads: int | None = None,
) -> dict:
    """Process every input not already done; returns the manifest's entries.

    `threads`: torch's CPU threads in each worker (default: the CPUs shared out over
    `workers`); not one of the `settings`, so that it changes no output and redoes no input.

    An existing file that this batch did not write (`owns_output`) is never replaced without
    `overwrite` (that input fails with a one-line reason).

    `on_start` receives the number of inputs found (skipped ones included), `on_done` every
    record, skipped or new, as it is settled.

    Raises:
        OutputCollisionError: two inputs would write one output (before anything is written).
        MedsrError: the folders are refused (`plan_batch`).
    """
    output_root = Path(output_root)
    plan = plan_batch(
        input_root,
        output_root,
        settings=settings,
        pattern=pattern,
        suffix=suffix,
        overwrite=overwrite,
    )
    if plan.collisions:
        raise OutputCollisionError(plan.collisions)
    make_output_folder(output_root)
    manifest_path = output_root / MANIFEST
    entries = plan.entries
    if on_start:
        on_start(len(plan.tasks))
    for entry in plan.skip + plan.refuse:
        logger.info("%s %s", "skip" if entry["status"] == "done" else "refuse", entry["input"])
        entries[entry["input"]] = entry
        if on_done:
            on_done(entry)
    record = _recorder(entries, manifest_path, settings, on_done)
    _run_tasks(
        plan.run,
        _job_settings(settings, len(plan.run), workers, threads),
        scheduler,
        workers,
        record,
    )
    _save_manifest(manifest_path, entries, settings)
    return entries


def _recorder(
    entries: dict, manifest_path: Path, settings: dict, on_done: Callable[[dict], None] | None
) -> Callable[[dict], None]:
    """What settles each finished input: its entry, the manifest saved (so that a stopped batch
    resumes), `on_done`."""
    key = settings_key(settings)

    def record(result: dict) -> None:
        previous = entries.get(result["input"]) or {}
        if result["status"] != "done" and owns_output(previous, Path(result["output"])):
            # the file written by an earlier run is still this batch's
            result.update(
                output_sha256=previous["output_sha256"], output_stat=previous.get("output_stat")
            )
        result["settings"] = key
        entries[result["input"]] = result
        _save_manifest(manifest_path, entries, settings)  # after every input: resumable
        if on_done:
            on_done(result)

    return record


def _job_settings(
    settings: dict, count: int, workers: int, threads: int | None = None
) -> list[dict]:
    """The settings of each of `count` jobs: `threads` CPU threads each (default: the CPUs
    shared out), GPUs spread over."""
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    return [dict(settings, threads=threads, **worker_device(settings, i)) for i in range(count)]


def _run_tasks(
    tasks: list[Task],
    job_settings: list[dict],
    scheduler: str | None,
    workers: int,
    record: Callable[[dict], None],
) -> None:
    """Every task through `process_one`: on Dask, in this process, or in worker processes."""
    if scheduler:
        _run_on_dask(tasks, job_settings, scheduler, workers, record)
    elif workers <= 1:
        for task, options in zip(tasks, job_settings, strict=True):
            record(process_one(task, options))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(process_one, t, o) for t, o in zip(tasks, job_settings, strict=True)
            ]
            for future in as_completed(futures):
                record(future.result())


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
