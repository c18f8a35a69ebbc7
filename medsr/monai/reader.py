"""`MedsrReader`: every format medsr reads, as a MONAI `ImageReader`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import ensure_tuple

from medsr.errors import MedsrError
from medsr.io import VOLUME_SUFFIXES, Volume, read_volume, volume_frames
from medsr.io.volume import Unit

#: metadata of a 4D series that travels with it (`medsr.io.nifti.read_nifti`)
SERIES_KEYS = ("frames", "frame_spacing", "time_unit")


class MedsrReader(ImageReader):
    """Read NIfTI, NRRD/MHA, DICOM series, TIFF/OME/ImageJ stacks and section folders through
    `medsr.io.read_volume`, for ``LoadImage(reader=MedsrReader())`` / ``LoadImaged``.

    The array keeps the file's voxel order and the affine is medsr's (voxel centres to RAS+
    world coordinates, in the file's unit): the same conventions as MONAI's `NibabelReader`
    without ``as_closest_canonical``, so both agree on NIfTI. Grey volumes have no channel
    axis (``original_channel_dim`` nan); RGB volumes are channel-last (-1); several files are
    stacked on a new first axis (0). The metadata adds ``unit`` (``"mm"`` or ``"um"``),
    ``pixdim`` (the voxel spacing) and, when the input says, ``slice_thickness`` (DICOM's
    SliceThickness, a section folder's ``series.json`` ``thickness``; in `unit`): the slice
    profile of the learned method's fit, as for ``medsr upsample``.

    A 4D NIfTI series (DWI, fMRI) is read frame by frame, as ``medsr upsample`` reads it, into
    one array with the frames last (``original_channel_dim`` -1, so `EnsureChannelFirst` makes
    them the channels) and ``frames``, ``frame_spacing`` and ``time_unit`` in the metadata;
    `ThroughPlaneUpsample` upsamples each frame on its own and `MedsrWriter` writes the series
    back as 4D.

    Args:
        spacing: voxel size (X, Y, Z) overriding the header (TIFF without spacing), in `unit`.
        unit: unit of `spacing`.
        series: the DICOM series to read from folders holding several (number or UID).
    """

    def __init__(
        self,
        spacing: Sequence[float] | None = None,
        unit: Unit | None = None,
        series: str | None = None,
    ) -> None:
        super().__init__()
        self.spacing, self.unit, self.series = spacing, unit, series

    def verify_suffix(self, filename: Sequence[Any] | Any) -> bool:
        """True for folders (DICOM series, sections) and every suffix medsr reads."""
        for name in ensure_tuple(filename):
            path = Path(name)
            if not (path.is_dir() or path.name.lower().endswith(VOLUME_SUFFIXES)):
                return False
        return True

    def read(self, data: Sequence[Any] | Any, **kwargs) -> Volume | list[Volume]:
        """`Volume` objects for one path or several (a 4D series: its frames stacked last)."""
        volumes = [self._read_one(Path(p)) for p in ensure_tuple(data)]
        if len(volumes) > 1 and any("frames" in v.meta for v in volumes):
            raise MedsrError("a 4D series is read on its own, not stacked with other files")
        return volumes[0] if len(volumes) == 1 else volumes

    def _read_one(self, path: Path) -> Volume:
        options = dict(spacing=self.spacing, unit=self.unit, series=self.series)
        frames = volume_frames(path) if path.is_file() else 1
        if frames == 1:
            return read_volume(path, **options)
        volumes = [read_volume(path, frame=frame, **options) for frame in range(frames)]
        return Volume(
            np.stack([v.array for v in volumes], axis=-1), volumes[0].affine, volumes[0].meta
        )

    def get_data(self, img: Volume | Sequence[Volume]) -> tuple[np.ndarray, dict]:
        """(array, metadata) in MONAI's reader conventions."""
        volumes = list(ensure_tuple(img))
        first = volumes[0]
        meta = {
            "affine": first.affine.copy(),
            "original_affine": first.affine.copy(),
            "spatial_shape": np.asarray(first.spatial_shape),
            "pixdim": np.asarray(first.spacing),
            "space": "RAS",
            "unit": first.unit,
            "original_channel_dim": float("nan") if first.num_channels == 1 else -1,
        }
        if first.meta.get("slice_thickness") is not None:
            meta["slice_thickness"] = float(first.meta["slice_thickness"])
        meta.update({key: first.meta[key] for key in SERIES_KEYS if key in first.meta})
        if len(volumes) == 1:
            return first.array, meta
        meta["original_channel_dim"] = 0
        return np.stack([v.array for v in volumes]), meta
