"""`medsr evaluate` and `medsr compare`: the file-level drivers around `medsr.evaluate.simulate` and
`medsr.evaluate.figures` (read, reconstruct, score, write tables, figures and report.md)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from medsr.errors import MedsrError
from medsr.evaluate.figures import comparison_figure
from medsr.evaluate.simulate import SCORE_NAMES, evaluation_mask, score, simulate_acquisition
from medsr.evaluate.tables import format_score, mean_rows, write_tables
from medsr.io import make_output_folder, read_volume, split_volume_name, write_atomically
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

    unknown = set(methods) - {"misr", "linear", "bspline"}
    if unknown or not methods:
        raise MedsrError(f"unknown method(s) {sorted(unknown)}; use misr, linear, bspline")
    if not factor > 1:
        raise MedsrError(f"--factor must be above 1, got {factor}")
    for path in [*paths, *([mask_path] if mask_path else [])]:
        if not Path(path).exists():
            raise MedsrError(f"input not found: '{path}'")
    out = Path(out_dir)
    check_report_outputs(out, [_volume_name(Path(p)) for p in paths], overwrite=overwrite)
    make_output_folder(out)
    rows, figures, notes = [], [], []
    bar = tqdm(total=len(paths) * len(methods), disable=not progress, unit="run")
    for path in map(Path, paths):
        acquisition = simulate_acquisition(
            read_volume(path), factor=factor, axis=axis, profile=profile
        )
        truth = acquisition.truth
        external = None
        if mask_path is not None:
            external = np.take(
                read_volume(mask_path).array, np.arange(truth.spatial_shape[axis]), axis=axis
            )
        mask = evaluation_mask(truth.array, external)
        data_range = float(truth.array[mask].max() - truth.array[mask].min())
        name = _volume_name(path)
        notes.append(
            f"- `{name}`: truth {' x '.join(map(str, truth.spatial_shape))} voxels of "
            f"{' x '.join(f'{s:.3g}' for s in truth.spacing)} {truth.unit}, thickened x{factor:g} "
            f"along array axis {axis} ({profile} profile); scored inside "
            f"{'the given mask' if mask_path else 'an Otsu foreground mask'} of "
            f"{int(mask.sum())} voxels ({100 * mask.mean():.1f} %), data range "
            f"{data_range:.4g} (truth max - min inside the mask)."
        )
        outputs = {}
        for method in methods:
            start = time.perf_counter()
            options = (misr_options or {}) if method == "misr" else {}
            result = upsample_volume(
                acquisition.thick,
                method=method,
                keep_dtype=False,
                spacing=float(truth.spacing[axis]),
                axis=axis,
                **options,
            )
            seconds = time.perf_counter() - start
            if result.spatial_shape != truth.spatial_shape:
                raise MedsrError(
                    f"{method} gave {result.spatial_shape}, truth is {truth.spatial_shape}"
                )
            outputs[method] = result
            rows.append(
                {
                    "volume": name,
                    "method": method,
                    "factor": factor,
                    "axis": axis,
                    "profile": profile,
                    **score(result.array, truth.array, mask=mask, axis=axis),
                    "seconds": seconds,
                }
            )
            bar.update(1)
        panels = {"input": acquisition.thick, "truth": truth, **outputs}
        figure = comparison_figure(
            panels,
            truth,
            axis,
            out / f"{name}_planes.png",
            truth_name="truth",
            nearest=("input",),
            title=f"{name}: x{factor:g} {profile}, axis {axis}",
        )
        figures.append(str(figure))
    bar.close()
    notes.append(
        "- PSNR/SSIM/HFEN/sharpness: higher PSNR and SSIM are better, lower HFEN is "
        "better, sharpness 1 means as sharp across slices as the truth."
    )
    # metrics.csv and metrics.json staged together, then moved into place
    write_atomically(out / "metrics.json", lambda staged: write_tables(rows, staged.parent))
    text = _markdown(rows, notes, figures)
    write_atomically(out / "report.md", lambda staged: staged.write_text(text, encoding="utf-8"))
    return rows


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
