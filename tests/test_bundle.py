"""The MONAI bundle of the shipped model, built and run as a user would."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipelines"))

from build_bundle import build_bundle  # noqa: E402

from medsr.cli import main  # noqa: E402
from medsr.io import read_volume  # noqa: E402

pytest.importorskip("fire")  # the `python -m monai.bundle` command line


def _bundle_command(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", *args]
    return subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=600)


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
