"""`medsr evaluate` and `medsr compare`: the file-level drivers around `medsr.evaluate.simulate` and
`medsr.evaluate.figures` (read, reconstruct, score, write tables, figures and report.md)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsr.errors import MedsrError
from medsr.evaluate.figures import comparison_figure
from medsr.evaluate.simulate import (
    SCORE_NAMES,
    Acquisition,
    evaluation_mask,
    robust_data_range,
    score,
    simulate_acquisition,
)
from medsr.evaluate.tables import format_score, mean_rows, write_tables
from medsr.io import Volume, make_output_folder, read_volume, split_volume_name, write_atomically
from medsr.upsample.api import upsample_volume

logger = logging.getLogger(__name__)

_HEADERS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "hfen": "HFEN ↓", "sharpness": "sharpness"}


def _volume_name(path: Path) -> str:
    return split_volume_name(path)[0]


def _markdown(rows: list[dict], notes: list[str], figures: list[str]) -> str:
    lines = [
        "# medsr evaluation",
        "",
        *notes,
        "",
        "| volume | method | " + " | ".join(_HEADERS[k] for k in SCORE_NAMES) + " | time (s) |",
        "|---" * (len(SCORE_NAMES) + 3) + "|",
    ]
    for row in rows + (mean_rows(rows) if len({r["volume"] for r in rows}) > 1 else []):
        values = " | ".join(format_score(k, row[k]) for k in SCORE_NAMES)
        lines.append(f"| {row['volume']} | {row['method']} | {values} | {row['seconds']:.1f} |")
    lines += ["", *[f"![{Path(f).stem}]({Path(f).name})" for f in figures], ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class _Settings:
    """What every volume of one evaluation shares."""

    factor: float
    axis: int
    profile: str
    methods: tuple[str, ...]
    misr_options: dict


def run_evaluation(
    paths: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    factor: float,
    axis: int = 2,
    profile: str = "boxcar",
    methods: tuple[str, ...] = ("misr", "linear", "bspline"),
    mask_path: str | None = None,
    misr_options: dict | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> list[dict]:
    """Evaluate every method on every high-resolution volume; returns the per-volume rows.

    Writes ``report.md``, ``metrics.csv``, ``metrics.json`` and ``<volume>_planes.png`` in
    `out_dir`, each atomically; without `overwrite`, any of them already there is an error
    before any work.
    """
    from tqdm import tqdm

    _check_evaluation(paths, methods, factor, mask_path)
    out = Path(out_dir)
    check_report_outputs(out, [_volume_name(Path(p)) for p in paths], overwrite=overwrite)
    make_output_folder(out)
    settings = _Settings(factor, axis, profile, tuple(methods), misr_options or {})
    rows, figures, notes = [], [], []
    bar = tqdm(total=len(paths) * len(methods), disable=not progress, unit="run")
    for path in map(Path, paths):
        acquisition = simulate_acquisition(
            read_volume(path), factor=factor, axis=axis, profile=profile
        )
        mask = _mask(acquisition.truth, mask_path, axis)
        notes.append(_volume_note(_volume_name(path), acquisition.truth, mask, mask_path, settings))
        outputs = {}
        for method in methods:
            outputs[method], row = _run_method(acquisition, method, mask, settings)
            rows.append({"volume": _volume_name(path), **row})
            bar.update(1)
        figures.append(str(_volume_figure(acquisition, outputs, out, _volume_name(path), settings)))
    bar.close()
    notes.append(
        "- PSNR/SSIM/HFEN/sharpness: higher PSNR and SSIM are better, lower HFEN is "
        "better, sharpness 1 means as sharp across slices as the truth."
    )
    _write_report(out, rows, notes, figures)
    return rows


def _check_evaluation(
    paths: list[str | os.PathLike[str]],
    methods: tuple[str, ...],
    factor: float,
    mask_path: str | None,
) -> None:
    unknown = set(methods) - {"misr", "linear", "bspline"}
    if unknown or not methods:
        raise MedsrError(f"unknown method(s) {sorted(unknown)}; use misr, linear, bspline")
    if not factor > 1:
        raise MedsrError(f"--factor must be above 1, got {factor}")
    for path in [*paths, *([mask_path] if mask_path else [])]:
        if not Path(path).exists():
            raise MedsrError(f"input not found: '{path}'")


def _mask(truth: Volume, mask_path: str | None, axis: int) -> np.ndarray:
    """The scoring mask: the given one, cropped to the truth's slabs, or the truth's foreground."""
    external = None
    if mask_path is not None:
        external = np.take(
            read_volume(mask_path).array, np.arange(truth.spatial_shape[axis]), axis=axis
        )
    return evaluation_mask(truth.array, external)


def _volume_note(
    name: str, truth: Volume, mask: np.ndarray, mask_path: str | None, settings: _Settings
) -> str:
    """The report's line on one volume: its grid, the thickening and the mask."""
    data_range = robust_data_range(truth.array, mask)
    return (
        f"- `{name}`: truth {' x '.join(map(str, truth.spatial_shape))} voxels of "
        f"{' x '.join(f'{s:.3g}' for s in truth.spacing)} {truth.unit}, thickened "
        f"x{settings.factor:g} along array axis {settings.axis} ({settings.profile} profile); "
        f"scored inside {'the given mask' if mask_path else 'an Otsu foreground mask'} of "
        f"{int(mask.sum())} voxels ({100 * mask.mean():.1f} %), data range "
        f"{data_range:.4g} (0.5-99.5 percentiles of the truth inside the mask)."
    )


def _run_method(
    acquisition: Acquisition, method: str, mask: np.ndarray, settings: _Settings
) -> tuple[Volume, dict]:
    """Reconstruct the thick acquisition on the truth's grid with `method`, timed and scored."""
    truth, axis = acquisition.truth, settings.axis
    start = time.perf_counter()
    result = upsample_volume(
        acquisition.thick,
        method=method,
        keep_dtype=False,
        spacing=float(truth.spacing[axis]),
        axis=axis,
        **(settings.misr_options if method == "misr" else {}),
    )
    seconds = time.perf_counter() - start
    if result.spatial_shape != truth.spatial_shape:
        raise MedsrError(f"{method} gave {result.spatial_shape}, truth is {truth.spatial_shape}")
    row = {
        "method": method,
        "factor": settings.factor,
        "axis": axis,
        "profile": settings.profile,
        **score(result.array, truth.array, mask=mask, axis=axis),
        "seconds": seconds,
    }
    return result, row


def _volume_figure(
    acquisition: Acquisition, outputs: dict[str, Volume], out: Path, name: str, settings: _Settings
) -> Path:
    """``<name>_planes.png``: the input, the truth and every reconstruction, with their errors."""
    return comparison_figure(
        {"input": acquisition.thick, "truth": acquisition.truth, **outputs},
        acquisition.truth,
        settings.axis,
        out / f"{name}_planes.png",
        truth_name="truth",
        nearest=("input",),
        title=f"{name}: x{settings.factor:g} {settings.profile}, axis {settings.axis}",
    )


def _write_report(out: Path, rows: list[dict], notes: list[str], figures: list[str]) -> None:
    # metrics.csv and metrics.json staged together, then moved into place
    write_atomically(out / "metrics.json", lambda staged: write_tables(rows, staged.parent))
    text = _markdown(rows, notes, figures)
    write_atomically(out / "report.md", lambda staged: staged.write_text(text, encoding="utf-8"))


def check_report_outputs(out: Path, names: list[str], *, overwrite: bool) -> None:
    """Before any work: no two volumes share a name (their figures would collide), and without
    `overwrite` none of the report's files is already in `out`."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MedsrError(f"two volumes are named '{repeated[0]}'; their figures would collide")
    files = ["report.md", "metrics.csv", "metrics.json", *[f"{n}_planes.png" for n in names]]
    existing = [out / f for f in files if (out / f).exists()]
    if existing and not overwrite:
        raise MedsrError(f"output exists: '{existing[0]}' (use --overwrite to replace it)")


def run_compare(
    low: str,
    outputs: list[str],
    figure_path: str,
    *,
    axis: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Figure of the same world planes through a thick input and its reconstructions, written
    atomically; an existing figure is replaced only with `overwrite` (checked before reading)."""
    from medsr.geometry import thick_axis
    from medsr.io import check_output_path

    check_output_path(figure_path, overwrite=overwrite, suffixes=(".png", ".pdf", ".svg"))
    volumes = {f"input ({_volume_name(Path(low))})": read_volume(low)}
    for path in outputs:
        volumes[_volume_name(Path(path))] = read_volume(path)
    first_input = next(iter(volumes))
    reference = volumes[_volume_name(Path(outputs[0]))]
    thick = thick_axis(volumes[first_input].affine) if axis is None else axis
    # the reference's axis that runs along the input's thick axis
    direction = volumes[first_input].affine[:3, thick]
    axis_in_reference = int(
        np.argmax(
            np.abs(reference.affine[:3, :3].T @ direction)
            / np.linalg.norm(reference.affine[:3, :3], axis=0)
        )
    )
    return comparison_figure(
        volumes,
        reference,
        axis_in_reference,
        figure_path,
        nearest=(first_input,),
        title="same world planes",
    )
