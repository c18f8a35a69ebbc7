"""Planning a batch: discover the inputs, refuse collisions and unsafe roots, and decide what a
rerun skips (from the manifest)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch
from pathlib import Path

from medsr.errors import MedsrError
from medsr.io.paths import (
    VOLUME_SUFFIXES,
    default_output_suffix,
    folder_kind,
    is_2d_image,
    split_volume_name,
)
from medsr.provenance import input_stat, sha256

logger = logging.getLogger(__name__)

MANIFEST = "medsr_manifest.json"


@dataclass(frozen=True)
class Task:
    """One input and where its output goes."""

    source: str
    output: str
    key: str  # the input's path relative to INPUT_ROOT (and ``#<series>`` for DICOM series)
    series: str | None = None  # the DICOM series of a folder holding several
    input_sha256: str | None = None  # hashed while planning (its size or mtime had changed)
    input_stat: tuple[int, int] | None = None  # (size, mtime) when `input_sha256` was taken


class OutputCollisionError(MedsrError):
    """Inputs that would write one output: the batch is refused before any work;
    `problems` holds one line per collision."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class BatchPlan:
    """What a batch would do: `run` these tasks, `skip` these done entries, `refuse` these
    inputs (a failed record each: their output is not this batch's), and the `collisions` (one
    line each) that refuse the whole batch."""

    tasks: list[Task]
    entries: dict = field(default_factory=dict)  # the manifest as it was read
    run: list[Task] = field(default_factory=list)
    skip: list[dict] = field(default_factory=list)
    refuse: list[dict] = field(default_factory=list)
    collisions: list[str] = field(default_factory=list)
    colliding: set[str] = field(default_factory=set)  # keys of the inputs in `collisions`

    @property
    def problems(self) -> list[str]:
        """Every problem in one line each: collisions, then refused inputs."""
        return self.collisions + [f"{r['input']}: {r['error']}" for r in self.refuse]


def discover(
    input_root: Path,
    output_root: Path,
    pattern: str | None,
    suffix: str | None,
    output_format: str | None = None,
) -> list[Task]:
    """Scan files and series folders under `input_root` (a series folder is one input); hidden
    names are skipped; `output_root` is never read as input, even inside `input_root`.
    `output_format` ``"dicom"``: the outputs are folders, named without a suffix."""
    tasks, series = [], []
    skip = output_root.resolve()
    for folder, subfolders, files in os.walk(input_root):
        folder = Path(folder)
        subfolders[:] = [
            d for d in subfolders if (folder / d).resolve() != skip and not d.startswith(".")
        ]  # hidden folders: a 4D series' kept frames, staging folders, the system's
        if folder != input_root and folder_kind(folder) is not None:
            series.append(folder)
            subfolders.clear()
            continue
        for name in sorted(files):
            lower = name.lower()
            if not lower.endswith(VOLUME_SUFFIXES) or name == MANIFEST or name.startswith("."):
                continue
            if lower.endswith((".tif", ".tiff")) and is_2d_image(folder / name):
                continue  # a stray 2D image (a QC picture, a lone section) is not a volume
            if pattern and not fnmatch(name, pattern):
                continue
            tasks.append(folder / name)
    tasks += [s for s in series if not pattern or fnmatch(s.name, pattern)]
    result = []
    for source in sorted(tasks):
        relative = source.relative_to(input_root)
        stem, _ = split_volume_name(relative)
        ext = "" if output_format == "dicom" else suffix or default_output_suffix(source)
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


def check_roots(input_root: Path, output_root: Path) -> None:
    """Refuse an input folder that is missing, equal to the output folder or inside it (the
    outputs would be read as inputs, or written beside them). An output folder inside the input
    folder is fine: it is never read as input."""
    if not input_root.is_dir():
        raise MedsrError(f"input folder not found: '{input_root}'")
    source, target = input_root.resolve(), output_root.resolve()
    if source == target:
        raise MedsrError(
            f"output folder '{output_root}' is the input folder; choose another output folder"
        )
    if target in source.parents:
        raise MedsrError(
            f"input folder '{input_root}' is inside the output folder '{output_root}'; "
            "choose an output folder outside it"
        )


def find_collisions(tasks: list[Task], keys: set[str] | None = None) -> list[str]:
    """One line for every input whose output another input writes too (a DICOM folder
    ``case1/`` beside ``case1.nii.gz``; ``scan.nii.gz`` and ``scan.nrrd`` with one
    ``--output-suffix``) or writes inside (a series folder ``out/a/`` of ``a.nii.gz`` holding
    ``out/a/b/`` of ``a/b.nii.gz``); the inputs' keys are added to `keys`."""
    keys = set() if keys is None else keys
    first: dict[str, Task] = {}
    lines = []
    for task in tasks:
        key = os.path.normcase(os.path.abspath(task.output))
        if key in first:
            lines.append(
                f"inputs '{first[key].key}' and '{task.key}' would both write '{task.output}'; "
                "rename one, or run them separately (--pattern)"
            )
            keys.update((first[key].key, task.key))
        else:
            first[key] = task
    for task in tasks:
        for parent in Path(os.path.abspath(task.output)).parents:
            holder = first.get(os.path.normcase(str(parent)))
            if holder is not None:
                lines.append(
                    f"input '{holder.key}' would write '{holder.output}', which would hold the "
                    f"output of '{task.key}'; rename one, or run them separately (--pattern)"
                )
                keys.update((holder.key, task.key))
    return lines


def _companions(output: Path, settings: dict) -> list[Path]:
    """Files written with `output`: its provenance record, the alignment's transforms and the
    data file of a detached header (MHD, NHDR)."""
    paths = [output.with_name(output.name + ".json")]
    if settings.get("align"):
        paths.append(output.with_name(output.name + ".transforms.json"))
    stem, suffix = split_volume_name(output)
    data = {".mhd": ".zraw", ".nhdr": ".raw.gz"}.get(suffix.lower())
    if data:
        paths.append(output.with_name(stem + data))
    return paths


def _same_path(recorded: str | None, path: Path) -> bool:
    if recorded is None:
        return False
    return os.path.normcase(os.path.abspath(recorded)) == os.path.normcase(os.path.abspath(path))


def _file_stat(path: Path) -> list[int]:
    """Size and mtime of a file; of a folder, its files' total size and newest mtime."""
    return list(input_stat(path))


def owns_output(entry: dict | None, output: Path) -> bool:
    """Whether the file (or DICOM series folder) at `output` is one this batch wrote: its
    manifest entry records writing it there, and it is still that file (same size and mtime, or
    the same checksum; of a folder: the digest of its file names and contents, `sha256`). A
    refused input records no output checksum, so it never owns the path."""
    if not entry or not entry.get("output_sha256") or not output.exists():
        return False
    if not _same_path(entry.get("output"), output):
        return False
    return entry.get("output_stat") == _file_stat(output) or entry["output_sha256"] == sha256(
        output
    )


def is_dicom_input(task: Task) -> bool:
    """A DICOM series folder, a series of one, or a ``.dcm`` file."""
    source = Path(task.source)
    if task.series is not None or source.suffix.lower() == ".dcm":
        return True
    return source.is_dir() and folder_kind(source) == "dicom"


def batch_patient_id(task: Task, settings: dict) -> str | None:
    """The patient ID of `task`'s DICOM series: none for a DICOM input (it keeps its patient
    and study); the batch's ``dicom_patient_id`` (each input its own study); else
    ``MEDSR-`` and 10 hex digits of the SHA-256 of the input's relative path (``/``
    separated): a stable anonymous patient per input, so unrelated scans are not one patient."""
    if is_dicom_input(task):
        return None
    if settings.get("dicom_patient_id"):
        return settings["dicom_patient_id"]
    relative = task.key.replace(os.sep, "/")
    return "MEDSR-" + hashlib.sha256(relative.encode()).hexdigest()[:10].upper()


def _input_unchanged(task: Task, entry: dict) -> tuple[bool, Task]:
    """Compare size and mtime with the manifest's; hash only where they differ. Returns the
    answer and the task carrying its stat, and its hash where one was taken (so that it is not
    taken twice)."""
    stat = input_stat(task.source)
    if entry.get("input_stat") == list(stat) and entry.get("input_sha256"):
        return True, replace(task, input_stat=stat)
    digest = sha256(task.source)
    task = replace(task, input_sha256=digest, input_stat=stat)
    return digest == entry.get("input_sha256"), task


def settings_key(settings: dict) -> str:
    """The key an input's manifest entry is done under: its `settings` (less
    `VALUELESS_SETTINGS`), and for the learned method the medsr version (another version's fit
    or reconstruction may give another output; the interpolations' keys stay as older
    manifests wrote them) and the fit's arithmetic on the machine that plans the batch
    (`medsr.runtime.fit_precision`, on CUDA that of a mixed-precision model: a default left to
    medsr is 800 bf16 steps on a CPU with native bf16 and a float32 time budget on one without,
    so a batch resumed on the other kind of CPU redoes what the first made; Dask workers on
    other machines are not seen)."""
    from medsr.config import VALUELESS_SETTINGS

    settings = {key: value for key, value in settings.items() if key not in VALUELESS_SETTINGS}
    if settings.get("method") == "misr":
        from medsr._version import __version__
        from medsr.runtime import fit_precision, resolve_device

        device = resolve_device(settings.get("device"))
        arithmetic = fit_precision(settings.get("precision", "auto"), device)
        settings = dict(settings, medsr_version=__version__, fit_arithmetic=arithmetic)
    return json.dumps(settings, sort_keys=True)


def _refusal(task: Task, path: Path, settings_key: str) -> dict:
    return {
        "input": task.key,
        "output": task.output,
        "status": "failed",
        "error": f"output exists and is not this batch's: '{path}' (use --overwrite to replace it)",
        "settings": settings_key,
    }


def plan_batch(
    input_root: str | os.PathLike[str],
    output_root: str | os.PathLike[str],
    *,
    settings: dict,
    pattern: str | None = None,
    suffix: str | None = None,
    overwrite: bool = False,
) -> BatchPlan:
    """Find the inputs and decide, for each, to run, skip or refuse it; writes nothing.

    Raises:
        MedsrError: a missing input folder, an output folder equal to it or holding it, or no
            inputs at all.
    """
    input_root, output_root = Path(input_root), Path(output_root)
    check_roots(input_root, output_root)
    output_format = settings.get("output_format")
    if output_format == "dicom":
        _check_dicom_settings(settings, suffix)
    tasks = discover(input_root, output_root, pattern, suffix, output_format)
    if not tasks:
        raise MedsrError(f"no scans or section folders under '{input_root}'")
    entries = _load_manifest(output_root / MANIFEST)
    plan = BatchPlan(tasks, entries)
    plan.collisions = find_collisions(tasks, plan.colliding)
    key = settings_key(settings)
    for task in tasks:
        entry = entries.get(task.key)
        output = Path(task.output)
        owned = owns_output(entry, output)
        if owned and entry.get("status") == "done" and entry.get("settings") == key:
            unchanged, task = _input_unchanged(task, entry)
            if unchanged:
                stats = {"input_stat": list(task.input_stat), "output_stat": _file_stat(output)}
                plan.skip.append(dict(entry, **stats))  # both checked: no hash next time
                continue
        if not overwrite:
            written = [output] if output.exists() and not owned else []
            recorded = entry is not None and bool(entry.get("output_sha256"))
            written += [p for p in _companions(output, settings) if p.exists() and not recorded]
            if written:
                plan.refuse.append(_refusal(task, written[0], key))
                continue
        plan.run.append(task)
    return plan


def _load_manifest(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("inputs", {})
    except (json.JSONDecodeError, AttributeError):
        logger.warning("manifest '%s' is unreadable; starting afresh", path)
        return {}


def _check_dicom_settings(settings: dict, suffix: str | None) -> None:
    if suffix:
        raise MedsrError("--output-suffix does not apply to --format dicom: outputs are folders")
    patient_id = settings.get("dicom_patient_id")
    if patient_id is not None and not 0 < len(patient_id) <= 64:
        raise MedsrError(f"--dicom-patient-id must be 1 to 64 characters, got '{patient_id}'")
