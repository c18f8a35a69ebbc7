import numpy as np
import pytest
import torch
from conftest import make_affine, phantom_array

from medsr.cli import main
from medsr.geometry import plan_output_grid, world_extent
from medsr.io import Volume, read_volume, write_volume
from medsr.nets.checkpoint import default_model_path, load_generator
from medsr.upsample.api import upsample_volume
from medsr.upsample.baseline import upsample_baseline
from medsr.upsample.reconstruct import plane_orientations


def _thick_volume(orientation="LPS", axis=2, thick=3.0, fine=1.0, shape=(14, 12, 6)):
    spacing = [fine, fine, fine]
    spacing[axis] = thick
    shape = list(shape)
    shape[axis], shape[2] = shape[2], shape[axis]
    return Volume(array=phantom_array(tuple(shape)), affine=make_affine(orientation, spacing))


def test_identity_model_reassembles_the_bspline_upsampling(identity_checkpoint):
    volume = _thick_volume()
    result = upsample_volume(
        volume,
        method="misr",
        model=identity_checkpoint,
        fit_steps=0,
        keep_dtype=False,
        device="cpu",
    )
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    expected = upsample_baseline(volume, grid, "bspline", keep_dtype=False)
    np.testing.assert_allclose(result.array, expected.array, atol=1e-3)
    np.testing.assert_allclose(result.affine, grid.affine)


def test_constant_volume_stays_constant(identity_checkpoint):
    volume = _thick_volume()
    constant = volume.with_array(np.full(volume.array.shape, 812, np.int16))
    result = upsample_volume(
        constant, method="misr", model=identity_checkpoint, fit_steps=0, scale=2.5, device="cpu"
    )
    assert result.array.dtype == np.int16 and np.all(result.array == 812)


@pytest.mark.parametrize("orientation", ["RAS", "LIA", "oblique"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_misr_output_overlays_the_input(identity_checkpoint, orientation, axis):
    volume = _thick_volume(orientation, axis, thick=2.6)
    result = upsample_volume(
        volume, method="misr", model=identity_checkpoint, fit_steps=0, device="cpu"
    )
    assert result.spatial_shape[axis] == round(6 * 2.6)
    for a, b in zip(
        world_extent(volume.spatial_shape, volume.affine, axis),
        world_extent(result.spatial_shape, result.affine, axis),
        strict=True,
    ):
        assert np.linalg.norm(a - b) <= 0.25 + 1e-6
    np.testing.assert_allclose(np.linalg.norm(result.affine[:3, :3], axis=0)[axis], 1.0)


def test_adaptation_changes_the_model_and_keeps_geometry(identity_checkpoint):
    volume = _thick_volume(shape=(30, 28, 8))
    fitted = upsample_volume(
        volume,
        method="misr",
        model=identity_checkpoint,
        fit_steps=5,
        keep_dtype=False,
        device="cpu",
    )
    plain = upsample_volume(
        volume,
        method="misr",
        model=identity_checkpoint,
        fit_steps=0,
        keep_dtype=False,
        device="cpu",
    )
    assert fitted.array.shape == plain.array.shape
    assert not np.allclose(fitted.array, plain.array)
    np.testing.assert_allclose(fitted.affine, plain.affine)


def test_rgb_channels_share_the_model(identity_checkpoint):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 9, 4, 3), dtype=np.uint8)
    volume = Volume(array=rgb, affine=np.diag([1.0, 1.0, 3.0, 1.0]))
    result = upsample_volume(
        volume, method="misr", model=identity_checkpoint, fit_steps=0, device="cpu"
    )
    assert result.array.shape == (10, 9, 12, 3) and result.array.dtype == np.uint8


@pytest.mark.parametrize("factor", [1.2, 2.5, 3.0, 7.3, 10.0, 16.0])
def test_any_factor_lands_on_the_output_grid(identity_checkpoint, factor):
    volume = _thick_volume(thick=factor, shape=(10, 9, 6))
    result = upsample_volume(
        volume, method="misr", model=identity_checkpoint, fit_steps=0, keep_dtype=False
    )
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    expected = upsample_baseline(volume, grid, "bspline", keep_dtype=False)
    assert result.spatial_shape == grid.shape
    np.testing.assert_allclose(result.array, expected.array, atol=1e-3)


def test_factor_above_the_learned_range_is_a_one_line_error(identity_checkpoint):
    from medsr.errors import MedsrError

    volume = _thick_volume(thick=20.0, shape=(10, 9, 6))
    with pytest.raises(MedsrError, match=r"--spacing 1\.25 \(mm\)"):
        upsample_volume(volume, method="misr", model=identity_checkpoint, fit_steps=0)
    result = upsample_volume(
        volume, method="misr", model=identity_checkpoint, fit_steps=0, spacing=1.25
    )
    assert result.spatial_shape[2] == 6 * 16


def test_neighbours_are_one_thick_spacing_apart_at_inference():
    assert plane_orientations(2, np.array([0.5, 0.5, 3.6])) == [(0, 1, 7), (1, 0, 7)]
    assert plane_orientations(0, np.array([4.0, 1.0, 2.0])) == [(1, 2, 4), (2, 1, 2)]


def test_cli_model_round_trip_with_a_trained_checkpoint(tmp_path, hr_volume):
    hr = write_volume(hr_volume, tmp_path / "hr.nii.gz")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(hr),
                "--out",
                str(run),
                "--quiet",
                "--device",
                "cpu",
                "--set",
                "train.steps=2",
                "--set",
                "model.num_features=4",
                "--set",
                "model.num_blocks=1",
                "--set",
                "data.batch_size=2",
                "--set",
                "loss.perceptual_weight=0",
                "--set",
                "loss.adversarial_weight=0",
            ]
        )
        == 0
    )
    scan = write_volume(_thick_volume(), tmp_path / "scan.nii.gz")
    out = tmp_path / "scan_sr.nii.gz"
    assert (
        main(
            [
                "upsample",
                str(scan),
                "-o",
                str(out),
                "--model",
                str(run / "checkpoints" / "latest.pt"),
                "--fit-steps",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    result = read_volume(out)
    assert result.spatial_shape == (14, 12, 18)
    np.testing.assert_allclose(
        result.affine, plan_output_grid((14, 12, 6), read_volume(scan).affine).affine, atol=1e-5
    )


def test_ctrl_c_leaves_no_partial_output(tmp_path, identity_checkpoint, monkeypatch, capsys):
    import medsr.upsample.reconstruct

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(medsr.upsample.reconstruct, "reconstruct", interrupted)
    scan = write_volume(_thick_volume(), tmp_path / "scan.nii.gz")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(
        [
            "upsample",
            str(scan),
            "--model",
            str(identity_checkpoint),
            "--fit-steps",
            "0",
            "--quiet",
        ]
    )
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_model_options_need_method_misr(phantom_path, capsys):
    assert main(["upsample", str(phantom_path), "--method", "linear", "--fit-seconds", "3"]) == 1
    assert "misr only" in capsys.readouterr().err


def test_bad_checkpoint_is_a_clear_error(tmp_path, phantom_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert (
        main(
            [
                "upsample",
                str(phantom_path),
                "--model",
                str(tmp_path / "bad.pt"),
                "-o",
                str(tmp_path / "o.nii.gz"),
            ]
        )
        == 1
    )
    assert "cannot load model checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_shipped_weights_load():
    path = default_model_path()
    if not path.exists():
        pytest.fail(f"shipped weights missing at {path}")
    generator, config = load_generator(path)
    assert path.stat().st_size < 5 * 2**20
    assert config.data.max_factor >= 16
    positions = torch.arange(12, dtype=torch.float32) / 3 - 1 / 3
    with torch.no_grad():
        out = generator(torch.zeros(1, generator.neighbours, 8, 4), positions, 3.0)
    assert out.shape == (1, 1, 8, 12)


def test_same_command_writes_the_same_file_with_its_provenance(tmp_path, identity_checkpoint):
    import hashlib
    import json

    scan = write_volume(_thick_volume(shape=(30, 28, 8)), tmp_path / "scan.nii.gz")
    digests = []
    for name in ("a.nii.gz", "b.nii.gz"):
        argv = ["upsample", str(scan), "-o", str(tmp_path / name), "--quiet"]
        argv += ["--model", str(identity_checkpoint), "--fit-steps", "4", "--device", "cpu"]
        assert main(argv) == 0
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    record = json.loads((tmp_path / "a.nii.gz.json").read_text(encoding="utf-8"))
    assert record["method"] == "misr" and record["fit_steps_run"] == 4 and record["seed"] == 0
    assert record["factor"] == pytest.approx(3.0) and record["output_shape"] == [30, 28, 24]
    expected = hashlib.sha256(identity_checkpoint.read_bytes()).hexdigest()
    assert record["model_sha256"] == expected
    assert record["input_sha256"] == hashlib.sha256(scan.read_bytes()).hexdigest()
    header = __import__("nibabel").load(tmp_path / "a.nii.gz").header
    assert header["descrip"].item().decode().startswith("medsr ")
    assert f"m{expected[:8]} s4 r0" in header["descrip"].item().decode()


def test_a_different_seed_gives_a_different_fit(identity_checkpoint):
    volume = _thick_volume(shape=(30, 28, 8))
    options = {"method": "misr", "model": identity_checkpoint, "fit_steps": 3, "keep_dtype": False}
    first = upsample_volume(volume, seed=0, **options)
    again = upsample_volume(volume, seed=0, **options)
    other = upsample_volume(volume, seed=1, **options)
    np.testing.assert_array_equal(first.array, again.array)
    assert not np.array_equal(first.array, other.array)


def _small_generator_and_scan(shape: tuple[int, int, int]):
    """A small untrained generator with a non-zero residual, a thick scan of `shape` and its
    default grid."""
    from medsr.nets import MISRGenerator

    torch.manual_seed(0)
    generator = MISRGenerator(num_features=8, num_blocks=1, hidden=8)
    torch.nn.init.normal_(generator.decode[-1].weight, std=0.1)
    volume = _thick_volume(thick=3.5, shape=shape)
    return generator, volume, plan_output_grid(volume.spatial_shape, volume.affine)


def test_decoding_in_chunks_of_positions_gives_the_same_volume(monkeypatch):
    import medsr.upsample.reconstruct

    generator, volume, grid = _small_generator_and_scan((12, 10, 6))
    whole = medsr.upsample.reconstruct.reconstruct_volume(
        volume, grid, generator, device=torch.device("cpu")
    )
    monkeypatch.setattr(medsr.upsample.reconstruct, "DECODER_BUDGET", 1)  # one position per call
    chunked = medsr.upsample.reconstruct.reconstruct_volume(
        volume, grid, generator, device=torch.device("cpu")
    )
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_planes_per_call_do_not_change_the_volume(precision):
    """`PLANE_BATCH` was lowered for memory on the promise that the batch changes no value: the
    planes of a batch are independent (a batch that does not divide the planes is covered too)."""
    import medsr.upsample.reconstruct
    from medsr.config import PLANE_BATCH

    generator, volume, grid = _small_generator_and_scan((13, 10, 6))
    outputs = [
        medsr.upsample.reconstruct.reconstruct_volume(
            volume,
            grid,
            generator,
            device=torch.device("cpu"),
            batch_size=size,
            precision=precision,
        )
        for size in (1, 3, PLANE_BATCH, 8)
    ]
    # bf16 kernels may block a batch differently by its size on another CPU: a bf16 rounding
    # (2^-8 of the range) is the most that may move; fp32 to its own rounding
    atol = 2**-8 * float(np.ptp(volume.array)) if precision == "bf16" else 1e-5
    for output in outputs[1:]:
        np.testing.assert_allclose(output, outputs[0], rtol=1e-5, atol=atol)


def test_every_entry_point_defaults_to_the_shared_plane_batch():
    import inspect

    import medsr.upsample.api
    import medsr.upsample.reconstruct
    from medsr.config import PLANE_BATCH

    functions = (
        medsr.upsample.api.upsample_misr,
        medsr.upsample.reconstruct.reconstruct,
        medsr.upsample.reconstruct.reconstruct_volume,
    )
    for function in functions:
        assert inspect.signature(function).parameters["batch_size"].default == PLANE_BATCH


def test_a_batch_of_no_planes_is_refused(phantom_path, tmp_path, capsys):
    import medsr.upsample.reconstruct

    volume = _thick_volume()
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    generator, _ = load_generator(default_model_path())
    with pytest.raises(ValueError, match="at least 1 plane"):
        medsr.upsample.reconstruct.reconstruct_volume(
            volume, grid, generator, device=torch.device("cpu"), batch_size=0
        )
    out = tmp_path / "out.nii.gz"
    with pytest.raises(SystemExit) as exit_info:
        main(["upsample", str(phantom_path), "-o", str(out), "--batch-size", "-1"])
    assert exit_info.value.code == 2 and "--batch-size" in capsys.readouterr().err
    assert not out.exists()


def test_the_cli_reconstructs_with_the_shared_plane_batch(phantom_path, tmp_path, monkeypatch):
    import medsr.upsample.api
    from medsr.config import PLANE_BATCH

    seen = []
    real = medsr.upsample.api.upsample_misr

    def spy(*args, **kwargs):
        seen.append(kwargs["batch_size"])
        return real(*args, **kwargs)

    monkeypatch.setattr(medsr.upsample.api, "upsample_misr", spy)
    out = tmp_path / "out.nii.gz"
    argv = ["upsample", str(phantom_path), "-o", str(out), "--fit-steps", "0", "--quiet"]
    assert main(argv) == 0
    assert main([*argv, "--overwrite", "--batch-size", "2"]) == 0
    assert seen == [PLANE_BATCH, 2]


def _checkpoint(path, config):
    from medsr import __version__
    from medsr.config import config_to_dict
    from medsr.nets.checkpoint import build_generator

    torch.manual_seed(0)
    state = {"generator": build_generator(config).state_dict(), "config": config_to_dict(config)}
    torch.save({**state, "version": __version__}, path)
    return path


@pytest.mark.parametrize(
    "train_run", [{"train": {"steps": 40, "stop_at": 31}}, {"data": {"workers": 2}}]
)
def test_the_fit_ignores_the_training_runs_stop_at_and_workers(
    tmp_path, tiny_config, monkeypatch, train_run
):
    # pipelines/configs/default_model.yaml trains with stop_at: its checkpoint must upsample
    import dataclasses

    import torch.utils.data

    def no_workers(*args, **kwargs):
        raise AssertionError("the fit started DataLoader workers")

    monkeypatch.setattr(torch.utils.data, "DataLoader", no_workers)
    sections = {
        name: dataclasses.replace(getattr(tiny_config, name), **values)
        for name, values in train_run.items()
    }
    model = _checkpoint(tmp_path / "run.pt", dataclasses.replace(tiny_config, **sections))
    volume = _thick_volume(shape=(20, 18, 6))
    result = upsample_volume(volume, method="misr", model=model, fit_steps=2, device="cpu")
    assert result.meta["provenance"]["fit_steps_run"] == 2


def test_the_fit_config_is_the_fits_own(tiny_config):
    import dataclasses

    from medsr.upsample.adapt import adaptation_config

    trained = dataclasses.replace(
        tiny_config,
        data=dataclasses.replace(
            tiny_config.data, workers=4, noise_max=0.2, profiles=("gaussian",)
        ),
        train=dataclasses.replace(tiny_config.train, steps=100, stop_at=90, warmup_steps=50),
    )
    fit = adaptation_config(trained, steps=7, seed=3)
    assert fit.model == trained.model
    train = fit.train
    assert (train.steps, train.stop_at, train.warmup_steps, train.seed) == (7, None, 0, 3)
    assert fit.data.workers == 0 and fit.data.noise_max == 0 and fit.data.self_supervised
    assert fit.data.profiles == ("gaussian",) and fit.data.batch_size == trained.data.batch_size
    # a scan that does not state its thickness is taken as contiguous, not the training range
    assert fit.data.thickness_ratios == (1.0, 1.0)
    told = adaptation_config(trained, steps=7, seed=3, thickness_ratio=0.6)
    assert told.data.thickness_ratios == (0.6, 0.6)
    assert fit.loss.perceptual_weight == 0 and fit.loss.adversarial_weight == 0
    # the fit's own pixel loss (chosen on validation), whatever the training run's
    from medsr.upsample.adapt import FIT_PIXEL_LOSS

    l1_trained = dataclasses.replace(
        trained, loss=dataclasses.replace(trained.loss, pixel_loss="l1")
    )
    assert adaptation_config(l1_trained, steps=7, seed=3).loss.pixel_loss == FIT_PIXEL_LOSS == "mse"
    # the fit's own rate and schedule (chosen on validation curves), not the training run's
    assert (train.learning_rate, train.lr_schedule) == (3e-4, "cosine")
    # and its own query budget, never the training run's
    from medsr.upsample.adapt import FIT_QUERY_POSITIONS

    assert fit.data.query_positions == FIT_QUERY_POSITIONS


def test_the_fits_cosine_reaches_zero_at_its_last_step(tiny_config):
    import math
    from types import SimpleNamespace

    from medsr.train.trainer import Trainer
    from medsr.upsample.adapt import adaptation_config

    fit = adaptation_config(tiny_config, steps=200, seed=0)
    # the schedule a fresh Trainer of this config holds: (start 0, factor 1, end train.steps)
    trainer = SimpleNamespace(config=fit, schedule=(0, 1.0, fit.train.steps))
    factors = [Trainer.schedule_factor(trainer, step) for step in (0, 100, 200)]
    assert factors[0] == 1.0 and math.isclose(factors[1], 0.5) and factors[2] < 1e-12


def _fit_sources(monkeypatch) -> list:
    import medsr.upsample.adapt

    seen = []

    def spy(sources, config, neighbours):
        seen.extend(sources)
        return sampler(sources, config, neighbours)

    sampler = medsr.upsample.adapt.PairSampler
    monkeypatch.setattr(medsr.upsample.adapt, "PairSampler", spy)
    return seen


def test_the_fit_degrades_the_axis_that_is_upsampled(identity_checkpoint, monkeypatch):
    # thick axis 2 in the header, but --axis 0 asked for: the fit learns axis 0's factor from
    # the slices across axis 0 (axes 1 and 2 made thick)
    seen = _fit_sources(monkeypatch)
    volume = _thick_volume(shape=(12, 20, 6))
    result = upsample_volume(
        volume, method="misr", model=identity_checkpoint, axis=0, scale=2, fit_steps=1
    )
    assert result.spatial_shape == (24, 20, 6)
    assert sorted(source.name for source in seen) == ["scan:a1", "scan:a2"]
    assert all(source.array.shape[0] == 12 and source.factor == 2 for source in seen)


def test_an_isotropic_volume_with_scale_is_fitted_and_upsampled(
    tmp_path, identity_checkpoint, monkeypatch, capsys
):
    seen = _fit_sources(monkeypatch)
    iso = Volume(array=phantom_array((16, 14, 10)), affine=make_affine("LIA", (1.5, 1.5, 1.5)))
    path = write_volume(iso, tmp_path / "iso.nii.gz")
    out = tmp_path / "iso_x2.nii.gz"
    argv = ["upsample", str(path), "-o", str(out), "--scale", "2", "--fit-steps", "2", "--quiet"]
    assert main([*argv, "--model", str(identity_checkpoint)]) == 0, capsys.readouterr().err
    result = read_volume(out)
    assert result.spatial_shape == (16, 14, 20)  # ties go to the last axis
    np.testing.assert_allclose(result.spacing, [1.5, 1.5, 0.75], atol=1e-5)
    for a, b in zip(
        world_extent(iso.spatial_shape, iso.affine, 2),
        world_extent(result.spatial_shape, result.affine, 2),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert {source.factor for source in seen} == {2.0}
    assert sorted(source.name for source in seen) == ["scan:a0", "scan:a1"]


def test_deterministic_algorithms_during_a_cuda_fit_only(monkeypatch):
    # the flags are process-wide: set for the fit, then the caller's settings come back
    import os

    from medsr.runtime import deterministic_algorithms

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with deterministic_algorithms(torch.device("cpu")):
        assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(torch.device("cuda")):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own value is kept
    with pytest.raises(KeyboardInterrupt), deterministic_algorithms(torch.device("cuda")):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
        raise KeyboardInterrupt
    assert not torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def _shipped_fp32_and_bf16(volume):
    options = {"method": "misr", "fit_steps": 0, "keep_dtype": False, "device": "cpu"}
    fp32 = upsample_volume(volume, precision="fp32", **options)
    bf16 = upsample_volume(volume, precision="bf16", **options)
    return fp32, bf16


def test_bf16_stays_close_to_fp32_and_the_provenance_says_which(monkeypatch):
    """The shipped prior on a phantom: bf16 of the encoder's convolutions stays within 1 % of
    the data range of float32 (PSNR between them above 40 dB), and each records its precision."""
    volume = _thick_volume(thick=4.0, shape=(24, 22, 8))
    fp32, bf16 = _shipped_fp32_and_bf16(volume)
    span = float(volume.array.max() - volume.array.min())
    difference = np.abs(fp32.array - bf16.array)
    assert 0 < difference.max() < 0.01 * span  # bf16 did run, and stayed close
    assert 10 * np.log10(span**2 / np.mean(difference**2)) > 40
    assert fp32.meta["provenance"]["precision"] == "fp32"
    assert bf16.meta["provenance"]["precision"] == "bf16"
    import medsr.runtime

    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: False)
    auto = upsample_volume(volume, method="misr", fit_steps=0, keep_dtype=False, device="cpu")
    assert auto.meta["provenance"]["precision"] == "fp32"  # auto on a CPU without native bf16
    np.testing.assert_array_equal(auto.array, fp32.array)
    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: True)
    auto = upsample_volume(volume, method="misr", fit_steps=0, keep_dtype=False, device="cpu")
    assert auto.meta["provenance"]["precision"] == "bf16"
    np.testing.assert_array_equal(auto.array, bf16.array)


def test_fp32_reconstruction_equals_the_plain_forward():
    """`precision="fp32"` is float32 throughout: the volume equals the generator's own forward,
    plane by plane, outside any autocast (bf16 differs by about 1e-3 of the range)."""
    from medsr.geometry import neighbour_indices
    from medsr.upsample.reconstruct import reconstruct

    generator, _ = load_generator(default_model_path())
    volume = _thick_volume(thick=4.0, shape=(10, 9, 6))
    normalised = (volume.array - volume.array.min()) / np.ptp(volume.array)
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    factor = float(volume.spacing[grid.axis] / grid.spacing)
    device = torch.device("cpu")
    out = reconstruct(normalised, grid, volume.spacing, generator, device=device, precision="fp32")
    expected = np.zeros(grid.shape, np.float32)
    positions = torch.from_numpy(np.asarray(grid.positions, np.float32))
    for p, w, offset in plane_orientations(grid.axis, volume.spacing):
        planes = np.transpose(normalised, (p, w, grid.axis))
        centres = np.arange(planes.shape[0])
        index = neighbour_indices(centres, generator.neighbours, offset, len(centres))
        lr = torch.from_numpy(np.ascontiguousarray(planes[index], np.float32))
        with torch.no_grad():
            sr = generator.eval()(lr, positions, factor)[:, 0].numpy()
        np.transpose(expected, (p, w, grid.axis))[:] += sr
    expected /= 2
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_a_bad_precision_is_a_usage_error(phantom_path, capsys):
    assert main_exit(["upsample", str(phantom_path), "--precision", "fp8"]) == 2
    assert "--precision" in capsys.readouterr().err


def main_exit(argv) -> int:
    try:
        return main(argv)
    except SystemExit as error:
        return int(error.code)


def _guard_scan(tmp_path):
    return write_volume(_thick_volume(shape=(30, 28, 20)), tmp_path / "scan.nii.gz")


def test_the_fit_guard_falls_back_when_the_fit_makes_the_scan_worse(
    tmp_path, identity_checkpoint, monkeypatch, capsys
):
    """A fit that breaks the model: the guard scores it below B-spline on the held-back slices
    and falls back to the prior (the identity prior *is* B-spline: a tie, which goes to the
    prior), in one log line and in the provenance; the output is then the B-spline upsampling."""
    import json

    from medsr.train.trainer import Trainer

    def worse_fit(self, *args, **kwargs):
        self.step = self.config.train.steps
        with torch.no_grad():
            torch.nn.init.normal_(self.generator.decode[-1].weight, std=5.0)
            self.generator.decode[-1].bias.fill_(0.3)
        return {}

    monkeypatch.setattr(Trainer, "fit", worse_fit)
    scan = _guard_scan(tmp_path)
    out = tmp_path / "out.nii.gz"
    argv = ["upsample", str(scan), "-o", str(out), "--model", str(identity_checkpoint)]
    assert main(argv + ["--fit-steps", "3", "--device", "cpu", "--dtype", "float32"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "fit guard" in line]
    assert len(lines) == 1 and "below the prior" in lines[0] and "using the prior" in lines[0]
    record = json.loads((tmp_path / "out.nii.gz.json").read_text(encoding="utf-8"))["fit_guard"]
    assert record["choice"] == "prior" and record["psnr_adapted"] < record["psnr_bspline"]
    assert record["planes"] == 2 and record["psnr_prior"] == pytest.approx(record["psnr_bspline"])
    volume = read_volume(scan)
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    expected = upsample_baseline(volume, grid, "bspline", keep_dtype=False).array
    np.testing.assert_allclose(read_volume(out).array, expected, rtol=1e-4, atol=1e-3)


def test_the_fit_guard_keeps_a_good_fit_and_the_fit_stays_deterministic(
    tmp_path, identity_checkpoint, monkeypatch
):
    import hashlib
    import json

    import medsr.upsample.adapt as adapt

    # six steps from the identity prior improve on B-spline at a small constant rate (the
    # default's cosine is made for 400-800 steps, and at six it may overshoot: then the guard
    # rightly keeps the prior, which is the other test)
    monkeypatch.setattr(adapt, "ADAPTATION_LEARNING_RATE", 1e-3)
    monkeypatch.setattr(adapt, "ADAPTATION_LR_SCHEDULE", "constant")
    scan = _guard_scan(tmp_path)
    digests, records = [], []
    for name in ("a.nii.gz", "b.nii.gz"):
        argv = ["upsample", str(scan), "-o", str(tmp_path / name), "--quiet", "--device", "cpu"]
        assert main(argv + ["--model", str(identity_checkpoint), "--fit-steps", "6"]) == 0
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
        records.append(json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8")))
    assert digests[0] == digests[1] and records[0] == records[1]
    guard = records[0]["fit_guard"]
    assert guard["scan_noise"] > 0  # the voxel noise the fit put back (the scan is noisy)
    # the identity prior is B-spline; six steps improve on it a little: the adapted model wins
    assert guard["planes"] == 2 and guard["choice"] == "adapted"
    assert guard["psnr_prior"] == pytest.approx(guard["psnr_bspline"])
    assert guard["psnr_adapted"] >= guard["psnr_bspline"] - 0.05


@pytest.mark.parametrize(
    ("adapted", "prior", "bspline", "choice"),
    [
        (30.26, 30.52, 28.20, "prior"),  # a fit below its prior: the prior, not the fit
        (12.00, 30.52, 28.20, "prior"),  # a broken fit, a prior that beats B-spline
        (12.00, 27.00, 28.20, "bspline"),
        (30.50, 30.52, 28.20, "adapted"),  # within 0.05 dB of the best: the adapted model
        (28.00, 28.23, 28.20, "prior"),  # prior and B-spline tie: the prior
        (31.00, 30.52, 28.20, "adapted"),
    ],
)
def test_the_fit_guard_uses_the_best_of_the_three(
    monkeypatch, caplog, identity_checkpoint, adapted, prior, bspline, choice
):
    """The best score on the held-back slices wins; within 0.05 dB of the best the adapted
    model, then the prior, is preferred. One log line names the model used."""
    import copy

    import medsr.upsample.heldout as heldout

    generator, _ = load_generator(identity_checkpoint)
    fitted = copy.deepcopy(generator)
    scores = {id(fitted): adapted, id(generator): prior, id(None): bspline}
    monkeypatch.setattr(heldout, "guard_score", lambda model, planes, device: scores[id(model)])
    with caplog.at_level("INFO", logger="medsr.upsample.heldout"):
        model, record = heldout.apply_guard(fitted, generator, [()], "cpu")
    assert record["choice"] == choice and record["rule"].startswith("best PSNR")
    expected = {"adapted": fitted, "prior": generator}.get(choice)
    if expected is not None:
        assert model is expected
    else:
        assert not torch.any(model.decode[-1].weight)
        assert model.tail is None or not torch.any(model.tail.weight)
    lines = [r.getMessage() for r in caplog.records if "fit guard" in r.getMessage()]
    name = {"adapted": "the adapted model", "prior": "the prior", "bspline": "cubic B-spline"}
    assert len(lines) == 1 and f"using {name[choice]}" in lines[0]


def test_the_fit_never_trains_on_the_guard_slices(monkeypatch, identity_checkpoint):
    import medsr.train.pairs as pairs

    seen = []
    original = pairs.PairSampler._patch_starts

    def spy(self, source, rng, width, thin, offset):
        starts = original(self, source, rng, width, thin, offset)
        seen.append((self.held_out_planes, starts[0].copy()))
        return starts

    monkeypatch.setattr(pairs.PairSampler, "_patch_starts", spy)
    volume = _thick_volume(shape=(30, 28, 20))
    upsample_volume(volume, method="misr", model=identity_checkpoint, fit_steps=20)
    assert seen and all(slab is not None for slab, _ in seen)
    slab = seen[0][0]
    centres = np.concatenate([c for _, c in seen])
    assert not np.any((centres + 1 >= slab[0]) & (centres - 1 < slab[1]))


def test_slice_profile_option_is_the_fits_profile_and_is_recorded(
    tmp_path, phantom_path, identity_checkpoint, monkeypatch
):
    """`--slice-profile sinc`: every pair of the fit and the guard's held-back slices are
    thickened with the 2D multi-slice profile (not the trained boxcar/Gaussian family), and the
    provenance says so; without the option the trained family is drawn and nothing is recorded."""
    import json

    import medsr.train.noise
    from medsr.upsample.adapt import adaptation_config

    drawn = []

    def spy(module):
        real = module.thicken_last_axis

        def thicken(thin, factor, thickness, profile):
            drawn.append(profile)
            return real(thin, factor, thickness, profile)

        monkeypatch.setattr(module, "thicken_last_axis", thicken)

    spy(medsr.train.noise)  # thicken_like_scan: the fit's pairs and its guard's slices
    argv = ["upsample", str(phantom_path), "--model", str(identity_checkpoint), "--quiet"]
    out = tmp_path / "sinc.nii.gz"
    assert main([*argv, "-o", str(out), "--fit-steps", "3", "--slice-profile", "sinc"]) == 0
    assert drawn and set(drawn) == {"sinc"}
    record = json.loads(out.with_name(out.name + ".json").read_text(encoding="utf-8"))
    assert record["slice_profile"] == "sinc"
    drawn.clear()
    out = tmp_path / "family.nii.gz"  # the estimate off (tests/test_profile.py): the family
    monkeypatch.setattr("medsr.upsample.adapt.ESTIMATE_PROFILE", False)
    assert main([*argv, "-o", str(out), "--fit-steps", "3"]) == 0
    assert drawn and "sinc" not in drawn
    record = json.loads(out.with_name(out.name + ".json").read_text(encoding="utf-8"))
    assert "slice_profile" not in record
    # the header is silent on thickness: the record says the fit took contiguous slices
    assert record["slice_thickness_ratio"] is None and record["fit_thickness_ratio"] == 1.0
    out = tmp_path / "prior.nii.gz"  # no fit: no profile was used, none is recorded
    assert main([*argv, "-o", str(out), "--fit-steps", "0", "--slice-profile", "sinc"]) == 0
    record = json.loads(out.with_name(out.name + ".json").read_text(encoding="utf-8"))
    assert "slice_profile" not in record
    config = adaptation_config(load_generator(identity_checkpoint)[1], 5, 0, profile="gaussian")
    assert config.data.profiles == ("gaussian",)


def test_an_unknown_slice_profile_is_refused_before_any_work(tmp_path, phantom_path):
    from medsr.errors import MedsrError
    from medsr.upsample.files import upsample_file

    with pytest.raises(MedsrError, match="unknown slice profile 'rect'"):
        upsample_file(phantom_path, tmp_path / "o.nii.gz", slice_profile="rect")
    assert not (tmp_path / "o.nii.gz").exists()


def test_the_guards_bspline_is_exactly_bspline_with_a_trained_tail():
    """`as_bspline` zeroes every residual path: with the shipped prior (a trained offset tail and
    MLP) its output is `exact_bspline`'s, as the guard scored it."""
    from medsr.nets.generator import exact_bspline
    from medsr.upsample.heldout import as_bspline

    generator, _ = load_generator(default_model_path())
    assert generator.tail is not None and torch.any(generator.tail.weight)
    lr = torch.rand(2, generator.neighbours, 12, 7)
    positions = torch.linspace(-0.4, 6.4, 23)
    with torch.no_grad():
        got = as_bspline(generator)(lr, positions, 3.3)
        k = generator.neighbours // 2
        torch.testing.assert_close(got, exact_bspline(lr[:, k : k + 1], positions))
        assert (generator(lr, positions, 3.3) - got).abs().max() > 1e-3


def test_slice_profile_needs_the_learned_methods_fit(tmp_path, phantom_path, capsys):
    out = tmp_path / "o.nii.gz"
    argv = ["upsample", str(phantom_path), "-o", str(out), "--method", "bspline"]
    assert main([*argv, "--slice-profile", "sinc"]) == 1
    error = capsys.readouterr().err
    assert "--method misr only" in error and len(error.strip().splitlines()) == 1
    assert not out.exists()


def test_the_scans_noise_is_measured_by_its_finest_diagonal_detail():
    """`scan_noise` finds the std of Rician (MRI magnitude) and of Gaussian noise on a smooth
    object within 10 %, and 0 on the object without noise; the fit's config carries it."""
    from scipy.ndimage import gaussian_filter

    from medsr.config import Config
    from medsr.degrade import add_rician_noise
    from medsr.train.noise import scan_noise
    from medsr.train.pairs import sources_self_supervised
    from medsr.upsample.adapt import adaptation_config

    smooth = gaussian_filter(phantom_array((96, 96, 20), seed=0).astype(np.float64), 2.0)
    smooth = ((smooth - smooth.min()) / np.ptp(smooth)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    rng = np.random.default_rng(0)
    gaussian = smooth + rng.normal(0.0, 0.04, smooth.shape).astype(np.float32)
    for image, sigma in (
        (add_rician_noise(smooth, 0.04, rng), 0.04),
        (gaussian, 0.04),
        (smooth, 0),
    ):
        sources = sources_self_supervised(Volume(image, affine), "s", axis=2, factor=4.0)
        scale = float(sources[0].array.std() / image.std())  # normalised units per input unit
        assert scan_noise(sources[0].array) / scale == pytest.approx(sigma, rel=0.1, abs=1e-3)
    assert adaptation_config(Config(), 5, 0, input_noise=0.02).data.input_noise == 0.02


def test_bf16_asked_on_a_cpu_without_native_bf16_warns(monkeypatch, caplog):
    """An explicit bf16 is taken as asked, but on a CPU that only emulates it (AVX2-only) the log
    says it is slow and that auto would pick fp32, once; auto and fp32 say nothing."""
    import medsr.runtime
    from medsr.runtime import resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(medsr.runtime, "_EMULATED_BF16_WARNED", [False])
    with caplog.at_level("WARNING", logger="medsr.runtime"):
        assert resolve_precision("bf16", cpu) == "bf16"
        assert resolve_precision("bf16", cpu) == "bf16"
    assert caplog.text.count("emulated") == 1 and "fp32" in caplog.text  # once per process
    caplog.clear()
    monkeypatch.setattr(medsr.runtime, "_EMULATED_BF16_WARNED", [False])
    with caplog.at_level("WARNING", logger="medsr.runtime"):
        assert resolve_precision("auto", cpu) == "fp32"
        assert resolve_precision("fp32", cpu) == "fp32"
    assert caplog.text == ""
    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: True)
    with caplog.at_level("WARNING", logger="medsr.runtime"):
        assert resolve_precision("bf16", cpu) == "bf16"
    assert caplog.text == ""
    assert medsr.runtime._EMULATED_BF16_WARNED == [False]


def test_scale_residual_scales_the_residual_over_bspline_exactly():
    """The residual is linear in the two last layers' weights and biases: scaled by g, the output
    is B-spline + g x the residual (shipped prior, trained tail and MLP); g = 0 is B-spline."""
    from medsr.nets.generator import exact_bspline
    from medsr.upsample.heldout import scale_residual

    generator, _ = load_generator(default_model_path())
    lr = torch.rand(2, generator.neighbours, 12, 7)
    positions = torch.linspace(-0.4, 6.4, 23)
    k = generator.neighbours // 2
    with torch.no_grad():
        base = exact_bspline(lr[:, k : k + 1], positions)
        residual = generator(lr, positions, 3.3) - base
        assert residual.abs().max() > 1e-3
        for gain in (0.0, 0.37, 1.4):
            got = scale_residual(generator, gain)(lr, positions, 3.3)
            torch.testing.assert_close(got, base + gain * residual, atol=2e-6, rtol=1e-5)
    assert torch.any(generator.decode[-1].weight)  # the original is left as it was


@pytest.mark.parametrize("ensemble", [1, 4])
def test_the_calibrated_score_is_the_scaled_models_own(ensemble):
    """`calibrated` scores the scaled model from the predictions it already made (B-spline +
    gain x the residual) instead of running it: the same score as running it, to rounding."""
    from medsr.upsample.heldout import calibrated, guard_score, scale_residual

    generator, _ = load_generator(default_model_path())
    planes = _planes_with_gain(generator, 0.6)
    noisy = [
        (lr, hr + 0.01 * np.cos(np.arange(hr.size)).reshape(hr.shape), at, f)
        for lr, hr, at, f in planes
    ]
    record: dict = {}
    scaled = calibrated(generator, noisy, torch.device("cpu"), record, ensemble)
    assert record["residual_gain"] != 1.0
    assert scaled is not generator
    ran = guard_score(scale_residual(generator, record["residual_gain"]), noisy, "cpu", ensemble)
    assert record["psnr_calibrated"] == pytest.approx(ran, abs=2e-4)


def _planes_with_gain(generator, gain: float) -> list[tuple]:
    """Guard planes whose truth is B-spline + `gain` x the generator's own residual."""
    from medsr.nets.generator import exact_bspline

    rng = np.random.default_rng(3)
    planes = []
    for _ in range(2):
        lr = torch.from_numpy(rng.random((1, generator.neighbours, 14, 6), dtype=np.float32))
        positions = torch.from_numpy(np.linspace(-0.25, 5.25, 12).astype(np.float32))
        with torch.no_grad():
            k = generator.neighbours // 2
            base = exact_bspline(lr[:, k : k + 1], positions)
            truth = base + gain * (generator(lr, positions, 2.0) - base)
        planes.append((lr, truth[0, 0].numpy(), positions, 2.0))
    return planes


@pytest.mark.parametrize(("gain", "expected"), [(0.4, 0.4), (1.0, 1.0), (3.0, 1.5), (-1.0, 0.0)])
def test_the_residual_gain_is_the_least_squares_gain_within_its_range(gain, expected):
    """On held-back slices whose truth is B-spline + g x residual, the fitted gain is g, clipped
    to `GAIN_RANGE` (0 to 1.5); a model without residual (B-spline) keeps gain 1."""
    from medsr.upsample.heldout import GAIN_RANGE, as_bspline, residual_gain

    assert GAIN_RANGE[0] == 0.0  # gain 0 (B-spline) is always within reach
    generator, _ = load_generator(default_model_path())
    planes = _planes_with_gain(generator, gain)
    assert residual_gain(generator, planes, "cpu") == pytest.approx(expected, abs=1e-4)
    assert residual_gain(as_bspline(generator), planes, "cpu") == 1.0


def _ensemble_planes(generator, gain: float, ensemble: int) -> list[tuple]:
    """Guard planes whose truth is B-spline + `gain` x the residual of the reconstruction's
    `ensemble`-pass mean, taken from `reconstruct.predict_flipped`, the reconstruction's own
    passes."""
    from medsr.nets.generator import exact_bspline
    from medsr.upsample.ensemble import ensemble_passes
    from medsr.upsample.reconstruct import predict_flipped

    planes = []
    for lr, _, positions, factor in _planes_with_gain(generator, 1.0):
        passes = ensemble_passes(ensemble, generator.neighbours)
        with torch.no_grad():
            total = sum(
                next(predict_flipped(generator, lr, positions, factor, "fp32", f, 99))[1]
                for f in passes
            )
            base = exact_bspline(lr[:, 1:2], positions)[:, 0]
        truth = base + gain * (total / len(passes) - base)
        planes.append((lr, truth[0].numpy(), positions, factor))
    return planes


@pytest.mark.parametrize("ensemble", [2, 4, 8])
def test_the_residual_gain_is_fitted_on_the_reconstructions_ensemble(ensemble):
    """The gain is the one that fits the residual the output carries: the mean of the
    reconstruction's flipped passes (the same passes `reconstruct` runs), not one pass's."""
    from medsr.upsample.heldout import plane_prediction, residual_gain

    generator, _ = load_generator(default_model_path())
    planes = _ensemble_planes(generator, 0.6, ensemble)
    assert residual_gain(generator, planes, "cpu", ensemble) == pytest.approx(0.6, abs=1e-4)
    assert abs(residual_gain(generator, planes, "cpu") - 0.6) > 1e-3  # one pass: another gain
    lr, _, positions, factor = planes[0]
    with torch.no_grad():  # one pass is the plain forward, bit for bit
        plain = generator.eval()(lr, positions, factor)[0, 0]
        assert torch.equal(plane_prediction(generator, lr, positions, factor), plain)


@pytest.mark.parametrize("ensemble", [None, 2])
def test_upsample_fits_the_gain_for_the_passes_it_reconstructs_with(monkeypatch, ensemble):
    """The ensemble the output's provenance records (the default for its size, or the one
    asked) is the one the gain is fitted for: `upsample_volume` hands it down to the fit."""
    import medsr.upsample.adapt as adapt

    seen = []
    real = adapt.adapt_to_scan

    def spy(*args, **kwargs):
        seen.append(kwargs["ensemble"])
        return real(*args, **kwargs)

    monkeypatch.setattr(adapt, "adapt_to_scan", spy)
    volume = _thick_volume(shape=(30, 28, 16))
    options = dict(method="misr", fit_steps=0, keep_dtype=False, device="cpu", ensemble=ensemble)
    result = upsample_volume(volume, **options)
    record = result.meta["provenance"]
    assert seen == [record["ensemble"]] and record["fit_guard"]["gain_passes"] == seen[0]
    assert seen[0] == (4 if ensemble is None else ensemble)


def test_the_fit_and_the_prior_alone_calibrate_for_the_ensemble_asked(monkeypatch, tiny_config):
    """`adapt_to_scan` fits the gain for the `ensemble` it is given, without a fit and (where
    `CALIBRATE_AFTER_FIT` asks for one) after a fit."""
    import medsr.upsample.adapt as adapt
    from medsr.nets.checkpoint import build_generator

    seen = []
    real_calibrated = adapt.calibrated
    real_without = adapt.guard_without_fit

    def calibrated(generator, planes, device, record, ensemble=1):
        seen.append(("fit", ensemble))
        return real_calibrated(generator, planes, device, record, ensemble)

    def without(prior, planes, device, ensemble=1):
        seen.append(("no fit", ensemble))
        return real_without(prior, planes, device, ensemble)

    monkeypatch.setattr(adapt, "calibrated", calibrated)
    monkeypatch.setattr(adapt, "guard_without_fit", without)
    rng = np.random.default_rng(0)
    scan = Volume(rng.random((40, 40, 24), dtype=np.float32), np.diag([1.0, 1.0, 3.0, 1.0]))
    options = {"axis": 2, "factor": 3.0, "device": torch.device("cpu"), "profile": "boxcar"}
    generator = build_generator(tiny_config)
    adapt.adapt_to_scan(generator, tiny_config, scan, steps=1, ensemble=4, **options)
    adapt.adapt_to_scan(generator, tiny_config, scan, steps=0, ensemble=2, **options)
    assert seen == [("no fit", 2)]  # after a fit: no gain (the default)
    monkeypatch.setattr(adapt, "CALIBRATE_AFTER_FIT", True)
    adapt.adapt_to_scan(generator, tiny_config, scan, steps=1, ensemble=4, **options)
    assert seen == [("no fit", 2), ("fit", 4)]


def test_without_a_fit_the_prior_is_calibrated_on_slabs_across_the_axis(monkeypatch):
    """`fit_steps` 0: the prior's residual is scaled by the gain fitted on in-plane slices
    (five slabs across the middle of the axis: nothing is held back from a fit), recorded with
    the acquisition the slices were thickened with; the output is B-spline + that gain x the
    prior's residual. With `CALIBRATE_GAIN` off, the prior is used as it is and nothing is
    recorded."""
    import medsr.upsample.adapt as adapt

    volume = _thick_volume(shape=(30, 28, 16))
    # one pass: the gain of its single prediction (the ensemble's: the test above)
    options = dict(method="misr", fit_steps=0, keep_dtype=False, device="cpu", ensemble=1)
    calibrated = upsample_volume(volume, **options)
    record = calibrated.meta["provenance"]
    guard = record["fit_guard"]
    assert guard["choice"] == "prior" and guard["rule"].startswith("no fit")
    # nothing is fitted, so the gain is fitted on slabs across the middle of the volume, two
    # orientations each (a fit holds back one slab: the guard's tests above)
    assert guard["planes"] == 2 * adapt.NO_FIT_CALIBRATION_SLABS
    assert 0.0 <= guard["residual_gain"] <= 1.5 and guard["residual_gain"] != 1.0
    assert guard["psnr_calibrated"] >= guard["psnr_prior"] - 1e-3
    assert record["fit_thickness_ratio"] == 1.0 and record["fit_steps_run"] == 0
    monkeypatch.setattr(adapt, "CALIBRATE_GAIN", False)
    raw = upsample_volume(volume, **options)
    assert "fit_guard" not in raw.meta["provenance"]
    assert "fit_thickness_ratio" not in raw.meta["provenance"]
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    base = upsample_baseline(volume, grid, "bspline", keep_dtype=False).array
    expected = base + guard["residual_gain"] * (raw.array - base)
    span = float(np.ptp(volume.array))
    np.testing.assert_allclose(calibrated.array, expected, atol=2e-3 * span)


@pytest.mark.parametrize("count", [16, 17, 25, 60, 300])
@pytest.mark.parametrize("number", [1, 3, 5, 8, 9])
@pytest.mark.parametrize("neighbours", [2, 3, 4])
def test_the_calibration_slabs_spread_over_the_middle_of_the_axis(count, number, neighbours):
    """`number` slabs of `neighbours` slices, each inside the axis, their middles evenly spread
    over `CALIBRATION_SPAN` of it (not its ends, mostly background); all `number` of them where
    the span holds a slice per slab (halves round up: 16 slices, 8 slabs are 8, not 5)."""
    from medsr.upsample.heldout import CALIBRATION_SPAN, calibration_slabs

    slabs = calibration_slabs(count, neighbours, number)
    assert all(0 <= start and stop <= count and stop - start == neighbours for start, stop in slabs)
    span = count * (CALIBRATION_SPAN[1] - CALIBRATION_SPAN[0])
    if span >= number:
        assert len(slabs) == number
    middles = [start + neighbours // 2 for start, _ in slabs]
    low, high = (share * count for share in CALIBRATION_SPAN)
    assert all(low - 0.5 <= middle <= high + 0.5 for middle in middles)
    if len(slabs) > 2:
        gaps = np.diff(middles)
        assert gaps.min() >= 1 and gaps.max() - gaps.min() <= 1  # even, to the rounding


def test_calibration_slabs_refuse_no_slab_and_a_short_axis():
    from medsr.upsample.heldout import calibration_slabs

    with pytest.raises(ValueError, match="at least 1"):
        calibration_slabs(60, 3, 0)
    with pytest.raises(ValueError, match="no slab"):
        calibration_slabs(2, 3, 5)


def test_the_calibration_planes_alternate_orientations_slab_by_slab():
    """Both in-plane orientations of each slab in turn (the order `plane_parts` cuts them in),
    the middle slice of each slab as the truth."""
    from medsr.train.pairs import sources_self_supervised
    from medsr.upsample.heldout import calibration_planes, calibration_slabs

    volume = _thick_volume(shape=(30, 28, 16))
    sources = sources_self_supervised(volume, "scan", axis=2, factor=3.0)
    slabs = calibration_slabs(16, 3, 5)
    planes = calibration_planes(sources, slabs, 3, 1.0)
    assert len(planes) == 2 * len(slabs) == 10
    for number, (lr, hr, _, factor) in enumerate(planes):
        source = sources[number % 2]
        middle = slabs[number // 2][0] + 1
        np.testing.assert_array_equal(hr, source.array[middle][..., : hr.shape[-1]])
        assert factor == source.factor and lr.shape[1] == 3


def _sums(*parts: tuple[float, float, float]) -> np.ndarray:
    return np.asarray(parts, dtype=np.float64)


def test_the_gain_is_kept_only_where_it_holds_on_parts_it_was_not_fitted_on():
    """`gain_holds_out`: each part's gain comes from the other plane's other part (another
    orientation and other content). Parts that agree on a gain below 1: kept; one part asking
    for 0.2 while the one across asks for 1.4: rejected; a single part cannot be checked."""
    from medsr.upsample.heldout import gain_holds_out, least_squares_gain

    # (sum r d, sum r r, sum d d) per part; the part's own least-squares gain is rd / rr
    agree = _sums((5.0, 10.0, 9.0), (6.0, 10.0, 9.0), (5.5, 10.0, 9.0), (5.0, 10.0, 9.0))
    assert least_squares_gain(agree) == pytest.approx(0.5375)
    assert gain_holds_out(agree)
    # parts 0 and 3, 1 and 2 are across from each other (plane 0 part 0, plane 1 part 1, ...).
    # Here the two halves of the slice disagree (0.2 against 1.4) and the two orientations agree:
    # the check across rejects, a check over orientations alone would keep
    disagree = _sums((2.0, 10.0, 9.0), (14.0, 10.0, 30.0), (2.0, 10.0, 9.0), (14.0, 10.0, 30.0))
    assert not gain_holds_out(disagree)
    by_orientation = _sums(disagree[:2].sum(axis=0), disagree[2:].sum(axis=0))
    assert gain_holds_out(by_orientation, parts=1)
    assert gain_holds_out(_sums((5.0, 10.0, 9.0), (5.0, 10.0, 9.0)), parts=2)  # one plane
    assert not gain_holds_out(_sums((5.0, 10.0, 9.0)))


def test_a_rejected_gain_is_recorded_and_the_model_kept_as_it_is(monkeypatch, caplog):
    import medsr.upsample.heldout as heldout

    generator, _ = load_generator(default_model_path())
    planes = _planes_with_gain(generator, 0.4)
    monkeypatch.setattr(heldout, "gain_holds_out", lambda sums: False)
    record = {}
    with caplog.at_level("INFO", logger="medsr.upsample.heldout"):
        model = heldout.calibrated(generator, planes, "cpu", record)
    assert model is generator and record["residual_gain"] == 1.0
    assert record["residual_gain_rejected"] == pytest.approx(0.4, abs=1e-3)
    assert "not kept" in caplog.text
    # B-spline chosen by the guard: nothing to scale, nothing recorded
    record = {"choice": "bspline"}
    assert heldout.calibrated(generator, planes, "cpu", record) is generator
    assert "residual_gain" not in record


def test_without_a_fit_a_prior_below_bspline_falls_back_to_bspline(monkeypatch):
    """`guard_without_fit`: a prior whose gain is rejected and that scores below B-spline on
    the held-back slices is not used; the record's choice says B-spline."""
    import medsr.upsample.heldout as heldout

    generator, _ = load_generator(default_model_path())
    worse = _planes_with_gain(generator, -0.5)  # the truth lies on the other side of B-spline
    with monkeypatch.context() as patch:
        patch.setattr(heldout, "gain_holds_out", lambda sums: False)
        model, record = heldout.guard_without_fit(generator, worse, "cpu")
    assert record["choice"] == "bspline" and record["rule"].startswith("no fit")
    assert record["residual_gain"] == 1.0 and record["residual_gain_rejected"] == 0.0
    assert record["psnr_prior"] < record["psnr_bspline"] - heldout.GUARD_TIE_DB
    assert not torch.any(model.decode[-1].weight)
    model, record = heldout.guard_without_fit(generator, worse, "cpu")  # gain 0 kept: B-spline
    assert record["choice"] == "bspline" and record["residual_gain"] == 0.0
    model, record = heldout.guard_without_fit(generator, _planes_with_gain(generator, 1.0), "cpu")
    assert record["choice"] == "prior" and record["residual_gain"] == 1.0 and model is generator


def test_after_a_fit_no_gain_is_fitted_unless_asked(monkeypatch):
    """After a fit the guard chooses and no residual gain is fitted (`CALIBRATE_AFTER_FIT` off:
    validation, docs/benchmarks.md); with it on, the kept model is calibrated and recorded."""
    import medsr.upsample.adapt as adapt

    volume = _thick_volume(shape=(30, 28, 20))
    options = dict(method="misr", fit_steps=2, keep_dtype=False, device="cpu")
    calls = []
    real = adapt.calibrated
    monkeypatch.setattr(adapt, "calibrated", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert adapt.CALIBRATE_AFTER_FIT is False
    guard = upsample_volume(volume, **options).meta["provenance"]["fit_guard"]
    assert guard["rule"].startswith("best PSNR") and guard["planes"] == 2
    assert "residual_gain" not in guard and "gain_passes" not in guard and not calls
    monkeypatch.setattr(adapt, "CALIBRATE_AFTER_FIT", True)
    guard = upsample_volume(volume, **options).meta["provenance"]["fit_guard"]
    assert calls == [1] and ("residual_gain" in guard or guard["choice"] == "bspline")


def test_a_fit_on_a_short_axis_fits_every_slice_without_a_guard(monkeypatch):
    """Below `FIT_GUARD_MIN_SLICES` slices along the upsampled axis a fit holds nothing back (its
    patches may come from every slice) and has no guard, and the record says why; from that
    length on the guard's slab is held back. Without a fit, the calibration slabs of the prior
    alone do not depend on it."""
    import medsr.upsample.adapt as adapt
    from medsr.train.trainer import Trainer

    held = []

    def trainer(config, sampler, *args, **kwargs):
        held.append(sampler.held_out_planes)
        return Trainer(config, sampler, *args, **kwargs)

    monkeypatch.setattr(adapt, "Trainer", trainer)
    options = dict(method="misr", keep_dtype=False, device="cpu")
    limit = adapt.FIT_GUARD_MIN_SLICES
    short = _thick_volume(shape=(30, 28, limit - 1))
    guard = upsample_volume(short, fit_steps=2, **options).meta["provenance"]["fit_guard"]
    assert held == [None] and guard["reason"] == adapt.FEW_SLICES
    assert guard["choice"] == "adapted" and guard["planes"] == 0 and "psnr_adapted" not in guard
    longer = _thick_volume(shape=(30, 28, limit))
    guard = upsample_volume(longer, fit_steps=2, **options).meta["provenance"]["fit_guard"]
    assert held[1] is not None and guard["planes"] == 2 and "reason" not in guard
    guard = upsample_volume(short, fit_steps=0, **options).meta["provenance"]["fit_guard"]
    assert len(held) == 2 and guard["rule"].startswith("no fit") and guard["planes"] > 0


def test_both_guard_planes_are_cut_along_the_same_axis_of_the_slice():
    """Plane 2's axes are plane 1's swapped: its parts are cut along columns, so that part j of
    either plane holds the same voxels of the slice."""
    from medsr.upsample.heldout import GAIN_CHECK_PARTS, plane_parts

    slice_ = np.arange(7 * 5, dtype=float).reshape(7, 5)
    first, second = plane_parts(slice_, 0), plane_parts(slice_.T, 1)
    assert len(first) == len(second) == GAIN_CHECK_PARTS
    for mine, theirs in zip(first, second, strict=True):
        np.testing.assert_array_equal(mine, theirs.T)
    assert sum(part.size for part in first) == slice_.size


def test_a_gain_of_zero_after_a_fit_is_recorded_as_bspline():
    import medsr.upsample.heldout as heldout

    generator, _ = load_generator(default_model_path())
    record = {"choice": "adapted"}
    model = heldout.calibrated(generator, _planes_with_gain(generator, -0.5), "cpu", record)
    assert record["residual_gain"] == 0.0 and record["choice"] == "bspline"
    assert not torch.any(model.decode[-1].weight)


def test_without_a_fit_a_short_axis_records_why_nothing_was_held_back():
    volume = _thick_volume(shape=(30, 28, 5))
    record = upsample_volume(volume, method="misr", fit_steps=0, keep_dtype=False, device="cpu")
    guard = record.meta["provenance"]["fit_guard"]
    assert guard == {"reason": "the upsampled axis is too short to hold slices back"}


def test_the_fit_runs_in_the_precision_of_the_reconstruction(monkeypatch, identity_checkpoint):
    """`--precision` is the arithmetic of the whole learned method: the fit trains its encoder
    in bf16 where the reconstruction runs it so on a CPU with native bf16 (``train.cpu_bf16``),
    float32 otherwise, emulated bf16 included; auto follows the CPU; the record says which."""
    import medsr.runtime
    import medsr.upsample.adapt
    from medsr.train.trainer import Trainer

    seen = []

    class Recording(Trainer):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            seen.append(self.precision)

    monkeypatch.setattr(medsr.upsample.adapt, "Trainer", Recording)
    volume = _thick_volume(thick=4.0, shape=(24, 22, 8))
    options = {"method": "misr", "fit_steps": 1, "keep_dtype": False, "device": "cpu"}
    options["model"] = identity_checkpoint
    records = []
    for native, precision in ((True, "fp32"), (True, "bf16"), (False, "bf16"), (False, "auto")):
        monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda native=native: native)
        records.append(upsample_volume(volume, precision=precision, **options).meta["provenance"])
    assert seen == ["fp32", "bf16", "fp32", "fp32"]
    assert [r["fit_precision"] for r in records] == seen
    assert [r["precision"] for r in records] == ["fp32", "bf16", "bf16", "fp32"]


def test_the_default_fit_steps_follow_the_fits_arithmetic(monkeypatch):
    """A CPU fit whose encoder runs in bf16 takes about half the time a step, and spends it on
    more steps: `FAST_FIT_STEPS` there, `DEFAULT_FIT_STEPS` in float32 (at most: the API sizes
    a float32 fit to the scan, `tests/test_budget.py`); `auto` follows the CPU; an explicit
    number is kept; the CLI leaves the default to the API, which sees the scan."""
    import argparse

    import medsr.runtime
    from medsr.cli.options import fit_settings
    from medsr.upsample.budget import default_work
    from medsr.upsample.checks import (
        DEFAULT_FIT_STEPS,
        FAST_FIT_STEPS,
        default_fit_steps,
        fit_steps_of,
    )

    assert FAST_FIT_STEPS > DEFAULT_FIT_STEPS > 0
    assert default_fit_steps("fp32", "cpu") == DEFAULT_FIT_STEPS
    for native, expected in ((False, DEFAULT_FIT_STEPS), (True, FAST_FIT_STEPS)):
        monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda native=native: native)
        assert default_fit_steps("auto", "cpu") == expected
        assert default_fit_steps("bf16", "cpu") == expected  # emulated bf16: a float32 fit
        assert fit_steps_of({"device": "cpu"}) == expected
        assert fit_steps_of({"device": "cpu", "fit_steps": None}) == expected
        args = argparse.Namespace(
            device="cpu", precision="auto", fit_steps=None, fit_seconds=None, model=None, seed=0
        )
        assert fit_settings(args)["fit_steps"] is None
    assert fit_steps_of({"device": "cpu", "precision": "bf16", "fit_steps": 7}) == 7
    volume = _thick_volume(thick=4.0, shape=(24, 22, 8))
    out = upsample_volume(volume, method="misr", fit_seconds=0.01, device="cpu", precision="fp32")
    record = out.meta["provenance"]
    planned = default_work({"device": "cpu", "precision": "fp32"}, (24, 22, 8), (24, 22, 32))
    assert (record["fit_steps"], record["ensemble"], record["orientations"]) == planned
    assert 0 < record["fit_steps"] <= DEFAULT_FIT_STEPS
