"""4D NIfTI series (DWI, fMRI): each volume upsampled as the 3D command does it, written as 4D."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsr.cli import main
from medsr.io import read_volume, volume_frames
from medsr.upsample.api import upsample_volume

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
    assert main(["upsample", str(series), "-o", str(out), *options]) == 0
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
