"""The MONAI layer: reader, transforms, training pairs, and metric cross-checks."""

import numpy as np
import pytest
import tifffile
import torch
from conftest import make_affine, phantom_array
from monai.data import DataLoader
from monai.data.utils import no_collation
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged

from medsr.cli import main
from medsr.config import DataConfig
from medsr.errors import MedsrError
from medsr.evaluate.metrics import psnr, ssim
from medsr.evaluate.simulate import simulate_acquisition
from medsr.geometry import world_extent
from medsr.io import Volume, read_volume, write_volume
from medsr.monai import (
    MedsrReader,
    RandSimulateThickSlicesd,
    SimulateThickSlices,
    SimulateThickSlicesd,
    ThroughPlaneUpsample,
    ThroughPlaneUpsampled,
    TrainingPairs,
)
from medsr.train.pairs import build_sampler


@pytest.fixture
def scan_path(tmp_path):
    array = (phantom_array((14, 12, 6)) * 1000).astype(np.int16)
    volume = Volume(array, make_affine("LIA", (1.0, 1.0, 3.0)))
    return write_volume(volume, tmp_path / "scan.nii.gz")


def test_reader_agrees_with_monai_nibabel_reader_on_nifti(scan_path):
    mine = LoadImage(reader=MedsrReader(), image_only=True)(scan_path)
    theirs = LoadImage(reader="NibabelReader", image_only=True)(scan_path)
    np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    np.testing.assert_allclose(mine.affine.numpy(), theirs.affine.numpy(), atol=1e-6)
    assert mine.meta["unit"] == "mm" and list(mine.meta["spatial_shape"]) == [14, 12, 6]


def test_reader_gives_channel_first_metatensors_with_medsr_geometry(tmp_path, scan_path):
    image = LoadImage(reader=MedsrReader(), image_only=True, ensure_channel_first=True)(scan_path)
    volume = read_volume(scan_path)
    assert image.shape == (1, 14, 12, 6)
    np.testing.assert_allclose(image.affine.numpy(), volume.affine)
    np.testing.assert_allclose(image.pixdim, volume.spacing)
    tifffile.imwrite(tmp_path / "s.ome.tif", np.zeros((5, 6, 7), np.uint16), metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 4.0,
        "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeZUnit": "µm",
    })  # fmt: skip
    stack = LoadImage(reader=MedsrReader(), image_only=True)(tmp_path / "s.ome.tif")
    assert stack.meta["unit"] == "um" and np.allclose(stack.pixdim, [0.5, 0.5, 4.0])
    assert MedsrReader().verify_suffix(str(scan_path)) and not MedsrReader().verify_suffix("a.png")


def test_compose_reproduces_the_cli_bspline_bit_exactly(tmp_path, scan_path):
    out = tmp_path / "cli.nii.gz"
    assert main(["upsample", str(scan_path), "-o", str(out), "--method", "bspline", "--quiet"]) == 0
    pipeline = Compose(
        [
            LoadImaged("image", reader=MedsrReader(), image_only=True, dtype=None),
            EnsureChannelFirstd("image"),
            ThroughPlaneUpsampled("image", method="bspline"),
        ]
    )
    image = pipeline({"image": scan_path})["image"]
    cli = read_volume(out)
    assert image.dtype == torch.int16
    np.testing.assert_array_equal(image[0].numpy(), cli.array)
    np.testing.assert_allclose(image.affine.numpy(), cli.affine, atol=1e-6)


def test_misr_transform_matches_the_cli_with_fixed_fit_steps(tmp_path, identity_checkpoint):
    volume = Volume(phantom_array((30, 28, 8)), make_affine("RAS", (1.0, 1.0, 3.0)))
    scan = write_volume(volume, tmp_path / "scan.nii.gz")
    out = tmp_path / "cli.nii.gz"
    argv = ["upsample", str(scan), "-o", str(out), "--dtype", "float32", "--quiet"]
    assert main([*argv, "--model", str(identity_checkpoint), "--fit-steps", "3"]) == 0
    image = LoadImage(reader=MedsrReader(), image_only=True, ensure_channel_first=True)(scan)
    upsample = ThroughPlaneUpsample(
        method="misr", keep_dtype=False, model=identity_checkpoint, fit_steps=3
    )
    result = upsample(image)
    cli = read_volume(out)
    np.testing.assert_allclose(result[0].numpy(), cli.array, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(result.affine.numpy(), cli.affine, atol=1e-6)
    assert '"fit_steps_run": 3' in result.meta["medsr_provenance"]


def test_simulated_thick_slices_are_the_evaluations_and_keep_the_extent():
    volume = Volume(phantom_array((12, 10, 24)).astype(np.float32), make_affine("LPS", (1, 1, 1)))
    image = LoadImage(image_only=True)  # not used: build the MetaTensor from the volume
    del image
    from monai.data import MetaTensor

    tensor = MetaTensor(
        torch.from_numpy(volume.array[None]), affine=torch.from_numpy(volume.affine)
    )
    thick = SimulateThickSlices(4.0, axis=2, profile="gaussian")(tensor)
    expected = simulate_acquisition(volume, factor=4.0, axis=2, profile="gaussian").thick
    np.testing.assert_allclose(thick[0].numpy(), expected.array, rtol=1e-6)
    np.testing.assert_allclose(thick.affine.numpy(), expected.affine)
    for a, b in zip(
        world_extent(volume.spatial_shape, volume.affine, 2),
        world_extent(thick.shape[1:], thick.affine.numpy(), 2),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=1e-9)
    gapped = SimulateThickSlicesd("x", factor=4.0, axis=2, gap=3.0)({"x": tensor})["x"]
    np.testing.assert_allclose(gapped[0, ..., 0].numpy(), volume.array[..., 1:3].mean(-1) * 0 + (
        volume.array[..., 1] * 0.5 + volume.array[..., 2] * 0.5), rtol=1e-5)  # fmt: skip


def test_random_thick_slices_are_seeded_the_monai_way():
    from monai.data import MetaTensor

    tensor = MetaTensor(torch.rand(1, 8, 8, 64), affine=torch.eye(4, dtype=torch.float64))
    first = RandSimulateThickSlicesd("x", axis=2, noise_max=0.05)
    second = RandSimulateThickSlicesd("x", axis=2, noise_max=0.05)
    first.set_random_state(7)
    second.set_random_state(7)
    a, b = first({"x": tensor})["x"], second({"x": tensor})["x"]
    assert torch.equal(a, b) and 1.5 <= a.meta["medsr_factor"] <= 16
    assert a.shape[-1] == int(64 // a.meta["medsr_factor"])


@pytest.mark.parametrize("axis", [0, 2])
def test_random_thick_slices_can_carry_the_noise_in_full(axis):
    """``thick_noise_share`` 1: the thick image carries the drawn noise at its full level (a
    boxcar of 4 averages it down to half without); 0 draws exactly as before the option."""
    from monai.data import MetaTensor

    shape = [16, 16, 16]
    shape[axis] = 256
    tensor = MetaTensor(torch.full((1, *shape), 100.0), affine=torch.eye(4, dtype=torch.float64))
    options = dict(axis=axis, factor_range=(4.0, 4.0), profiles=("boxcar",), noise_max=2.0)
    options.update(thickness_ratios=(1.0, 1.0))
    stds = {}
    for share in (0.0, 1.0):
        transform = RandSimulateThickSlicesd("x", thick_noise_share=share, **options)
        transform.set_random_state(3)
        out = transform({"x": tensor})["x"]
        assert out.shape[axis + 1] == 64
        stds[share] = float(out.numpy().std())
    assert stds[1.0] / stds[0.0] == pytest.approx(2.0, rel=0.1)
    # share 0 draws as before the option: a replay of the old draw order (log factor, profile,
    # thickness ratio, noise level, noise seed) predicts the second call's factor; share 1
    # draws once more per noisy call, and the replay no longer holds
    options.update(factor_range=(1.5, 16.0))
    factors = {}
    for share in (0.0, 1.0):
        transform = RandSimulateThickSlicesd("x", thick_noise_share=share, **options)
        transform.set_random_state(5)
        transform({"x": tensor})
        factors[share] = transform({"x": tensor})["x"].meta["medsr_factor"]
    replay, low, high = np.random.RandomState(5), np.log(1.5), np.log(16.0)
    replay.uniform(low, high), replay.randint(1), replay.uniform(1.0, 1.0)
    replay.uniform(0, 2.0), replay.randint(2**31)
    expected = float(np.exp(replay.uniform(low, high)))
    assert factors[0.0] == pytest.approx(expected) and factors[1.0] != pytest.approx(expected)
    with pytest.raises(ValueError, match="thick_noise_share"):
        RandSimulateThickSlicesd("x", axis=0, thick_noise_share=1.5)


def test_dataloader_with_two_workers_draws_training_pairs(hr_volume):
    config = DataConfig(patch_width=8, patch_slices=4, batch_size=3, max_factor=4.0)
    sampler = build_sampler([(hr_volume, "hr")], config, neighbours=3)
    stream = TrainingPairs(sampler, seed=0)
    loader = DataLoader(stream, batch_size=None, num_workers=2, collate_fn=no_collation)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == 4:
            break
    for lr, hr, positions, factor in batches:
        assert lr.shape[:3] == (3, 3, 8) and hr.shape[-1] == len(positions)
        assert 1.5 <= factor <= 4.0
    # workers draw different streams
    assert not torch.equal(batches[0][0], batches[1][0])


def test_trainer_trains_with_dataloader_workers(tmp_path, hr_volume, tiny_config):
    import dataclasses

    from medsr.train.trainer import Trainer

    config = dataclasses.replace(
        tiny_config, data=dataclasses.replace(tiny_config.data, workers=2, max_factor=4.0)
    )
    sampler = build_sampler([(hr_volume, "hr")], config.data, 3)
    trainer = Trainer(config, sampler, torch.device("cpu"), tmp_path / "run")
    trainer.fit()
    assert trainer.step == 2


@pytest.mark.parametrize("seed", [0, 1])
def test_psnr_and_ssim_agree_with_monai_metrics(seed):
    from monai.metrics import PSNRMetric, SSIMMetric

    rng = np.random.default_rng(seed)
    target = np.cumsum(rng.normal(size=(24, 22, 20)), axis=0).astype(np.float32)
    pred = target + rng.normal(scale=0.5, size=target.shape).astype(np.float32)
    data_range = float(target.max() - target.min())
    as_tensor = lambda a: torch.from_numpy(a)[None, None]  # noqa: E731
    theirs = PSNRMetric(max_val=data_range)(as_tensor(pred), as_tensor(target)).item()
    assert psnr(pred, target, data_range=data_range) == pytest.approx(theirs, abs=1e-4)
    # MONAI averages SSIM over the windows that fit inside the image (no padding); medsr over
    # every voxel (mirrored borders). Over the same interior voxels they agree.
    metric = SSIMMetric(spatial_dims=3, data_range=data_range, win_size=11, kernel_sigma=1.5)
    theirs = metric(as_tensor(pred), as_tensor(target)).item()
    interior = np.zeros(target.shape, bool)
    interior[5:-5, 5:-5, 5:-5] = True
    assert ssim(pred, target, data_range=data_range, mask=interior) == pytest.approx(
        theirs, abs=2e-3
    )


def test_reader_reads_a_chosen_dicom_series(tmp_path):
    from conftest import write_dicom_series

    folder = write_dicom_series(tmp_path / "exam", uid="1.2.3.1", number=3)
    write_dicom_series(folder, uid="1.2.3.2", number=4, positions=[0.0, 2.0, 4.0, 6.0])
    image = LoadImage(reader=MedsrReader(series="4"), image_only=True)(folder)
    assert tuple(image.shape) == (10, 12, 4) and np.allclose(image.pixdim, [0.8, 0.8, 2.0])


def _gap_series(folder, spacing=5.0, thickness=3.0, slices=6):
    """A textured DICOM series (SimpleITK) whose slices are `thickness` mm thick and `spacing`
    mm apart: a gap between slices, as thin-section CT and many MR protocols have."""
    import SimpleITK as sitk

    folder.mkdir()
    array = np.rint(phantom_array((slices, 30, 28)) * 10).astype(np.int16)
    for index in range(slices):
        image = sitk.GetImageFromArray(array[index][None])
        image.SetSpacing((0.8, 0.8, thickness))
        image.SetOrigin((0.0, 0.0, spacing * index))
        tags = {
            "0020|000e": "1.2.3.9",
            "0020|000d": "1.2.3.9.1",
            "0020|0011": "1",
            "0008|0060": "CT",
            "0020|0013": str(index + 1),
            "0020|0032": f"0\\0\\{spacing * index}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(thickness),
            "0028|0030": "0.8\\0.8",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{index:04d}.dcm"))
        writer.Execute(image)
    return folder


def test_misr_fits_the_dicom_gap_as_the_cli_does(tmp_path, identity_checkpoint):
    series = _gap_series(tmp_path / "gap")
    out = tmp_path / "cli.nii.gz"
    argv = ["upsample", str(series), "-o", str(out), "--dtype", "float32", "--quiet"]
    assert main([*argv, "--model", str(identity_checkpoint), "--fit-steps", "3"]) == 0
    image = LoadImage(reader=MedsrReader(), image_only=True, ensure_channel_first=True)(series)
    assert image.meta["slice_thickness"] == pytest.approx(3.0)
    options = dict(method="misr", keep_dtype=False, model=identity_checkpoint, fit_steps=3)
    result = ThroughPlaneUpsample(**options)(image)
    cli = read_volume(out)
    np.testing.assert_allclose(result[0].numpy(), cli.array, rtol=1e-5, atol=1e-3)
    assert '"slice_thickness_ratio": 0.6' in result.meta["medsr_provenance"]
    assert "slice_thickness" not in result.meta  # the output's slices are thin
    contiguous = image.clone()
    del contiguous.meta["slice_thickness"]
    without = ThroughPlaneUpsample(**options)(contiguous)
    assert np.abs(without[0].numpy() - cli.array).max() > 1e-2  # the gap changes the fit
    given = ThroughPlaneUpsample(**options, slice_thickness="3mm")(contiguous)
    np.testing.assert_array_equal(given.numpy(), result.numpy())
    # --slice-profile: the same fit and record as the CLI's
    out = tmp_path / "cli_sinc.nii.gz"
    argv = ["upsample", str(series), "-o", str(out), "--dtype", "float32", "--quiet"]
    argv += ["--model", str(identity_checkpoint), "--fit-steps", "3", "--slice-profile", "sinc"]
    assert main(argv) == 0
    sinc = ThroughPlaneUpsample(**options, slice_profile="sinc")(image)
    np.testing.assert_allclose(sinc[0].numpy(), read_volume(out).array, rtol=1e-5, atol=1e-3)
    assert '"slice_profile": "sinc"' in sinc.meta["medsr_provenance"]
    assert np.abs(sinc[0].numpy() - cli.array).max() > 1e-3  # the profile changes the fit
    with pytest.raises(MedsrError, match="unknown slice profile"):
        ThroughPlaneUpsample(slice_profile="rect")


def test_a_4d_series_is_fitted_once_as_the_cli_does(tmp_path, identity_checkpoint):
    """One fit on the mean of the frames serves every frame, as `medsr upsample` fits a series
    (`medsr.upsample.series4d`); `fit_per_frame` is the CLI's --fit-per-frame."""
    import json

    import nibabel as nib

    frames = np.stack([phantom_array((24, 22, 6), seed=s) for s in (0, 1)], axis=-1)
    series = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(frames, make_affine("RAS", (1.0, 1.0, 3.0))), series)
    image = LoadImage(reader=MedsrReader(), image_only=True, ensure_channel_first=True)(series)
    assert image.shape == (2, 24, 22, 6) and image.meta["frames"] == 2
    argv = ["upsample", str(series), "--dtype", "float32", "--quiet"]
    argv += ["--model", str(identity_checkpoint), "--fit-steps", "2"]
    for per_frame in (False, True):
        out = tmp_path / f"cli_{per_frame}.nii.gz"
        assert main([*argv, "-o", str(out), *(["--fit-per-frame"] if per_frame else [])]) == 0
        upsample = ThroughPlaneUpsample(
            method="misr",
            keep_dtype=False,
            model=identity_checkpoint,
            fit_steps=2,
            fit_per_frame=per_frame,
        )
        result = upsample(image)
        for frame in range(2):
            cli = read_volume(out, frame=frame)
            np.testing.assert_allclose(result[frame].numpy(), cli.array, rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(result.affine.numpy(), cli.affine, atol=1e-6)
        record = json.loads(result.meta["medsr_provenance"])
        cli_record = json.loads(out.with_name(out.name + ".json").read_text(encoding="utf-8"))
        assert record.get("fit_mode") == cli_record.get("fit_mode")
        assert record["fit_steps_run"] == cli_record["fit_steps_run"] == 2
        assert record["fit_guard"] == cli_record["fit_guard"]
        # what the fit took of the acquisition, also where the frames reuse one fit
        assert record["fit_thickness_ratio"] == cli_record["fit_thickness_ratio"] == 1.0
    assert record["fit_mode"] == "per-frame"
    # the one fit: the transform's own record says it was on the mean
    once = ThroughPlaneUpsample(method="misr", model=identity_checkpoint, fit_steps=2)(image)
    once_record = json.loads(once.meta["medsr_provenance"])
    assert once_record["fit_mode"] == "mean"
    # the series' confidence maps: the CLI's 4D map, their records naming the one fit too
    mapped, out = tmp_path / "map.nii.gz", tmp_path / "mean.nii.gz"
    assert main([*argv, "-o", str(out), "--confidence", str(mapped)]) == 0
    transform = ThroughPlaneUpsample(method="misr", model=identity_checkpoint, fit_steps=2)
    _, uncertainty = transform.with_confidence(image)
    for frame in range(2):
        np.testing.assert_allclose(
            uncertainty[frame].numpy(), read_volume(mapped, frame=frame).array, atol=1e-3
        )
    map_record = json.loads(uncertainty.meta["medsr_provenance"])
    cli_map = json.loads(mapped.with_name(mapped.name + ".json").read_text(encoding="utf-8"))
    assert map_record["fit_mode"] == cli_map["fit_mode"] == "mean"
    assert map_record["fit_guard"] == cli_map["fit_guard"] and cli_map["output"] == "confidence"
    # the noise put back is a frame's, not the mean's (averaging two frames lowers it)
    from medsr.geometry import plan_output_grid
    from medsr.upsample.adapt import grid_noise

    first = read_volume(series, frame=0)
    grid = plan_output_grid(first.spatial_shape, first.affine)
    expected = grid_noise(first.with_array(first.array.astype(np.float32)), grid)
    assert once_record["fit_guard"]["scan_noise"] == pytest.approx(expected, abs=2e-6)
    with pytest.raises(MedsrError, match="out of range"):
        ThroughPlaneUpsample(model=identity_checkpoint, fit_steps=2, fit_frame=5)(image)
