"""4D NIfTI series (DWI, fMRI): one fit for the series (or one per frame, as the 3D command),
frames kept as they finish and streamed into one 4D file, an interrupted run resumed."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import phantom_array

import medsr.upsample.adapt
import medsr.upsample.series4d
from medsr.cli import main
from medsr.io import Volume, read_volume, volume_frames
from medsr.io.nifti import write_nifti, write_nifti_frames
from medsr.io.volume import scaled_values
from medsr.upsample.api import upsample_volume
from medsr.upsample.series4d import partial_folder

MRI = Path(__file__).resolve().parents[2] / "shared" / "data" / "mri"


def _series_from_b0_runs(path: Path) -> list[np.ndarray]:
    """The three b0 runs, cropped and thinned to 3 mm slices, as one 4D file (TR 2.5 s)."""
    runs = []
    for run in (1, 2, 3):
        image = nib.load(MRI / f"heudiconv_b0_1.5mm_run{run}.nii.gz")
        runs.append(np.asarray(image.dataobj)[40:88, 40:88, 20:56:2])
    affine = image.affine @ np.diag([1.0, 1.0, 2.0, 1.0])
    series = nib.Nifti1Image(np.stack(runs, axis=3), affine)
    series.header.set_xyzt_units("mm", "sec")
    series.header["pixdim"][4] = 2.5
    nib.save(series, path)
    return runs


@pytest.mark.parametrize(("method", "steps"), [("bspline", None), ("misr", "3")])
def test_4d_series_round_trips_and_matches_the_3d_command(tmp_path, method, steps):
    if not MRI.exists():
        pytest.skip("development data not present")
    series = tmp_path / "dwi.nii.gz"
    runs = _series_from_b0_runs(series)
    assert volume_frames(series) == 3
    options = ["--method", method, "--quiet"] + (["--fit-steps", steps] if steps else [])
    out = tmp_path / "dwi_sr.nii.gz"
    per_frame = ["--fit-per-frame"] if method == "misr" else []  # each frame its own fit
    assert main(["upsample", str(series), "-o", str(out), *options, *per_frame]) == 0
    image = nib.load(out)
    assert image.shape[3] == 3 and image.header["pixdim"][4] == pytest.approx(2.5)
    assert image.header.get_xyzt_units() == ("mm", "sec")
    source = nib.load(series)
    # runs 1 and 2 are uint16, run 3 int16: the series holds all three as int32, and each of its
    # frames is upsampled as the 3D command upsamples that frame stored as int32 (clipped to
    # int32, not to the run's own type)
    assert source.get_data_dtype() == np.int32 == image.get_data_dtype()
    for index, run in enumerate(runs):
        single = tmp_path / f"run{index}.nii.gz"
        frame = np.asarray(source.dataobj[..., index])
        np.testing.assert_array_equal(frame, run)
        nib.save(nib.Nifti1Image(frame, source.affine), single)
        expected = tmp_path / f"run{index}_sr.nii.gz"
        assert main(["upsample", str(single), "-o", str(expected), *options]) == 0
        np.testing.assert_array_equal(
            np.asarray(image.dataobj[..., index]), read_volume(expected).array
        )
        np.testing.assert_allclose(image.affine, read_volume(expected).affine, atol=1e-5)


def test_uint8_with_three_volumes_is_a_series_not_rgb(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (8, 8, 5, 3), dtype=np.uint8)
    path = tmp_path / "three.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), path)
    assert volume_frames(path) == 3
    assert read_volume(path, frame=1).array.shape == (8, 8, 5)
    np.testing.assert_array_equal(read_volume(path, frame=2).array, data[..., 2])
    out = tmp_path / "out.nii.gz"
    assert main(["upsample", str(path), "-o", str(out), "--method", "linear", "--quiet"]) == 0
    assert nib.load(out).shape == (8, 8, 15, 3)


def test_a_series_is_only_written_as_nifti(tmp_path, capsys):
    data = np.zeros((8, 8, 5, 2), np.int16)
    path = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), path)
    assert main(["upsample", str(path), "-o", str(tmp_path / "o.nrrd"), "--method", "linear"]) == 1
    assert "write it as NIfTI" in capsys.readouterr().err
    assert not (tmp_path / "o.nrrd").exists()


def _bytes_read_from(path: Path, monkeypatch) -> list[int]:
    """Bytes read from `path` through `open` (nibabel's gzip reader opens files with it)."""
    import builtins

    counted, real_open = [0], builtins.open

    class Counted:
        def __init__(self, handle):
            self._handle = handle

        def read(self, *args):
            data = self._handle.read(*args)
            counted[0] += len(data)
            return data

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._handle.__exit__(*exc)

    def counting_open(file, *args, **kwargs):
        handle = real_open(file, *args, **kwargs)
        return Counted(handle) if str(file) == str(path) else handle

    monkeypatch.setattr(builtins, "open", counting_open)
    return counted


def test_a_compressed_series_is_decompressed_once(tmp_path, monkeypatch):
    # frame by frame, a .nii.gz was decompressed from its start for every frame: O(frames^2)
    frames = 8
    data = np.random.default_rng(0).integers(0, 4000, (48, 48, 24, frames), dtype=np.int16)
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    size = path.stat().st_size
    counted = _bytes_read_from(path, monkeypatch)
    out = tmp_path / "out.nii.gz"
    assert main(["upsample", str(path), "-o", str(out), "--method", "linear", "--quiet"]) == 0
    monkeypatch.undo()
    # the data once, plus a header block (one gzip read buffer) per frame
    assert counted[0] < size + (frames + 4) * 2**17, (counted[0], size)
    expected = upsample_volume(read_volume(path, frame=5), method="linear")
    np.testing.assert_array_equal(read_volume(out, frame=5).array, expected.array)


def _phantom_series(path: Path, frames: int = 3, shape=(24, 22, 8)) -> list[np.ndarray]:
    """A small int16 series: one phantom with a slow intensity drift and noise per frame."""
    rng = np.random.default_rng(1)
    base = phantom_array(shape) * 1000
    arrays = [
        (base * (1 + 0.02 * t) + rng.normal(0, 5, shape)).astype(np.int16) for t in range(frames)
    ]
    image = nib.Nifti1Image(np.stack(arrays, axis=3), np.diag([1.0, 1.0, 3.0, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 2.0
    nib.save(image, path)
    return arrays


def _count_fits(monkeypatch) -> list[int]:
    """The steps of every fit that runs (a fit of 0 steps is none)."""
    fits, real = [], medsr.upsample.adapt.adapt_to_scan

    def counted(*args, **kwargs):
        if kwargs["steps"] > 0:
            fits.append(kwargs["steps"])
        return real(*args, **kwargs)

    monkeypatch.setattr(medsr.upsample.adapt, "adapt_to_scan", counted)
    return fits


def _record(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))


def test_a_series_is_fitted_once_and_a_chosen_frame_gives_the_3d_result(tmp_path, monkeypatch):
    series = tmp_path / "s.nii.gz"
    arrays = _phantom_series(series)
    fits = _count_fits(monkeypatch)
    argv = ["upsample", str(series), "--fit-steps", "2", "--quiet"]
    assert main([*argv, "-o", str(tmp_path / "mean.nii.gz")]) == 0
    assert fits == [2]  # one fit, on the mean, for three frames
    record = _record(tmp_path / "mean.nii.gz")
    assert (record["fit_mode"], record["fit_steps"], record["fit_steps_run"]) == ("mean", 2, 2)
    assert "fit:mean" in nib.load(tmp_path / "mean.nii.gz").header["descrip"].item().decode()
    fits.clear()
    chosen = tmp_path / "frame1.nii.gz"
    assert main([*argv, "-o", str(chosen), "--fit-frame", "1"]) == 0
    assert fits == [2] and _record(chosen)["fit_mode"] == "frame 1"
    # the fit on frame 1 serves frame 1 exactly as the 3D command upsamples that frame alone
    single = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(arrays[1], np.diag([1.0, 1.0, 3.0, 1.0])), single)
    assert main(["upsample", str(single), "-o", str(tmp_path / "one_sr.nii.gz"), *argv[2:]]) == 0
    np.testing.assert_array_equal(
        np.asarray(nib.load(chosen).dataobj[..., 1]), read_volume(tmp_path / "one_sr.nii.gz").array
    )
    fits.clear()
    assert main([*argv, "-o", str(tmp_path / "each.nii.gz"), "--fit-per-frame"]) == 0
    assert fits == [2, 2, 2] and _record(tmp_path / "each.nii.gz")["fit_mode"] == "per-frame"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # partial folders gone


@pytest.mark.parametrize("steps", ["0", "2"])
@pytest.mark.parametrize("ensemble", [[], ["--ensemble", "2"]])
def test_a_series_gain_is_fitted_for_the_passes_its_frames_take(
    tmp_path, monkeypatch, ensemble, steps
):
    """The series' one gain (the prior alone's; after a fit only where `CALIBRATE_AFTER_FIT`
    asks for it) is fitted on as many passes as its frames are reconstructed with."""
    import medsr.upsample.adapt as adapt

    monkeypatch.setattr(adapt, "CALIBRATE_AFTER_FIT", True)
    series = tmp_path / "s.nii.gz"
    _phantom_series(series, frames=2, shape=(30, 28, 20))  # a fit holds slices back from 20
    out = tmp_path / "sr.nii.gz"
    argv = ["upsample", str(series), "-o", str(out), "--fit-steps", steps, "--quiet", *ensemble]
    assert main(argv) == 0
    record = _record(out)
    assert record["fit_guard"]["gain_passes"] == record["ensemble"] == (2 if ensemble else 4)


def test_a_series_fit_fits_no_gain_by_default(tmp_path):
    """After the series' one fit no gain is fitted (`CALIBRATE_AFTER_FIT` off), as for a 3D
    volume: the record has the guard's choice and no gain."""
    series = tmp_path / "s.nii.gz"
    _phantom_series(series, frames=2, shape=(30, 28, 20))
    out = tmp_path / "sr.nii.gz"
    assert main(["upsample", str(series), "-o", str(out), "--fit-steps", "2", "--quiet"]) == 0
    guard = _record(out)["fit_guard"]
    assert guard["planes"] == 2 and guard["rule"].startswith("best PSNR")
    assert "residual_gain" not in guard and "gain_passes" not in guard


def _stream_cases() -> dict[str, tuple[list[np.ndarray], dict | None]]:
    rng = np.random.default_rng(0)
    scaling = {"dtype": "int16", "slope": 0.5, "inter": -1024.0}

    def ints():
        return rng.integers(-100, 3000, (7, 6, 5)).astype(np.int16)

    return {
        "int32": ([rng.integers(-5, 5000, (7, 6, 5)).astype(np.int32) for _ in range(3)], None),
        "float32": ([rng.random((7, 6, 5)).astype(np.float32) for _ in range(3)], None),
        "scaled": ([scaled_values(ints(), scaling) for _ in range(3)], scaling),
        "scaled, one frame not": (
            [scaled_values(ints(), scaling), rng.random((7, 6, 5)).astype(np.float32)],
            scaling,
        ),
    }


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("case", sorted(_stream_cases()))
def test_the_streamed_4d_file_is_the_stacked_writers_byte_for_byte(tmp_path, case, suffix):
    arrays, scaling = _stream_cases()[case]
    affine = np.diag([1.0, 1.2, 3.0, 1.0])
    affine[:3, 3] = (4.0, -5.0, 6.0)
    meta = {"qform_code": 1, "sform_code": 1, "description": "d", "frame_spacing": 2.5}
    meta.update(time_unit="sec", **({"scaling": scaling} if scaling else {}))
    volumes = [Volume(a, affine, dict(meta)) for a in arrays]
    write_nifti(volumes[0], tmp_path / f"stacked{suffix}", volumes)
    write_nifti_frames(volumes[0], lambda: iter(arrays), tmp_path / f"streamed{suffix}")
    stacked = (tmp_path / f"stacked{suffix}").read_bytes()
    assert (tmp_path / f"streamed{suffix}").read_bytes() == stacked
    expected = "int16" if case == "scaled" else np.result_type(*arrays).name
    assert nib.load(tmp_path / f"streamed{suffix}").get_data_dtype() == expected


def _interrupt_after(monkeypatch, frames: int, error=RuntimeError) -> list[int]:
    """Make the run die once `frames` frames are kept (as a kill would: nothing after it)."""
    kept, real = [], medsr.upsample.series4d._keep_frame

    def keep(folder, index, result, name="frame"):
        if name == "frame":  # a frame is kept once its image is (its map, if any, before it)
            if len(kept) == frames:
                raise error("interrupted")
            kept.append(index)
        real(folder, index, result, name)

    monkeypatch.setattr(medsr.upsample.series4d, "_keep_frame", keep)
    return kept


def test_an_interrupted_series_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    series = tmp_path / "s.nii.gz"
    _phantom_series(series, frames=4)
    argv = ["upsample", str(series), "--fit-steps", "2", "--quiet"]
    whole = tmp_path / "whole.nii.gz"
    assert main([*argv, "-o", str(whole)]) == 0
    out = tmp_path / "out.nii.gz"
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="interrupted"):
        main([*argv, "-o", str(out)])
    monkeypatch.undo()
    partial = partial_folder(out)
    assert sorted(p.name for p in partial.glob("frame_*.npy")) == [
        "frame_00000.npy",
        "frame_00001.npy",
    ]
    assert (partial / "model.pt").exists() and not out.exists()
    fits, calls = _count_fits(monkeypatch), []
    real = medsr.upsample.series4d.upsample_volume
    monkeypatch.setattr(
        medsr.upsample.series4d,
        "upsample_volume",
        lambda *a, **k: calls.append(1) or real(*a, **k),
    )
    assert main([*argv, "-o", str(out)]) == 0
    assert fits == [] and len(calls) == 2  # the kept fit, and only the two missing frames
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists()


def test_a_series_confidence_map_is_every_frames_map_and_resumes(tmp_path, monkeypatch):
    """``--confidence`` on a 4D series: one 4D map on the output's grid, whose frame k is the 3D
    command's map of frame k (each frame its own fit, as the 3D command); an interrupted run
    (its map of the next frame kept, not its image) resumes to the same bytes of both files."""
    series = tmp_path / "s.nii.gz"
    arrays = _phantom_series(series, frames=3)
    argv = ["upsample", str(series), "--fit-steps", "2", "--fit-per-frame", "--quiet"]
    out, mapped = tmp_path / "out.nii.gz", tmp_path / "map.nii.gz"
    assert main([*argv, "-o", str(out), "--confidence", str(mapped)]) == 0
    image, uncertainty = nib.load(out), nib.load(mapped)
    assert uncertainty.shape == image.shape == (24, 22, 24, 3)
    np.testing.assert_allclose(uncertainty.affine, image.affine)
    record = _record(mapped)
    assert record["frames"] == 3 and record["fit_mode"] == "per-frame"
    assert bytes(uncertainty.header["descrip"]).startswith(b"medsr confidence")  # the map's own
    for index, array in enumerate(arrays):
        single = tmp_path / f"frame{index}.nii.gz"
        nib.save(nib.Nifti1Image(array, nib.load(series).affine), single)
        one, one_map = tmp_path / f"one{index}.nii.gz", tmp_path / f"map{index}.nii.gz"
        assert main(["upsample", str(single), "-o", str(one), "--fit-steps", "2", "--quiet",
                     "--confidence", str(one_map)]) == 0  # fmt: skip
        np.testing.assert_array_equal(
            np.asarray(uncertainty.dataobj[..., index]), read_volume(one_map).array
        )
    resumed, resumed_map = tmp_path / "again.nii.gz", tmp_path / "again_map.nii.gz"
    again = [*argv, "-o", str(resumed), "--confidence", str(resumed_map)]
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="interrupted"):
        main(again)
    monkeypatch.undo()
    kept = sorted(p.name for p in partial_folder(resumed).glob("*.npy"))
    assert kept == ["confidence_00000.npy", "confidence_00001.npy", "frame_00000.npy"]
    assert main(again) == 0
    assert resumed.read_bytes() == out.read_bytes()
    assert resumed_map.read_bytes() == mapped.read_bytes()


def test_kept_frames_without_a_map_are_not_reused_for_one(tmp_path, monkeypatch, capsys):
    series = tmp_path / "s.nii.gz"
    _phantom_series(series, frames=2, shape=(24, 22, 16))  # long enough to calibrate on
    argv = ["upsample", str(series), "--fit-steps", "0", "--quiet", "-o", str(tmp_path / "o.nii")]
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        main(argv)
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*argv, "--confidence", str(tmp_path / "map.nii.gz")]) == 0
    assert "starting over" in capsys.readouterr().err
    assert nib.load(tmp_path / "map.nii.gz").shape[3] == 2
    # mode "mean": the gain fitted once serves every frame, and the map's record says so
    record = _record(tmp_path / "map.nii.gz")
    assert record["fit_mode"] == "mean" and "residual_gain" in record["fit_guard"]


def test_kept_frames_of_other_settings_or_a_changed_input_are_not_reused(
    tmp_path, monkeypatch, capsys
):
    series = tmp_path / "s.nii.gz"
    _phantom_series(series, frames=3)
    out = tmp_path / "out.nii.gz"
    linear = ["upsample", str(series), "-o", str(out), "--method", "linear", "--quiet"]
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        main(linear)
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*linear, "--dtype", "float32"]) == 0  # other settings: start over
    warned = [line for line in capsys.readouterr().err.splitlines() if "starting over" in line]
    assert len(warned) == 1, warned
    expected = upsample_volume(read_volume(series, frame=2), method="linear", keep_dtype=False)
    np.testing.assert_array_equal(read_volume(out, frame=2).array, expected.array)
    out.unlink()
    out.with_name(out.name + ".json").unlink()  # its record too: an output of its own
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        main(linear)
    monkeypatch.undo()
    _phantom_series(series, frames=3, shape=(24, 22, 9))  # the input changed
    capsys.readouterr()
    assert main(linear) == 0
    assert capsys.readouterr().err.count("starting over") == 1
    assert nib.load(out).shape == (24, 22, 27, 3)


def test_kept_frames_are_reused_whatever_the_planes_per_call():
    """The planes per call change no value (`VALUELESS_SETTINGS`): a series resumed with another
    ``--batch-size`` keeps its frames; another fit does not."""
    from medsr.upsample.series4d import _settings_key

    options = {"fit_steps": 20, "batch_size": 4}
    key = _settings_key("linear", None, options)
    assert key == _settings_key("linear", None, dict(options, batch_size=8))
    assert key != _settings_key("linear", None, dict(options, fit_steps=40))


def test_the_series_fit_source_is_the_mean_or_the_chosen_frame():
    from medsr.io import Volume
    from medsr.upsample.series4d import fit_source

    frames = [
        Volume(array=np.full((4, 4, 3), float(i), np.float32), affine=np.eye(4)) for i in (1, 3)
    ]
    volume, noise_from = fit_source(lambda: iter(frames), "mean", None)
    np.testing.assert_allclose(volume.array, 2.0)  # the mean; its noise is taken from frame 0
    assert noise_from.array[0, 0, 0] == 1.0
    volume, noise_from = fit_source(lambda: iter(frames), "frame 1", 1)
    assert volume.array[0, 0, 0] == 3.0 and noise_from is None
    with pytest.raises(ValueError, match="give fit_frame"):
        fit_source(lambda: iter(frames), "frame 1", None)


def test_without_a_fit_a_series_is_calibrated_once_on_the_mean(tmp_path, monkeypatch):
    """`--fit-steps 0`: the residual gain is fitted once, on the mean of the frames, and serves
    every frame (`serve_fitted` turns calibration off): a gain per frame would put changes
    between frames that are not in the scan."""
    calls, real = [], medsr.upsample.adapt.adapt_to_scan

    def counted(*args, **kwargs):
        calls.append((kwargs["steps"], kwargs.get("calibrate", True)))
        return real(*args, **kwargs)

    monkeypatch.setattr(medsr.upsample.adapt, "adapt_to_scan", counted)
    series = tmp_path / "s.nii.gz"
    _phantom_series(series, shape=(30, 28, 16))
    out = tmp_path / "o.nii.gz"
    assert main(["upsample", str(series), "-o", str(out), "--fit-steps", "0", "--quiet"]) == 0
    record = _record(out)
    assert record["fit_mode"] == "mean" and record["fit_steps_run"] == 0
    assert "residual_gain" in record["fit_guard"]
    assert [calibrate for steps, calibrate in calls if calibrate] == [True]  # one calibration


def test_without_a_fit_a_series_too_short_to_hold_slices_back_is_not_read_for_a_mean(
    tmp_path, monkeypatch
):
    """`--fit-steps 0` on a thick axis too short for held-back slices: nothing to fit and nothing
    to calibrate on, so there is no series fit (no pass over the frames for their mean, no
    ``fit_mode``); every frame records why there was no gain, as a 3D volume does."""
    import medsr.upsample.series4d as series4d
    from medsr.upsample.adapt import SHORT_AXIS

    means = []
    real = series4d.mean_frame
    monkeypatch.setattr(series4d, "mean_frame", lambda read: means.append(1) or real(read))
    series = tmp_path / "s.nii.gz"
    _phantom_series(series, shape=(30, 28, 8))  # 8 thick slices: fewer than guard_slab needs
    out = tmp_path / "o.nii.gz"
    assert main(["upsample", str(series), "-o", str(out), "--fit-steps", "0", "--quiet"]) == 0
    record = _record(out)
    assert "fit_mode" not in record and not means
    assert record["fit_guard"] == {"reason": SHORT_AXIS}


def test_the_series_fit_mode_checks_the_axis_that_is_upsampled():
    """Without a fit, whether a series can be calibrated once depends on the length of the axis
    the target upsamples (an explicit ``axis`` too, as the MONAI transform passes it), not on
    the header's thickest axis."""
    from types import SimpleNamespace

    from medsr.io import Volume
    from medsr.upsample.series4d import fit_mode

    frame = Volume(array=np.zeros((30, 28, 8), np.float32), affine=np.diag([1.0, 1.0, 3.0, 1.0]))
    options = {"fit_steps": 0, "loaded": (SimpleNamespace(neighbours=3), None)}
    assert fit_mode("misr", options, None, False, frame) is None  # 8 thick slices: too short
    along_0 = {**options, "axis": 0, "scale": 2.0}
    assert fit_mode("misr", along_0, None, False, frame) == "mean"  # 30 slices along axis 0
    assert fit_mode("misr", {**options, "fit_steps": 5}, None, False, frame) == "mean"
