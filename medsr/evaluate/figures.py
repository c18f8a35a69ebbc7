"""Figures for reports and comparisons (matplotlib, no display needed).

Every panel is sampled in *world* coordinates on the grid of a reference volume, so the same
anatomy sits at the same place in every panel whatever each volume's own grid: the thick input is
sampled with nearest neighbour (its slabs stay visible), reconstructions linearly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsr.intensity import grey_array
from medsr.io import Volume, write_atomically


def world_plane(volume: Volume, reference: Volume, axis: int, index: int, order: int) -> np.ndarray:
    """Sample `volume` on plane `index` (normal to array `axis`) of `reference`'s grid.

    Returns:
        2D array over the reference's two other axes (in increasing axis order).
    """
    shape = list(reference.spatial_shape)
    grids = [np.arange(n, dtype=np.float64) for n in shape]
    grids[axis] = np.array([float(index)])
    mesh = np.meshgrid(*grids, indexing="ij")
    points = np.stack([m.ravel() for m in mesh] + [np.ones(mesh[0].size)])
    voxels = np.linalg.solve(volume.affine, reference.affine @ points)[:3]
    data = grey_array(volume)
    values = ndimage.map_coordinates(data.astype(np.float32), voxels, order=order, mode="nearest")
    return values.reshape([n for i, n in enumerate(shape) if i != axis])


def _show(ax, image, spacing, vmin, vmax, cmap="gray"):
    # rows of the array run along the first remaining axis: transpose so the thick axis is vertical
    extent = (0, image.shape[0] * spacing[0], 0, image.shape[1] * spacing[1])
    handle = ax.imshow(
        image.T,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        origin="lower",
        extent=extent,
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])
    return handle


def _scale_bar(ax, width_mm: float, unit: str) -> None:
    length = 10.0 if width_mm > 40 else 5.0 if width_mm > 15 else 1.0
    ax.plot(
        [0.04 * width_mm, 0.04 * width_mm + length],
        [0.04 * width_mm] * 2,
        color="yellow",
        linewidth=2,
    )
    ax.text(0.04 * width_mm, 0.07 * width_mm, f"{length:g} {unit}", color="yellow", fontsize=7)


def _worst_window(errors: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the `size` window with the largest summed error."""
    summed = ndimage.uniform_filter(errors, size=size, mode="constant")
    centre = np.unravel_index(int(np.argmax(summed)), summed.shape)
    return tuple(
        int(np.clip(c - size // 2, 0, n - size)) for c, n in zip(centre, errors.shape, strict=True)
    )


def comparison_figure(
    panels: dict[str, Volume],
    reference: Volume,
    axis: int,
    path: str | Path,
    *,
    truth_name: str | None = None,
    nearest: tuple[str, ...] = (),
    title: str = "",
) -> Path:
    """Write a PNG: for both planes that contain `axis`, a row of images (one column per panel,
    the zoomed window marked in cyan), a row of zooms on the window where the errors (or, without
    a truth, the differences between panels) are largest, and, when a truth is named, a row of
    absolute errors on one shared colour scale with a colour bar.

    Args:
        panels: name -> volume, in column order.
        reference: the grid the planes are sampled on (the truth, or the finest output).
        axis: thick array axis of the reference.
        path: output PNG (written atomically, replacing an existing file: the caller checks).
        truth_name: key of `panels` that is the truth (adds error rows).
        nearest: keys sampled with nearest neighbour (the thick input).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    normals = [a for a in range(3) if a != axis]
    names = list(panels)
    rows_per_plane = 3 if truth_name else 2
    figure, axes = _figure_grid(plt, reference, normals, len(names), bool(truth_name))
    for plane_index, normal in enumerate(normals):
        plane = _sample_plane(panels, reference, normal, truth_name, nearest)
        row = plane_index * rows_per_plane
        for column, name in enumerate(names):
            axes[row, column].set_title(name, fontsize=9)
            _draw_panel(plt, axes[row, column], axes[row + 1, column], plane, name, column == 0)
        if truth_name:
            _draw_errors(figure, axes[row + 2], plane, names, truth_name)
    figure.suptitle(title, fontsize=10)
    path = write_atomically(path, lambda staged: figure.savefig(staged, dpi=110))
    plt.close(figure)
    return path


@dataclass(frozen=True)
class _Plane:
    """One plane of every panel on the reference grid, and what its three rows share."""

    normal: int
    spacing: list[float]  # of the plane's two axes, in increasing axis order
    unit: str
    images: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]  # against the truth, or the panels' mean without one
    window: tuple[int, int]  # top-left corner of the zoom, where the errors are largest
    size: int  # of the zoom window, in pixels
    low: float  # the grey scale of the images
    high: float
    error_max: float  # the one colour scale of every error image


def _sample_plane(
    panels: dict[str, Volume],
    reference: Volume,
    normal: int,
    truth_name: str | None,
    nearest: tuple[str, ...],
) -> _Plane:
    names = list(panels)
    centre = reference.spatial_shape[normal] // 2
    images = {
        n: world_plane(v, reference, normal, centre, 0 if n in nearest else 1)
        for n, v in panels.items()
    }
    low, high = np.percentile(images[truth_name or names[0]], [0.5, 99.5])
    base = images[truth_name] if truth_name else np.mean(list(images.values()), axis=0)
    errors = {n: np.abs(images[n] - base) for n in names if n != truth_name}
    size = max(8, min(images[names[0]].shape) // 3)
    return _Plane(
        normal=normal,
        spacing=[reference.spacing[a] for a in range(3) if a != normal],
        unit=reference.unit,
        images=images,
        errors=errors,
        window=_worst_window(sum(errors.values()), size),
        size=size,
        low=low,
        high=high,
        error_max=max(float(np.percentile(e, 99.5)) for e in errors.values()) or 1.0,
    )


def _figure_grid(plt, reference: Volume, normals: list[int], columns: int, with_errors: bool):
    """The figure and its axes: per plane, a row of images, of zooms and (with a truth) of
    errors; each row as tall as its plane's aspect asks."""
    shapes = [
        [n * reference.spacing[a] for a, n in enumerate(reference.spatial_shape) if a != normal]
        for normal in normals
    ]
    aspect = max(h / w for w, h in shapes)
    return plt.subplots(
        len(normals) * (3 if with_errors else 2),
        columns,
        squeeze=False,
        layout="constrained",
        figsize=(
            2.3 * columns + 0.8,
            2.3 * len(normals) * (1 + aspect + (aspect if with_errors else 0)),
        ),
    )


def _draw_panel(plt, ax, ax_zoom, plane: _Plane, name: str, first: bool) -> None:
    """One panel's image, with the zoom window marked in cyan, and its zoom below it."""
    image = plane.images[name]
    _show(ax, image, plane.spacing, plane.low, plane.high)
    x0, y0 = (w * s for w, s in zip(plane.window, plane.spacing, strict=True))
    ax.add_patch(
        plt.Rectangle(
            (x0, y0),
            plane.size * plane.spacing[0],
            plane.size * plane.spacing[1],
            fill=False,
            edgecolor="cyan",
            linewidth=1,
        )
    )
    if first:
        ax.set_ylabel(f"plane normal to axis {plane.normal}", fontsize=8)
        _scale_bar(ax, image.shape[0] * plane.spacing[0], plane.unit)
    top, left = plane.window
    crop = image[top : top + plane.size, left : left + plane.size]
    _show(ax_zoom, crop, plane.spacing, plane.low, plane.high)
    ax_zoom.set_title("zoom", fontsize=7)


def _draw_errors(figure, row, plane: _Plane, names: list[str], truth_name: str) -> None:
    """The row of absolute errors on one colour scale, with its colour bar."""
    handle = None
    for ax, name in zip(row, names, strict=True):
        if name == truth_name:
            ax.axis("off")
            continue
        handle = _show(ax, plane.errors[name], plane.spacing, 0, plane.error_max, cmap="magma")
        ax.set_title(f"|{name} - {truth_name}|", fontsize=8)
    figure.colorbar(
        handle, ax=list(row), fraction=0.03, pad=0.01, label="absolute error (input units)"
    )
