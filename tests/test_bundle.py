"""The MONAI bundle of the shipped model, built and run as a user would."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipelines"))

from build_bundle import build_bundle  # noqa: E402
from conftest import make_affine, phantom_array  # noqa: E402

from medsr.cli import main  # noqa: E402
from medsr.io import Volume, read_volume, write_volume  # noqa: E402

pytest.importorskip("fire")  # the `python -m monai.bundle` command line


def _bundle_command(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", *args]
    # the medsr under test (this checkout), not whichever one is installed
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=600, env=env)


def test_bundle_has_the_layout_and_its_metadata_verifies(tmp_path):
    bundle = build_bundle(tmp_path / "bundle")
    for part in ("LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md"):
        assert (bundle / part).is_file(), part
    assert (bundle / "models" / "model.pt").stat().st_size > 0
    done = _bundle_command(
        bundle,
        "verify_metadata",
        "--meta_file",
        "configs/metadata.json",
        "--filepath",
        "metadata_schema.json",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "verified with no error" in done.stdout + done.stderr


def test_bundle_run_upsamples_a_folder_and_overlays_the_cli(tmp_path):
    bundle = build_bundle(tmp_path / "bundle")
    data = tmp_path / "scans"
    data.mkdir()
    shutil.copy(ROOT / "sample_data" / "dipy_aniso_vox.nii.gz", data)
    out = tmp_path / "out"
    done = _bundle_command(
        bundle,
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(out),
        "--fit_steps",
        "5",
        "--device",
        "cpu",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = read_volume(out / "dipy_aniso_vox_misr.nii.gz")
    cli = tmp_path / "cli.nii.gz"
    argv = ["upsample", str(data / "dipy_aniso_vox.nii.gz"), "-o", str(cli), "--quiet"]
    assert main([*argv, "--fit-steps", "5", "--device", "cpu"]) == 0
    expected = read_volume(cli)
    assert result.spatial_shape == expected.spatial_shape
    np.testing.assert_allclose(result.affine, expected.affine, atol=1e-5)
    np.testing.assert_allclose(result.array, expected.array, atol=1)
    record = json.loads((out / "dipy_aniso_vox_misr.nii.gz.json").read_text(encoding="utf-8"))
    assert record["fit_steps_run"] == 5 and record["method"] == "misr"


CONFIG = ROOT / "bundle" / "medsr_through_plane_sr" / "configs" / "inference.json"


def _run_in_process(dataset_dir: Path, output_dir: Path, **override) -> list:
    """The bundle's `run`, as ``python -m monai.bundle run`` runs it, in this process."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(CONFIG),
        meta_file=str(CONFIG.with_name("metadata.json")),
        logging_file=False,
        workflow_type="infer",
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        device="cpu",
        **override,
    )
    workflow.initialize()
    result = workflow.run()
    workflow.finalize()
    return result


class _Watch:
    """Wraps the bundle's writer and counts the earlier outputs still alive at each call."""

    def __init__(self, save) -> None:
        self.save, self.outputs, self.alive = save, [], []

    def __call__(self, item):
        import gc
        import weakref

        gc.collect()
        self.alive.append(sum(ref() is not None for ref in self.outputs))
        result = self.save(item)
        self.outputs.append(weakref.ref(result["image"]))
        return result


def test_bundle_run_writes_and_releases_each_output_in_turn(tmp_path):
    from monai.transforms import SaveImaged

    from medsr.monai import MedsrWriter

    data = tmp_path / "scans"
    data.mkdir()
    for seed in range(3):
        volume = Volume(phantom_array((12, 10, 5), seed=seed), make_affine("RAS", (1, 1, 3)))
        write_volume(volume, data / f"scan{seed}.nii.gz")
    out = tmp_path / "out"
    watch = _Watch(
        SaveImaged(
            "image", output_dir=str(out), output_postfix="bspline", output_ext=".nii.gz",
            resample=False, separate_folder=False, print_log=False, writer=MedsrWriter,
        )
    )  # fmt: skip
    result = _run_in_process(data, out, method="bspline", postprocessing=watch)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [
        f"scan{seed}_bspline.nii.gz" for seed in range(3)
    ]
    assert watch.alive == [0, 0, 0]  # no output outlives its write
    assert result == [3]  # the run returns a count, not a list of volumes


def test_bundle_run_upsamples_a_4d_series_as_the_cli_does(tmp_path):
    import nibabel as nib

    data = tmp_path / "scans"
    data.mkdir()
    frames = np.stack([phantom_array((12, 10, 5), seed=s) for s in range(3)], axis=-1)
    image = nib.Nifti1Image(frames, make_affine("RAS", (1.0, 1.0, 3.0)))
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 2.5
    nib.save(image, data / "dwi.nii.gz")
    out = tmp_path / "out"
    _run_in_process(data, out, method="bspline")
    cli = tmp_path / "cli.nii.gz"
    argv = ["upsample", str(data / "dwi.nii.gz"), "-o", str(cli), "--method", "bspline"]
    assert main([*argv, "--quiet"]) == 0
    mine, theirs = nib.load(out / "dwi_bspline.nii.gz"), nib.load(cli)
    assert mine.shape == theirs.shape and mine.shape[3] == 3
    np.testing.assert_array_equal(np.asarray(mine.dataobj), np.asarray(theirs.dataobj))
    np.testing.assert_allclose(mine.affine, theirs.affine, atol=1e-5)
    assert mine.header["pixdim"][4] == 2.5 and mine.header.get_xyzt_units()[1] == "sec"
