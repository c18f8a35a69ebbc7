"""The confidence map (`medsr.upsample.confidence`): grid, measured slices, what it ranks, the
reconstruction's two orientations, the CLI's file and sidecar, 4D, MONAI."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import make_affine, phantom_array

import medsr.upsample.reconstruct as reconstruct_module
from medsr.cli import main
from medsr.errors import MedsrError
from medsr.geometry import plan_output_grid
from medsr.io import Volume, read_volume, write_volume
from medsr.nets.checkpoint import default_model_path, load_generator
from medsr.upsample.api import upsample_volume
from medsr.upsample.confidence import measured_slices
from medsr.upsample.reconstruct import reconstruct_volume


def _box_volume(shape=(24, 22, 9), thick=3.0) -> Volume:
    """A flat background with a bright box whose faces cross the thick slices: an edge."""
    array = np.full(shape, 100.0, np.float32)
    array[6:18, 5:17, 3:6] = 400.0
    array += np.random.default_rng(0).normal(0, 0.5, shape).astype(np.float32)
    return Volume(array, make_affine("LPS", (1.0, 1.0, thick)), {"unit": "mm"})


@pytest.fixture(scope="module")
def shipped_map():
    """(volume, result) of the shipped prior on the box, factor 3 (odd), with the map."""
    volume = _box_volume()
    result = upsample_volume(volume, fit_steps=0, device="cpu", keep_dtype=False, confidence=True)
    return volume, result


def test_map_lies_on_the_output_grid_in_float32(shipped_map):
    volume, result = shipped_map
    uncertainty = result.meta["confidence"]
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    assert uncertainty.array.shape == grid.shape == result.spatial_shape
    assert uncertainty.array.dtype == np.float32
    np.testing.assert_allclose(uncertainty.affine, result.affine)
    record = uncertainty.meta["provenance"]
    assert record["sigma_voxels"] == 1.0 and "|misr - bspline|" in record["estimator"]
    assert record["value_unit"] == "the input's intensity units"


def test_map_is_zero_exactly_on_measured_slice_centres(shipped_map):
    volume, result = shipped_map
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    measured = measured_slices(grid)
    np.testing.assert_array_equal(measured, np.arange(1, grid.shape[2], 3))  # factor 3: odd
    uncertainty = result.meta["confidence"].array
    assert np.all(uncertainty[:, :, measured] == 0)
    between = np.delete(uncertainty, measured, axis=2)
    assert np.all(between >= 0) and between.max() > 0


def test_even_factor_has_no_measured_slice():
    volume = _box_volume(shape=(12, 10, 6), thick=2.0)
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    assert measured_slices(grid).size == 0


def test_map_is_larger_at_an_edge_than_in_a_flat_region(shipped_map):
    _, result = shipped_map
    uncertainty = result.meta["confidence"].array
    # output slices 9-17 lie inside the box along z (input slices 3-5); its faces: z about 9, 18
    edge = uncertainty[8:16, 7:15, 7:11]  # across the lower face, inside the box in-plane
    flat = uncertainty[0:4, 0:4, 5:23]  # background corner, far from the box
    assert edge.mean() > 5 * flat.mean(), (edge.mean(), flat.mean())


def test_reconstruction_mean_is_unchanged_and_its_disagreement_is_the_half_difference():
    volume = _box_volume(shape=(14, 12, 6))
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    generator, _ = load_generator(default_model_path())
    cpu = torch.device("cpu")
    plain = reconstruct_volume(volume, grid, generator, device=cpu)
    mean, disagreement = reconstruct_volume(volume, grid, generator, device=cpu, disagreement=True)
    np.testing.assert_array_equal(mean, plain)  # the map costs the output nothing
    orientations = reconstruct_module.plane_orientations(grid.axis, volume.spacing)
    alone = []
    for orientation in orientations:
        original = reconstruct_module.plane_orientations
        reconstruct_module.plane_orientations = lambda *_, o=orientation: [o]
        try:
            alone.append(reconstruct_volume(volume, grid, generator, device=cpu))
        finally:
            reconstruct_module.plane_orientations = original
    np.testing.assert_allclose(disagreement, np.abs(alone[0] - alone[1]) / 2, atol=1e-3)
    assert disagreement.max() > 1  # the orientations do disagree somewhere


def test_colour_input_gets_one_map(identity_checkpoint):
    array = (phantom_array((14, 12, 6, 3)) % 256).astype(np.uint8)
    volume = Volume(array, make_affine("RAS", (1.0, 1.0, 3.0)), {"unit": "mm"})
    result = upsample_volume(
        volume, model=identity_checkpoint, fit_steps=0, device="cpu", confidence=True
    )
    assert result.array.shape[3] == 3
    assert result.meta["confidence"].array.shape == result.spatial_shape


@pytest.mark.parametrize(
    ("options", "text"),
    [({"method": "bspline"}, "not --method bspline"), ({"spacing": 6.0}, "finer target")],
)
def test_api_refuses_a_map_without_a_learned_upsampling(options, text):
    volume = _box_volume(shape=(12, 10, 6))
    with pytest.raises(MedsrError, match=text):
        upsample_volume(volume, confidence=True, allow_coarser=True, **options)


def _upsample(tmp_path, scan, name, *extra):
    out = tmp_path / f"{name}.nii.gz"
    argv = ["upsample", str(scan), "-o", str(out), "--fit-steps", "0", "--quiet", "--device"]
    assert main([*argv, "cpu", *extra]) == 0
    return out


def test_cli_writes_the_map_and_its_sidecar_the_same_bytes_on_a_rerun(
    tmp_path, identity_checkpoint
):
    volume = Volume(
        (phantom_array((16, 14, 7)) * 50).astype(np.int16), make_affine("LIA", (1, 1, 3))
    )
    scan = write_volume(volume, tmp_path / "scan.nii.gz")
    model = ["--model", str(identity_checkpoint)]
    plain = _upsample(tmp_path, scan, "plain", *model)
    maps = [tmp_path / f"map{i}.nii.gz" for i in range(2)]
    outs = [_upsample(tmp_path, scan, f"out{i}", *model, "--confidence", str(m)) for i, m in
            enumerate(maps)]  # fmt: skip
    output, uncertainty = read_volume(outs[0]), read_volume(maps[0])
    assert uncertainty.array.dtype == np.float32 and uncertainty.array.shape == output.array.shape
    np.testing.assert_allclose(uncertainty.affine, output.affine, atol=1e-6)
    header = nib.load(maps[0]).header
    assert np.array_equal(header.get_qform(), header.get_sform())
    record = json.loads(maps[0].with_name(maps[0].name + ".json").read_text())
    assert record["output"] == "confidence" and record["sigma_voxels"] == 1.0
    assert record["fit_steps_run"] == 0 and record["input_sha256"]
    assert maps[0].read_bytes() == maps[1].read_bytes()
    sidecars = [m.with_name(m.name + ".json").read_text() for m in maps]
    assert sidecars[0] == sidecars[1]
    assert outs[0].read_bytes() == plain.read_bytes()  # the main output is the plain run's


def test_a_4d_series_map_must_be_nifti_and_is_checked_before_any_work(
    tmp_path, identity_checkpoint, capsys
):
    # a series' map is one 4D file, streamed frame by frame (medsr.upsample.series4d)
    array = np.stack([phantom_array((12, 10, 6), seed=s) for s in range(2)], axis=3)
    scan = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 3.0, 1.0])), scan)
    map_path, out = tmp_path / "map.tif", tmp_path / "out.nii.gz"
    argv = ["upsample", str(scan), "-o", str(out), "--fit-steps", "0", "--quiet"]
    argv += ["--model", str(identity_checkpoint), "--confidence", str(map_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "write --confidence as NIfTI" in err and len(err.strip().splitlines()) == 1
    assert not map_path.exists() and not out.exists()


def test_monai_dictionary_transform_gives_the_apis_map(identity_checkpoint):
    from monai.data import MetaTensor

    from medsr.monai import ThroughPlaneUpsampled

    volume = _box_volume(shape=(14, 12, 6))
    options = {"model": identity_checkpoint, "fit_steps": 0, "keep_dtype": False, "device": "cpu"}
    expected = upsample_volume(volume, confidence=True, **options).meta["confidence"]
    image = MetaTensor(torch.from_numpy(volume.array[None]), affine=torch.from_numpy(volume.affine))
    transform = ThroughPlaneUpsampled(["image"], confidence_keys=["uncertainty"], **options)
    data = transform({"image": image})
    np.testing.assert_allclose(data["uncertainty"][0].numpy(), expected.array, atol=1e-5)
    np.testing.assert_allclose(data["uncertainty"].affine.numpy(), expected.affine, atol=1e-6)
    assert '"output": "confidence"' in data["uncertainty"].meta["medsr_provenance"]
    with pytest.raises(ValueError, match="misr"):
        ThroughPlaneUpsampled(["image"], confidence_keys=["u"], method="bspline")
