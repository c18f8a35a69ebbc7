"""The reconstruction's plane orientations (`medsr.upsample.reconstruct`, ``orientations``): one
of them alone at half the cost, which one, and where both are kept."""

import json

import numpy as np
import pytest
import torch
from conftest import make_affine, phantom_array, random_generator

import medsr.upsample.reconstruct as reconstruction
from medsr.cli import main
from medsr.geometry import plan_output_grid
from medsr.io import Volume, write_volume
from medsr.upsample.api import upsample_volume
from medsr.upsample.reconstruct import plane_orientations, reconstruct_volume

CPU = torch.device("cpu")


def _volume(spacing=(1.0, 1.0, 3.5), shape=(12, 10, 6)) -> Volume:
    return Volume(array=phantom_array(shape), affine=make_affine("LPS", list(spacing)))


def test_one_orientation_prefers_the_nearest_neighbours_then_planes_fine_along_w():
    # the validation ITK T1's geometries (2 x 2 x 3 mm). x4 along axis 0 (8 mm): stacked along
    # the 2 mm axis the neighbours are 4 planes = 8 mm apart, along the 3 mm axis 3 planes = 9 mm
    spacing = np.array([8.0, 2.0, 3.0])
    assert plane_orientations(0, spacing) == [(1, 2, 4), (2, 1, 3)]
    assert plane_orientations(0, spacing, 1) == [(1, 2, 4)]
    assert plane_orientations(0, np.array([8.0, 3.0, 2.0]), 1) == [(2, 1, 4)]  # axes swapped
    # x2 along axis 1 (4 mm): 2 planes = 4 mm along the 2 mm axis, 1 plane = 3 mm along the other
    assert plane_orientations(1, np.array([2.0, 4.0, 3.0]), 1) == [(2, 0, 1)]
    # x6.5 along axis 1 (13 mm): 6 x 2 mm and 4 x 3 mm, both 12 mm: the planes finer along w
    assert plane_orientations(1, np.array([2.0, 13.0, 3.0]), 1) == [(2, 0, 4)]
    # both the same: the first
    assert plane_orientations(2, np.array([1.0, 1.0, 3.5]), 1) == [(0, 1, 4)]
    with pytest.raises(ValueError, match="orientations"):
        plane_orientations(2, np.array([1.0, 1.0, 3.5]), 3)


def test_one_orientation_is_that_orientation_alone_and_both_are_their_mean(monkeypatch):
    generator = random_generator()
    volume = _volume(spacing=(1.0, 2.0, 3.5))  # neighbours 4 mm apart in both orientations
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    options = dict(device=CPU, precision="fp32")
    both = reconstruct_volume(volume, grid, generator, **options)
    one = reconstruct_volume(volume, grid, generator, orientations=1, **options)
    each = []
    for orientation in plane_orientations(grid.axis, volume.spacing):
        with monkeypatch.context() as patch:
            patch.setattr(reconstruction, "plane_orientations", lambda *_, o=orientation: [o])
            each.append(reconstruct_volume(volume, grid, generator, **options))
    np.testing.assert_array_equal(one, each[1])  # as near, finer along w: the second
    tolerance = 1e-5 * np.ptp(volume.array)
    np.testing.assert_allclose(both, (each[0] + each[1]) / 2, rtol=0, atol=tolerance)
    assert np.abs(each[0] - each[1]).max() > 100 * tolerance  # the choice matters


def test_the_orientations_disagreement_needs_both():
    volume = _volume()
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    with pytest.raises(ValueError, match="confidence map needs both"):
        reconstruct_volume(
            volume, grid, random_generator(), device=CPU, disagreement=True, orientations=1
        )
    with pytest.raises(ValueError, match="confidence map needs both"):
        upsample_volume(volume, method="misr", device="cpu", confidence=True, orientations=1)


def test_the_cli_records_the_orientations_and_refuses_what_cannot_hold(tmp_path, capsys):
    source = write_volume(_volume(shape=(16, 14, 6)), tmp_path / "thick.nii.gz")
    out = tmp_path / "one.nii.gz"
    argv = ["upsample", str(source), "-o", str(out), "--quiet", "--fit-steps", "2"]
    assert main([*argv, "--orientations", "1"]) == 0
    record = json.loads(out.with_name(out.name + ".json").read_text())
    assert record["orientations"] == 1 and record["fit_steps_run"] == 2
    refused = (
        [*argv, "--overwrite", "--orientations", "1", "--confidence", str(tmp_path / "c.nii.gz")],
        ["upsample", str(source), "-o", str(out), "--method", "bspline", "--orientations", "1"],
    )
    for command in refused:
        capsys.readouterr()
        assert main(command) == 1
        err = capsys.readouterr().err
        assert err.startswith("medsr: error:") and len(err.splitlines()) == 1
        assert "orientations" in err
    assert not (tmp_path / "c.nii.gz").exists()


def test_upsample_file_refuses_one_orientation_with_the_confidence_map_before_any_work(tmp_path):
    from medsr.upsample.files import upsample_file

    source = write_volume(_volume(shape=(16, 14, 6)), tmp_path / "thick.nii.gz")
    with pytest.raises(ValueError, match="confidence map needs both"):
        upsample_file(
            source, tmp_path / "out.nii.gz", confidence=tmp_path / "c.nii.gz", orientations=1
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thick.nii.gz"]
