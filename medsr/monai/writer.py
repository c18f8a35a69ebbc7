"""`MedsrWriter`: MONAI's `SaveImage(d)` writing through `medsr.io.write_volume`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import ImageWriter

from medsr.io import Volume, write_volume
from medsr.provenance import provenance_description, write_provenance


class MedsrWriter(ImageWriter):
    """Write with medsr's writers (NIfTI with qform = sform and units, NRRD/MHA, OME-TIFF in µm),
    atomically, with the provenance record beside the file when the image carries one.

    Use it as ``SaveImaged(keys, writer=MedsrWriter, output_ext=".nii.gz", resample=False)``:
    the image is written on its own affine (never resampled), so it overlays its input. The
    channels of a 4D series (``meta["frames"]``, from `MedsrReader`) are written back as its
    frames, with its frame spacing and time unit, as ``medsr upsample`` writes a series.
    """

    def __init__(self, output_dtype: Any = None, **kwargs: Any) -> None:
        super().__init__(output_dtype=output_dtype, **kwargs)
        self.meta: Mapping = {}

    def set_data_array(
        self, data_array: Any, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs
    ) -> None:
        """Channel-first (C, X, Y, Z) data; one grey channel or three RGB channels."""
        self.data_obj = self.convert_to_channel_last(
            data=data_array, channel_dim=channel_dim, squeeze_end_dims=squeeze_end_dims
        )

    def set_metadata(self, meta_dict: Mapping | None, resample: bool = False, **options) -> None:
        """Keep the affine and unit; `resample` is refused (the output must overlay its input)."""
        if resample:
            raise ValueError("MedsrWriter writes on the image's own affine; use resample=False")
        self.meta = dict(meta_dict or {})
        affine = self.meta.get("affine", np.eye(4))
        self.affine = np.asarray(torch.as_tensor(affine).cpu().numpy(), dtype=np.float64)

    def write(self, filename: Any, verbose: bool = False, **kwargs) -> None:
        """Write atomically (replacing an earlier output of the same run)."""
        array = np.asarray(self.data_obj.cpu() if torch.is_tensor(self.data_obj) else self.data_obj)
        if self.output_dtype is not None:
            array = array.astype(self.output_dtype)
        meta = {"unit": self.meta.get("unit", "mm")}
        record = (
            json.loads(self.meta["medsr_provenance"]) if "medsr_provenance" in self.meta else None
        )
        if record is not None:
            meta["description"] = provenance_description(record)
        frames = None
        if int(self.meta.get("frames", 1)) > 1:  # a 4D series: channels are its frames
            meta["frame_spacing"] = float(self.meta.get("frame_spacing", 1.0))
            meta["time_unit"] = str(self.meta.get("time_unit", "unknown"))
            frames = [Volume(array[..., t], self.affine, meta) for t in range(array.shape[-1])]
        volume = frames[0] if frames else Volume(array, self.affine, meta)
        written = write_volume(volume, Path(filename), overwrite=True, frames=frames)
        if record is not None:
            source = str(self.meta.get("filename_or_obj", ""))
            write_provenance(dict(record, input=source, frames=len(frames or [0])), written)
