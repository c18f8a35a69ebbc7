"""MONAI transforms over medsr's operations: simulate a thick-slice acquisition, upsample through
the plane. Array transforms take channel-first MetaTensors (C, X, Y, Z); the dictionary forms
(`MapTransform`) apply them to `keys`. They call the functions the CLI, evaluation and training
call (`medsr.transforms.simulate_thick_slices`, `medsr.inference.upsample_volume`), so each
operation has one implementation.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import ensure_tuple

from medsr.degrade import SliceProfile, add_rician_noise, simulate_thick_slices, thick_slice_affine
from medsr.errors import MedsrError
from medsr.io import Volume


def _affine(img: torch.Tensor) -> np.ndarray:
    affine = img.affine if isinstance(img, MetaTensor) else torch.eye(4)
    return np.asarray(affine.detach().cpu().numpy(), dtype=np.float64)


def _unit(img: torch.Tensor) -> str:
    return img.meta.get("unit", "mm") if isinstance(img, MetaTensor) else "mm"


def _with_geometry(array: np.ndarray, affine: np.ndarray, like: torch.Tensor) -> MetaTensor:
    """A channel-first MetaTensor holding `array` on `affine`, keeping `like`'s other metadata
    except its slice thickness (the new image's slices are not the input's)."""
    meta = dict(like.meta) if isinstance(like, MetaTensor) else {}
    meta.pop("slice_thickness", None)
    meta.update(
        affine=torch.as_tensor(affine, dtype=torch.float64),
        spatial_shape=np.asarray(array.shape[1:]),
        pixdim=np.linalg.norm(affine[:3, :3], axis=0),
    )
    return MetaTensor(torch.as_tensor(np.ascontiguousarray(array)), meta=meta)


def _check_3d(img: torch.Tensor) -> None:
    if img.ndim != 4:
        raise MedsrError(f"expected a channel-first 3D image (C, X, Y, Z), got shape {img.shape}")


class SimulateThickSlices(Transform):
    """Thick slices of a high-resolution image along `axis` (slab convention, rows of the slice
    profile sum to 1); the affine is updated so the thick image covers the same world extent.

    Args:
        factor: thick spacing / thin spacing (> 1, need not be an integer).
        axis: spatial axis made thick (0, 1 or 2).
        profile: ``"boxcar"`` or ``"gaussian"``.
        thickness: slice thickness in thin slices (boxcar width or Gaussian FWHM; default
            `factor`, contiguous). Less than `factor` leaves a gap, more overlaps.
        gap: instead of `thickness`, the gap between slices in thin slices
            (thickness = factor - gap).
    """

    def __init__(
        self,
        factor: float,
        axis: int,
        profile: SliceProfile = "boxcar",
        thickness: float | None = None,
        gap: float | None = None,
    ) -> None:
        if factor <= 1 or axis not in (0, 1, 2):
            raise ValueError(f"need factor > 1 and axis 0, 1 or 2, got {factor} and {axis}")
        if thickness is not None and gap is not None:
            raise ValueError("give thickness or gap, not both")
        self.factor, self.axis, self.profile = float(factor), int(axis), profile
        self.thickness = float(factor) - gap if gap is not None else thickness

    def __call__(self, img: torch.Tensor) -> MetaTensor:
        _check_3d(img)
        array = np.asarray(img.detach().cpu().numpy(), dtype=np.float32)
        thick = simulate_thick_slices(
            array, self.axis + 1, self.factor, thickness=self.thickness, profile=self.profile
        )
        affine = thick_slice_affine(_affine(img), self.axis, self.factor)
        return _with_geometry(thick, affine, img)


class ThroughPlaneUpsample(Transform):
    """Upsample along the thick axis onto medsr's output grid (`medsr.inference.upsample_volume`,
    what ``medsr upsample`` runs): the output covers the input's extent and its MetaTensor
    carries the new affine; ``meta["medsr_provenance"]`` holds the provenance record (JSON).

    The slice thickness (``meta["slice_thickness"]`` from `MedsrReader`: DICOM's SliceThickness,
    a section folder's ``thickness``; or `slice_thickness`) is the slice profile of the learned
    method's fit, as in ``medsr upsample``: a gap (thickness below the spacing) is fitted as a
    gap. The channels of a 4D series (``meta["frames"]``) are its frames, fitted as the CLI fits
    a series (`medsr.upsample.series4d`): once, on the mean of the frames (`fit_frame`: on that
    frame; `fit_per_frame`: each frame on its own), and every frame is reconstructed with that
    fit. Other channels are upsampled one by one, except RGB (three uint8 channels), which share
    one model. `with_confidence` also returns the learned method's confidence map
    (`medsr.upsample.confidence`, what ``--confidence`` writes): one channel per output channel
    (one for RGB), on the output's affine.

    Args:
        method: ``"misr"``, ``"bspline"`` or ``"linear"``.
        spacing: target thick-axis spacing in the image's unit (default: finest in-plane).
        scale: factor instead of `spacing`.
        axis: spatial axis to upsample (default: the thickest, from the affine).
        keep_dtype: return the input dtype (integers rounded and clipped).
        slice_thickness: slice thickness overriding the image's, a length as `spacing`
            (``3``, ``"3mm"``, ``"20um"``; a bare number is in the image's unit), as the CLI's
            ``--slice-thickness``.
        slice_profile: the shape of the slice profile for the fit (``"boxcar"``, ``"gaussian"``,
            ``"sinc"``), as the CLI's ``--slice-profile``; default: estimated from the image
            (`medsr.upsample.profile`), where undecided the training family, boxcar 3:1.
        fit_frame: a 4D series' fit on this frame instead of the mean (``--fit-frame``).
        fit_per_frame: a 4D series' frames each fitted on their own (``--fit-per-frame``).
        **misr_options: the learned method's options as in the CLI: model, fit_steps (None:
            the default for the precision and, on a float32 CPU, the scan), fit_seconds, seed,
            device, batch_size, progress, precision, ensemble (None: the default for the
            output's size, a series' frames counted), orientations (None: 2, or 1 where a float32
            CPU's time budget needs it; `medsr.upsample.budget.default_work`).
    """

    def __init__(
        self,
        method: str = "misr",
        spacing: float | None = None,
        scale: float | None = None,
        axis: int | None = None,
        keep_dtype: bool = True,
        slice_thickness: float | str | None = None,
        slice_profile: str | None = None,
        fit_frame: int | None = None,
        fit_per_frame: bool = False,
        **misr_options: Any,
    ) -> None:
        if method not in ("misr", "bspline", "linear"):
            raise ValueError(f"unknown method {method!r}; use misr, bspline or linear")
        self.method, self.spacing, self.scale, self.axis = method, spacing, scale, axis
        self.keep_dtype, self.misr_options = keep_dtype, misr_options
        self.slice_thickness = slice_thickness
        from medsr.upsample.files import check_slice_profile

        check_slice_profile(slice_profile)
        self.slice_profile = slice_profile
        from medsr.upsample.checks import check_ensemble_option

        check_ensemble_option(method, misr_options)
        self.fit_frame, self.fit_per_frame = fit_frame, fit_per_frame

    def _upsample(self, volume: Volume, confidence: bool = False, options=None) -> Volume:
        from medsr.upsample.api import upsample_volume

        if options is None:
            options = self.misr_options if self.method == "misr" else {}
        if confidence:
            options = dict(options, confidence=True)
        return upsample_volume(
            volume,
            method=self.method,
            spacing=self.spacing,
            scale=self.scale,
            axis=self.axis,
            keep_dtype=self.keep_dtype,
            **options,
        )

    def _check_series_options(self, frames: int) -> None:
        """`fit_frame` / `fit_per_frame` as the CLI checks ``--fit-frame`` / ``--fit-per-frame``."""
        if self.fit_frame is None and not self.fit_per_frame:
            return
        from pathlib import Path

        from medsr.upsample.checks import check_series_fit, fit_steps_of

        steps = fit_steps_of(self.misr_options)
        where = Path("the image")
        check_series_fit(frames, self.method, steps, self.fit_frame, self.fit_per_frame, where)

    def _upsample_series(self, frames: list[Volume], confidence: bool) -> list[Volume]:
        """The frames of a 4D series, fitted as `medsr.upsample.series4d` fits them: one fit (on
        the mean or `fit_frame`) serves every frame, and their records say so."""
        from medsr.geometry import plan_output_grid
        from medsr.upsample import series4d
        from medsr.upsample.checks import check_fit, load_model

        first = frames[0]
        target = {"spacing": self.spacing, "scale": self.scale, "axis": self.axis}
        grid = plan_output_grid(first.spatial_shape, first.affine, **target)
        if grid.step > 1 + 1e-6:  # a coarser target: no model, slab averages (as the CLI)
            return [self._upsample(frame, confidence) for frame in frames]
        work = series4d.series_work(self.misr_options, first, grid, len(frames), confidence)
        options = dict(work, loaded=load_model(first, grid, work))
        mode = series4d.fit_mode(
            "misr", {**options, **target}, self.fit_frame, self.fit_per_frame, first
        )
        if mode in (None, "per-frame"):  # each frame as the 3D command does it
            outputs = [self._upsample(frame, confidence, work) for frame in frames]
            for output in outputs:
                series4d.add_fit_record(output, {"fit_mode": mode} if mode else {})
            return outputs
        volume, noise_from = series4d.fit_source(lambda: iter(frames), mode, self.fit_frame)
        check_fit(volume, grid, options, "the series")
        fitted = series4d.fit_once(volume, {**options, **target}, noise_from)
        served, record = series4d.serve_fitted(options, mode, *fitted)
        outputs = [self._upsample(frame, confidence, served) for frame in frames]
        for output in outputs:
            series4d.add_fit_record(output, record)
        return outputs

    def _input_meta(self, img: torch.Tensor) -> dict:
        """What `upsample_volume` reads from the input's metadata: unit and slice thickness."""
        from medsr.upsample.checks import target_spacing

        meta = {"unit": _unit(img)}
        given = img.meta.get("slice_thickness") if isinstance(img, MetaTensor) else None
        if self.slice_thickness is not None:
            given = target_spacing(self.slice_thickness, meta["unit"], "slice_thickness")
        if given is not None:
            meta["slice_thickness"] = float(given)
        if self.slice_profile is not None:
            meta["slice_profile"] = self.slice_profile
        return meta

    def __call__(self, img: torch.Tensor) -> MetaTensor:
        return self._apply(img, confidence=False)[0]

    def with_confidence(self, img: torch.Tensor) -> tuple[MetaTensor, MetaTensor]:
        """(the upsampled image, its confidence map); ``method="misr"`` only."""
        if self.method != "misr":
            raise MedsrError(f"a confidence map needs method 'misr', not {self.method!r}")
        out, uncertainty = self._apply(img, confidence=True)
        return out, uncertainty

    def _apply(self, img: torch.Tensor, confidence: bool) -> tuple[MetaTensor, MetaTensor | None]:
        _check_3d(img)
        array = img.detach().cpu().numpy()
        meta = self._input_meta(img)
        affine = _affine(img)
        series = isinstance(img, MetaTensor) and int(img.meta.get("frames", 1)) > 1
        self._check_series_options(len(array) if series else 1)
        if array.shape[0] == 3 and array.dtype == np.uint8 and not series:  # RGB: one model
            outputs = [self._upsample(Volume(np.moveaxis(array, 0, -1), affine, meta), confidence)]
            result = np.moveaxis(outputs[0].array, -1, 0)
        elif series and self.method == "misr":  # one fit for the frames, as the CLI
            outputs = self._upsample_series([Volume(c, affine, meta) for c in array], confidence)
            result = np.stack([out.array for out in outputs])
        else:  # grey channels (and a series by interpolation): each as the CLI does it
            outputs = [self._upsample(Volume(c, affine, meta), confidence) for c in array]
            result = np.stack([out.array for out in outputs])
        out = _with_geometry(result, outputs[0].affine, img)
        out.meta["medsr_provenance"] = json.dumps(outputs[0].meta["provenance"], sort_keys=True)
        if not confidence:
            return out, None
        maps = [output.meta["confidence"] for output in outputs]
        uncertainty = _with_geometry(np.stack([m.array for m in maps]), maps[0].affine, img)
        uncertainty.meta["medsr_provenance"] = json.dumps(
            maps[0].meta["provenance"], sort_keys=True
        )
        return out, uncertainty


class _PerKey(MapTransform):
    """A dictionary transform applying one array transform to every key."""

    transform: Transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class SimulateThickSlicesd(_PerKey):
    """Dictionary form of `SimulateThickSlices` (the same acquisition for every key)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **options) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = SimulateThickSlices(**options)


class ThroughPlaneUpsampled(_PerKey):
    """Dictionary form of `ThroughPlaneUpsample`. `confidence_keys` (one per key, ``method="misr"``
    only): where each key's confidence map goes (`ThroughPlaneUpsample.with_confidence`)."""

    def __init__(
        self,
        keys: KeysCollection,
        allow_missing_keys: bool = False,
        confidence_keys: KeysCollection | None = None,
        **options,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = ThroughPlaneUpsample(**options)
        self.confidence_keys = None
        if confidence_keys is not None:
            self.confidence_keys = ensure_tuple(confidence_keys)
            if len(self.confidence_keys) != len(self.keys):
                raise ValueError(f"give one confidence key per key, got {confidence_keys!r}")
            if self.transform.method != "misr":
                raise ValueError("confidence_keys need method 'misr'")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self.confidence_keys is None:
            return super().__call__(data)
        d = dict(data)
        for key, confidence_key in self.key_iterator(d, self.confidence_keys):
            d[key], d[confidence_key] = self.transform.with_confidence(d[key])
        return d


class RandSimulateThickSlicesd(Randomizable, MapTransform):
    """A random thick-slice acquisition, the same for every key: factor drawn log-uniformly,
    profile, slice thickness (gap or overlap) and Rician noise on the thin image (as in
    medsr's training pairs); in `thick_noise_share` of the noisy draws the thick image carries
    that noise in full, as a real thick slice does (`medsr.train.noise.restore_thick_noise`,
    training's ``data.thick_noise_share``). Seeded the MONAI way (`set_random_state`).

    Args:
        keys: keys of the images.
        axis: spatial axis made thick.
        factor_range: (low, high) of the factor.
        profiles: profiles to draw from.
        thickness_ratios: (low, high) of slice thickness / spacing.
        noise_max: largest Rician noise std, in the image's units (0: none).
        thick_noise_share: share of the noisy draws whose thick image carries the noise in full
            (0, the default, as training's: draws as before this option).
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        axis: int,
        factor_range: Sequence[float] = (1.5, 16.0),
        profiles: Sequence[SliceProfile] = ("boxcar", "gaussian"),
        thickness_ratios: Sequence[float] = (0.8, 1.2),
        noise_max: float = 0.0,
        allow_missing_keys: bool = False,
        thick_noise_share: float = 0.0,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not 0 <= thick_noise_share <= 1:
            raise ValueError(f"thick_noise_share must be in [0, 1], got {thick_noise_share}")
        self.thick_noise_share, self.thick_noise = float(thick_noise_share), False
        if not 1 < factor_range[0] <= factor_range[1]:
            raise ValueError(f"factor_range must be 1 < low <= high, got {factor_range}")
        self.axis, self.factor_range, self.profiles = axis, tuple(factor_range), tuple(profiles)
        self.thickness_ratios, self.noise_max = tuple(thickness_ratios), float(noise_max)
        self.factor, self.profile, self.ratio, self.sigma, self.noise_seed = 2.0, "boxcar", 1, 0, 0

    def randomize(self, data: Any = None) -> None:
        low, high = np.log(self.factor_range)
        self.factor = float(np.exp(self.R.uniform(low, high)))
        self.profile = self.profiles[self.R.randint(len(self.profiles))]
        self.ratio = float(self.R.uniform(*self.thickness_ratios))
        self.sigma = float(self.R.uniform(0, self.noise_max)) if self.noise_max > 0 else 0.0
        self.noise_seed = int(self.R.randint(2**31))
        # drawn only where it can matter: with the share at 0 the stream is as before
        share = self.thick_noise_share
        self.thick_noise = self.sigma > 0 and share > 0 and bool(self.R.uniform() < share)

    def _full_noise(self, thick: MetaTensor, thin: int) -> MetaTensor:
        """`thick` with the noise its thickening averaged away put back (`restore_thick_noise`,
        along the thick axis, from the draw's own seed)."""
        from medsr.train.noise import restore_thick_noise

        axis = self.axis + 1  # the channel axis first
        lr = np.moveaxis(thick.detach().cpu().numpy().astype(np.float32), axis, -1)
        acquisition = (thin, self.factor, self.factor * self.ratio, self.profile)
        rng = np.random.default_rng(self.noise_seed + 1)
        noisy = np.moveaxis(restore_thick_noise(lr, self.sigma, acquisition, rng), -1, axis)
        return _with_geometry(np.ascontiguousarray(noisy), _affine(thick), thick)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        transform = SimulateThickSlices(
            self.factor, self.axis, self.profile, thickness=self.factor * self.ratio
        )
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if self.sigma > 0:
                noisy = add_rician_noise(
                    img.detach().cpu().numpy().astype(np.float32),
                    self.sigma,
                    np.random.default_rng(self.noise_seed),
                )
                img = _with_geometry(noisy, _affine(img), img)
            d[key] = transform(img)
            if self.thick_noise:
                d[key] = self._full_noise(d[key], img.shape[self.axis + 1])
            d[key].meta["medsr_factor"] = self.factor
        return d
