"""Label maps onto the thin-slice grid: shape-based interpolation, never an invented label."""

import numpy as np
import pytest
from conftest import make_affine, phantom_array

from medsr.cli import main
from medsr.errors import MedsrError
from medsr.geometry import plan_output_grid
from medsr.io import Volume, read_volume, write_volume
from medsr.labels import dice, nearest_labels, upsample_labels


def _nested_spheres(shape=(48, 44, 64)) -> np.ndarray:
    a, b, c = np.indices(shape)
    r = np.sqrt((a - 24) ** 2 + (b - 21) ** 2 + (c - 33) ** 2)
    lesion = ((a - 30) / 5) ** 2 + ((b - 14) / 4) ** 2 + ((c - 30) / 14) ** 2 < 1  # elongated
    labels = (r < 18).astype(np.int16) + (r < 9)
    labels[lesion] = 3
    return labels


@pytest.mark.parametrize("factor", [4, 8])
def test_shape_based_beats_nearest_neighbour_for_every_label(factor):
    truth = _nested_spheres()
    thick = truth[:, :, factor // 2 :: factor][:, :, : truth.shape[2] // factor]
    volume = Volume(thick, make_affine("RAS", (1.0, 1.0, float(factor))))
    grid = plan_output_grid(volume.spatial_shape, volume.affine, spacing=1.0)
    shaped = upsample_labels(volume, grid).array
    nearest = nearest_labels(volume, grid).array
    assert shaped.dtype == thick.dtype and set(np.unique(shaped)) <= set(np.unique(thick))
    labels = np.unique(truth)[1:]
    shape_scores = np.array([dice(shaped, truth, label) for label in labels])
    nearest_scores = np.array([dice(nearest, truth, label) for label in labels])
    # shapes morph between slices: better on average, never clearly worse for one label
    assert shape_scores.mean() > nearest_scores.mean()
    assert np.all(shape_scores >= nearest_scores - 0.01), (shape_scores, nearest_scores)


def test_labels_overlay_the_image_output_and_keep_their_type(tmp_path):
    affine = make_affine("LIA", (0.8, 0.8, 4.0))
    image = write_volume(Volume(phantom_array((20, 18, 8)), affine), tmp_path / "scan.nii.gz")
    seg = np.zeros((20, 18, 8), np.uint8)
    seg[5:15, 4:12, 2:6] = 7
    labels = write_volume(Volume(seg, affine), tmp_path / "seg.nii.gz")
    out = tmp_path / "iso.nii.gz"
    argv = ["upsample", str(image), "-o", str(out), "--method", "bspline", "--quiet"]
    assert main([*argv, "--labels", str(labels)]) == 0
    result, label_result = read_volume(out), read_volume(tmp_path / "iso_labels.nii.gz")
    assert label_result.spatial_shape == result.spatial_shape
    np.testing.assert_allclose(label_result.affine, result.affine)
    assert label_result.array.dtype == np.uint8 and set(np.unique(label_result.array)) == {0, 7}
    alone = tmp_path / "seg_iso.nii.gz"
    assert main(["upsample", str(labels), "-o", str(alone), "--method", "labels", "--quiet"]) == 0
    np.testing.assert_array_equal(read_volume(alone).array, label_result.array)


def test_label_map_off_the_image_grid_is_refused_before_any_output(tmp_path, capsys):
    image = write_volume(
        Volume(phantom_array((20, 18, 8)), make_affine("RAS", (1, 1, 4))), tmp_path / "scan.nii.gz"
    )
    labels = write_volume(
        Volume(np.zeros((20, 18, 9), np.uint8), make_affine("RAS", (1, 1, 4))),
        tmp_path / "s.nii.gz",
    )
    out = tmp_path / "o.nii.gz"
    argv = ["upsample", str(image), "-o", str(out), "--method", "linear", "--labels", str(labels)]
    assert main(argv) == 1
    assert "does not lie on the image's voxel grid" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "o_labels.nii.gz").exists()


def test_a_float_image_is_not_a_label_map():
    volume = Volume(np.random.default_rng(0).random((8, 8, 5)), make_affine("RAS", (1, 1, 3)))
    grid = plan_output_grid(volume.spatial_shape, volume.affine)
    with pytest.raises(MedsrError, match="must hold integers"):
        upsample_labels(volume, grid)


def _disk_then_nothing(centre: tuple[int, int]) -> Volume:
    """A disk on thick slices 0-1 and nothing on slices 2-3 (an all-background plane)."""
    a, b = np.indices((48, 44))
    labels = np.zeros((48, 44, 4), np.uint8)
    labels[..., :2] = ((a - centre[0]) ** 2 + (b - centre[1]) ** 2 < 36)[..., None] * 5
    return Volume(labels, make_affine("RAS", (1.0, 1.0, 4.0)))


def test_label_next_to_an_empty_slice_does_not_depend_on_where_it_lies():
    near, far = _disk_then_nothing((12, 11)), _disk_then_nothing((33, 30))
    grid = plan_output_grid(near.spatial_shape, near.affine, spacing=1.0)
    shaped_near = upsample_labels(near, grid).array
    shaped_far = upsample_labels(far, grid).array
    np.testing.assert_array_equal(np.roll(shaped_near, (21, 19), axis=(0, 1)), shaped_far)
    # the disk ends half-way between its last slice and the empty one (thin slices 4-7 -> 8-11)
    assert shaped_far[33, 30, :8].tolist() == [5] * 8 and shaped_far[33, 30, 8:].max() == 0


def test_coarser_labels_take_the_majority_and_never_invent_an_id(tmp_path):
    pattern = [1, 3, 3, 1, 1, 3]  # along the thick axis: two slabs of three slices
    labels = np.zeros((6, 5, 6), np.uint8)
    labels[1:5, 1:4] = pattern
    path = write_volume(Volume(labels, make_affine("RAS", (1.0, 1.0, 4.0))), tmp_path / "s.nii.gz")
    out = tmp_path / "coarse.nii.gz"
    argv = ["upsample", str(path), "-o", str(out), "--method", "labels", "--allow-coarser"]
    assert main([*argv, "--spacing", "12", "--quiet"]) == 0
    coarse = read_volume(out).array
    assert coarse.dtype == np.uint8 and coarse.shape == (6, 5, 2)
    assert coarse[2, 2].tolist() == [3, 1] and coarse[0, 0].tolist() == [0, 0]
    # two slices per slab: 1 against 3 is a tie, which goes to the lower label
    assert main([*argv, "--spacing", "8", "--quiet", "--overwrite"]) == 0
    assert read_volume(out).array[2, 2].tolist() == [1, 1, 1]


def _scan_and_labels(tmp_path):
    affine = make_affine("RAS", (1.0, 1.0, 4.0))
    image = write_volume(Volume(phantom_array((20, 18, 8)), affine), tmp_path / "scan.nii.gz")
    seg = np.zeros((20, 18, 8), np.uint8)
    seg[5:15, 4:12, 2:6] = 3
    return image, write_volume(Volume(seg, affine), tmp_path / "seg.nii.gz")


def test_labels_out_is_where_the_labels_go_and_is_named(tmp_path, capsys):
    image, labels = _scan_and_labels(tmp_path)
    out, labels_out = tmp_path / "iso.nii.gz", tmp_path / "masks" / "tumour.nrrd"
    labels_out.parent.mkdir()
    argv = ["upsample", str(image), "-o", str(out), "--method", "bspline", "--labels", str(labels)]
    assert main([*argv, "--labels-out", str(labels_out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and f"wrote {labels_out}" in printed
    assert not (tmp_path / "iso_labels.nii.gz").exists()
    label_result = read_volume(labels_out)
    assert set(np.unique(label_result.array)) == {0, 3}
    assert label_result.spatial_shape == read_volume(out).spatial_shape


@pytest.mark.parametrize(
    ("labels_out", "message"),
    [
        ("taken.nii.gz", "output exists"),
        ("missing/l.nii.gz", "output folder does not exist"),
        ("l.png", "unknown volume format"),
        ("seg.nii.gz", "is --labels"),
        ("scan.nii.gz", "is the input"),
        ("iso.nii.gz", "is -o"),
    ],
)
def test_labels_out_is_checked_before_any_work(tmp_path, capsys, labels_out, message):
    image, labels = _scan_and_labels(tmp_path)
    (tmp_path / "taken.nii.gz").write_bytes(b"the user's file")
    out = tmp_path / "iso.nii.gz"
    argv = ["upsample", str(image), "-o", str(out), "--method", "linear", "--labels", str(labels)]
    assert main([*argv, "--labels-out", str(tmp_path / labels_out)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and (tmp_path / "taken.nii.gz").read_bytes() == b"the user's file"


def test_labels_out_to_tiff_of_an_oblique_scan_is_refused_before_any_work(tmp_path, capsys):
    affine = make_affine("oblique", (1.0, 1.0, 4.0))
    image = write_volume(Volume(phantom_array((20, 18, 8)), affine), tmp_path / "scan.nii.gz")
    labels = write_volume(Volume(np.zeros((20, 18, 8), np.uint8), affine), tmp_path / "s.nii.gz")
    out = tmp_path / "iso.nii.gz"
    argv = ["upsample", str(image), "-o", str(out), "--method", "linear", "--labels", str(labels)]
    assert main([*argv, "--labels-out", str(tmp_path / "l.ome.tif")]) == 1
    assert "not axis-aligned" in capsys.readouterr().err
    assert not out.exists()
