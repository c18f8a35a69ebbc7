"""4D series (DWI, fMRI): one fit serves every frame, frames are kept as they finish, and an
interrupted run resumes.

The frames of a series share one anatomy and one acquisition, so the learned method's per-scan
fit runs once: on the mean of the frames (one streamed pass holding a frame and the sum) or on
a chosen frame (``--fit-frame N``), and the adapted generator reconstructs every frame without
fitting again. ``fit_per_frame`` (``--fit-per-frame``) fits each frame on its own, as the 3D
command does for that frame.

Each finished frame goes into a hidden folder beside the output, ``.<name>.medsr-partial/``:
``frame_00000.npy`` and so on, the adapted weights (``model.pt``), the first frame's affine and
meta (``template.json``), and ``state.json`` with a digest of the settings and the input's size,
mtime and sha256. The 4D file is then assembled by streaming the frames into it in order
(`medsr.io.nifti.write_nifti_frames`, atomically), and the folder is removed: memory holds one
input frame, one output frame and the block being written, never the whole series. Rerunning the
same command on the same input continues after the frames already kept, with the stored adapted
weights, and writes the same bytes as an uninterrupted run; a folder from other settings or a
changed input is started over. A confidence map (``--confidence``) is kept frame by frame beside
the image (``confidence_00000.npy``..., written first; ``confidence_template.json``) and
streamed out after it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np

from medsr.errors import MedsrError
from medsr.geometry import plan_output_grid
from medsr.io.atomic import write_atomically, write_text_atomically
from medsr.io.nifti import write_nifti_frames
from medsr.io.volume import Volume
from medsr.provenance import input_stat, provenance_description, sha256
from medsr.upsample.api import upsample_volume
from medsr.upsample.budget import default_work
from medsr.upsample.checks import DEFAULT_SEED, fit_steps_of

logger = logging.getLogger(__name__)

#: suffix of the hidden folder that keeps a series' finished frames (``.<output name><suffix>``)
PARTIAL_SUFFIX = ".medsr-partial"
_STATE, _MODEL, _CONFIDENCE = "state.json", "model.pt", "confidence"
#: the first frame's affine and meta of each kept kind (the image, its confidence map)
_TEMPLATES = {"frame": "template.json", _CONFIDENCE: "confidence_template.json"}

#: ``read_frames()``: the series' frames in order, as `medsr.io.read.read_volume_frames` gives them
FrameReader = Callable[[], Iterator[Volume]]


def partial_folder(output: Path) -> Path:
    """The hidden folder beside `output` that keeps its finished frames."""
    return output.with_name(f".{output.name}{PARTIAL_SUFFIX}")


def fit_mode(
    method: str, options: dict, fit_frame: int | None, fit_per_frame: bool, frame=None
) -> str | None:
    """How a series is fitted: ``"mean"``, ``"frame N"`` or ``"per-frame"``; None where nothing
    is fitted (another method, a coarser target: no model; ``fit_steps`` 0 without the residual
    gain, or with it where `frame`, one frame's geometry, is too short along the upsampled axis
    to hold slices back for it). With ``fit_steps`` 0 the residual gain is still fitted once, on
    the mean or the chosen frame (`medsr.upsample.heldout.calibrated`): a gain per frame would
    add frame-to-frame changes that are not in the scan."""
    from medsr.upsample.adapt import CALIBRATE_GAIN

    steps = fit_steps_of(options)
    calibrates = CALIBRATE_GAIN and options.get("calibrate", True)
    if calibrates and steps <= 0 and frame is not None and options.get("loaded") is not None:
        calibrates = _can_hold_back(frame, options)
    if method != "misr" or options.get("loaded") is None or (steps <= 0 and not calibrates):
        return None
    if fit_per_frame:
        return "per-frame"
    return "mean" if fit_frame is None else f"frame {fit_frame}"


def series_work(options: dict, frame: Volume, grid, frames: int, confidence=False) -> dict:
    """`options` with the `budget.default_work` of a series of `frames` frames like `frame` on
    `grid` (and their `confidence` maps): passes for all frames, a float32 budget per frame."""
    asked = dict(options, confidence=confidence)
    plan = default_work(asked, frame.spatial_shape, grid.shape, frame.num_channels, frames)
    return dict(options, **plan._asdict())


def _frame_grid(frame: Volume, options: dict):
    """The output grid of one frame of `frame`'s geometry for `options`' target."""
    target = {key: options.get(key) for key in ("spacing", "scale", "axis")}
    return plan_output_grid(frame.spatial_shape, frame.affine, **target)


def _can_hold_back(frame: Volume, options: dict) -> bool:
    """Whether `frame`'s upsampled axis (for `options`' target) is long enough for the slices
    that calibrate the residual gain without a fit (`medsr.upsample.heldout.guard_slab`'s
    length check)."""
    from medsr.upsample.heldout import guard_slab

    axis = _frame_grid(frame, options).axis
    return guard_slab(frame.spatial_shape[axis], options["loaded"][0].neighbours) is not None


def upsample_series(
    input_path: Path,
    output: Path,
    read_frames: FrameReader,
    *,
    frames: int,
    method: str,
    options: dict,
    settings: dict,
    fit_frame: int | None = None,
    fit_per_frame: bool = False,
    overwrite: bool = False,
    frame: Volume | None = None,
    confidence: Path | None = None,
) -> tuple[Path, Volume, Volume | None]:
    """Upsample every frame of a series and write it as one 4D NIfTI at `output`.

    Args:
        input_path: the 4D file (its size and sha256 decide whether kept frames are reused).
        output: the ``.nii`` / ``.nii.gz`` to write (checked by the caller).
        read_frames: the frames in order, each time it is called (`FrameReader`).
        frames: how many frames the series holds.
        method: as `upsample_volume`.
        options: `upsample_volume`'s options (the target, ``keep_dtype``, the learned method's
            options with the model ``loaded``).
        settings: anything else that decides the output (input geometry, slice thickness).
        fit_frame: fit on this frame instead of the mean.
        fit_per_frame: fit each frame on its own.
        overwrite: replace an existing output.
        frame: one frame's geometry (shape and affine; `fit_mode`).
        confidence: also write every frame's confidence map here, as one 4D NIfTI (checked).

    Returns:
        (the written path, the first frame's result without its array's frames: the template
        whose ``meta["provenance"]`` describes the series, ``fit_mode`` included; the same of the
        confidence map, or None).
    """
    mode = fit_mode(method, options, fit_frame, fit_per_frame, frame)
    mapped = {"confidence": True} if confidence is not None else {}  # else keys stay as they were
    if method == "misr" and frame is not None:
        options = series_work(options, frame, _frame_grid(frame, options), frames, bool(mapped))
    key = _settings_key(method, mode, {**options, **settings, **mapped})
    folder = _kept_frames_folder(output, input_path, frames, key)
    served, fit_record = dict(options), {} if mode is None else {"fit_mode": mode}
    if mode not in (None, "per-frame"):  # one fit serves every frame
        fitted = _fitted_once(folder, read_frames, mode, fit_frame, options)
        served, fit_record = serve_fitted(options, mode, *fitted)
    for index, volume in enumerate(read_frames()):
        if (folder / _frame_name(index)).exists():  # kept by an interrupted run
            continue
        result = upsample_volume(volume, method=method, confidence=bool(mapped), **served)
        add_fit_record(result, fit_record)  # and its map's
        if mapped:  # the map first: a frame whose image is kept is complete
            _keep_frame(folder, index, result.meta.pop("confidence"), _CONFIDENCE)
        _keep_frame(folder, index, result)
        logger.info("volume %d of %d done", index + 1, frames)
    paths = {"frame": output, **({_CONFIDENCE: confidence} if mapped else {})}
    if not overwrite and (there := [path for path in paths.values() if path.exists()]):
        raise MedsrError(f"output exists: '{there[0]}' (use --overwrite to replace it)")
    templates = {name: _template(folder, name) for name in paths}
    for name, path in paths.items():  # the image, then its map
        write_atomically(path, partial(_stream_kept, templates[name], folder, frames, name))
    shutil.rmtree(folder, ignore_errors=True)
    return output, templates["frame"], templates.get(_CONFIDENCE)


def mean_frame(read_frames: FrameReader) -> Volume:
    """The mean of the frames, float32, with the first frame's affine and meta: one pass, one
    frame and a float64 sum in memory."""
    total, count, first = None, 0, None
    for volume in read_frames():
        if total is None:
            total, first = np.zeros(volume.array.shape, np.float64), volume
        np.add(total, volume.array, out=total)
        count += 1
    if first is None:
        raise MedsrError("the series holds no frames")
    return first.with_array((total / count).astype(np.float32))


def fit_once(volume: Volume, options: dict, noise_from: Volume | None = None):
    """(the adapted generator on the device, steps run, the fit guard's record, what the fit took
    of the acquisition: `fit_thickness_ratio` and any `slice_profile`): the series' one
    fit, on `volume` (the mean of the frames or the chosen frame), for `options`' target and
    model (``options["loaded"]``), as `upsample_volume` would fit that volume; the noise put back
    on its inputs is that of `noise_from` (one frame: the mean's noise is averaged down)."""
    from medsr.runtime import fit_precision, resolve_device
    from medsr.upsample.adapt import FIT_PIXEL_LOSS, adapt_to_grid, fit_facts

    device = resolve_device(options.get("device"))
    prior, config = options["loaded"]
    grid = _frame_grid(volume, options)
    # resolved for the series by its callers (`series_work`); else one frame's default
    plan = default_work(options, volume.spatial_shape, grid.shape, volume.num_channels)
    adapted, steps_run = adapt_to_grid(
        prior.to(device),
        config,
        volume,
        grid,
        steps=plan.fit_steps,
        device=device,
        seed=options.get("seed", DEFAULT_SEED),
        seconds=options.get("fit_seconds"),
        progress=options.get("progress", False),
        guard=(guard := {}),
        noise_from=noise_from,
        precision=options.get("precision", "auto"),
        ensemble=plan.ensemble,
    )
    facts = fit_facts(volume, grid.axis)
    if steps_run:  # the fit's own arithmetic, as `upsample_misr` records it
        precision = options.get("precision", "auto")
        facts["fit_precision"] = fit_precision(precision, device, config.train.mixed_precision)
        facts["fit_pixel_loss"] = FIT_PIXEL_LOSS
    return adapted, int(steps_run), guard, facts


def serve_fitted(
    options: dict, mode: str, generator, steps_run: int, guard: dict, facts: dict | None = None
):
    """(`upsample_volume` options that reconstruct a frame with the series' adapted `generator`
    and fit no more, what every frame's provenance adds: the fit mode, steps, guard and what the
    fit took of the acquisition, `facts`)."""
    served = dict(options, loaded=(generator, options["loaded"][1]), fit_steps=0, calibrate=False)
    steps = fit_steps_of(options)
    record = {"fit_mode": mode, "fit_steps": int(steps), "fit_steps_run": int(steps_run)}
    record.update(facts or {})  # the frames run with fit_steps 0: the fit's own acquisition
    if guard:
        record["fit_guard"] = guard
    return served, record


def add_fit_record(result: Volume, fit_record: dict) -> None:
    """`result`'s provenance (and description) with the series fit's `fit_record`; and its
    confidence map's (``meta["confidence"]``) provenance, the map keeping its own description."""
    if fit_record:
        record = dict(result.meta["provenance"], **fit_record)
        result.meta.update(provenance=record, description=provenance_description(record))
        if (uncertainty := result.meta.get("confidence")) is not None:
            uncertainty.meta["provenance"] = dict(uncertainty.meta["provenance"], **fit_record)


def _fitted_once(folder: Path, read_frames: FrameReader, mode: str, fit_frame, options: dict):
    """`fit_once`'s (generator on the device, steps run, guard record, facts): loaded from
    `folder` when an interrupted run kept it, else fitted on the mean or the chosen frame and
    kept there. Both ways the generator is built from the kept weights, so a resumed run
    computes the same."""
    import torch

    from medsr.nets.checkpoint import build_generator
    from medsr.runtime import resolve_device

    device = resolve_device(options.get("device"))
    config = options["loaded"][1]
    kept = folder / _MODEL
    if not kept.exists():
        volume, noise_from = fit_source(read_frames, mode, fit_frame)
        logger.info("fitting once for the series, on the %s", mode)
        adapted, steps_run, guard, facts = fit_once(volume, options, noise_from)
        weights = {name: value.detach().cpu() for name, value in adapted.state_dict().items()}
        state = {"generator": weights, "steps_run": int(steps_run), "fit_guard": guard}
        state["facts"] = facts
        write_atomically(kept, lambda staged: torch.save(state, staged))
    state = torch.load(kept, map_location="cpu", weights_only=True)
    generator = build_generator(config)
    generator.load_state_dict(state["generator"])
    steps_run, guard = int(state["steps_run"]), state.get("fit_guard", {})
    return generator.to(device).eval(), steps_run, guard, state.get("facts", {})


def fit_source(
    read_frames: FrameReader, mode: str, fit_frame: int | None
) -> tuple[Volume, Volume | None]:
    """What a series' one fit learns from: the mean of its frames (mode ``"mean"``) or frame
    `fit_frame`; and the frame whose voxel noise the fit puts back (frame 0 for the mean, whose
    noise averaging lowered; None for one frame, which carries its own)."""
    if mode == "mean":
        return mean_frame(read_frames), _one_frame(read_frames, 0)
    if fit_frame is None:
        raise ValueError(f"fit mode {mode!r} learns from one frame: give fit_frame")
    return _one_frame(read_frames, fit_frame), None


def _one_frame(read_frames: FrameReader, index: int) -> Volume:
    frames = read_frames()
    try:
        return next(itertools.islice(frames, index, None))
    finally:
        close = getattr(frames, "close", None)  # a generator; a list's iterator has nothing
        if close is not None:
            close()


def _settings_key(method: str, mode: str | None, options: dict) -> dict:
    """What decides the frames' values besides the input: the options (not the loaded model
    object, the progress bars or the planes per call, `VALUELESS_SETTINGS`), the model's sha256,
    medsr, torch and the machine."""
    import torch

    from medsr._version import __version__
    from medsr.config import VALUELESS_SETTINGS
    from medsr.nets.checkpoint import default_model_path
    from medsr.provenance import machine_record
    from medsr.runtime import resolve_device

    ignored = ("loaded", "progress", *VALUELESS_SETTINGS)
    key = {k: v for k, v in options.items() if k not in ignored}
    key.update(method=method, fit_mode=mode, medsr=__version__, torch=torch.__version__)
    if method == "misr":
        key["model_sha256"] = sha256(options.get("model") or default_model_path())
        key["machine"] = machine_record(str(resolve_device(options.get("device"))))
    return key


def _kept_frames_folder(output: Path, input_path: Path, frames: int, settings: dict) -> Path:
    """The partial folder of `output`: reused when it was made for these settings and this
    input, else (one warning) emptied and started over."""
    folder = partial_folder(output)
    text = json.dumps(settings, sort_keys=True, default=str)
    size, mtime = input_stat(input_path)
    state = {
        "settings_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "frames": frames,
        "input": {"size": size, "mtime_ns": mtime, "sha256": sha256(input_path)},
    }
    if folder.is_dir():
        try:
            kept = json.loads((folder / _STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            kept = {}
        same_input = {k: kept.get("input", {}).get(k) for k in ("size", "sha256")} == {
            k: state["input"][k] for k in ("size", "sha256")
        }
        same = same_input and all(kept.get(k) == state[k] for k in ("settings_sha256", "frames"))
        if same:
            done = sum(1 for i in range(frames) if (folder / _frame_name(i)).exists())
            logger.info("resuming '%s': %d of %d frames kept", output, done, frames)
            return folder
        logger.warning(
            "'%s' was left by a run with other settings or another input; starting over", folder
        )
        shutil.rmtree(folder)
    elif folder.exists():
        raise MedsrError(f"'{folder}' is in the way of the series' kept frames; remove it")
    folder.mkdir()
    write_text_atomically(folder / _STATE, json.dumps(state, indent=2, sort_keys=True) + "\n")
    return folder


def _frame_name(index: int, name: str = "frame") -> str:
    return f"{name}_{index:05d}.npy"


def _keep_frame(folder: Path, index: int, result: Volume, name: str = "frame") -> None:
    """`result` (its fit record added) as ``<name>_N.npy`` (after, for frame 0, its affine and
    meta: the template of the series), each atomically: a frame whose ``frame_N.npy`` exists is
    complete; `name` ``confidence``: its confidence map's."""
    if index == 0:
        template = {"affine": result.affine.tolist(), "meta": result.meta}
        text = json.dumps(template, default=_plain)
        write_text_atomically(folder / _TEMPLATES[name], text)
    path = folder / _frame_name(index, name)
    write_atomically(path, lambda staged: _save_array(staged, result.array))


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save on a name would append ".npy" to a staged name
        np.save(handle, array)


def _plain(value):
    """numpy scalars and arrays in meta, for JSON."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot keep {type(value).__name__} in a series template")


def _template(folder: Path, name: str = "frame") -> Volume:
    """The first frame's result (affine and meta exactly as kept) for the 4D header; `name`
    ``confidence``: its confidence map's."""
    kept = json.loads((folder / _TEMPLATES[name]).read_text(encoding="utf-8"))
    array = np.load(folder / _frame_name(0, name), mmap_mode="r")
    return Volume(array, np.array(kept["affine"], dtype=np.float64), kept["meta"])


def _stream_kept(template: Volume, folder: Path, frames: int, name: str, staged: Path) -> None:
    write_nifti_frames(template, lambda: _arrays(folder, frames, name), staged)  # one 4D file


def _arrays(folder: Path, frames: int, name: str = "frame") -> Iterator[np.ndarray]:
    for index in range(frames):
        yield np.load(folder / _frame_name(index, name), mmap_mode="r")
