import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_dicom_series
from PIL import Image

import medsr.batch
from medsr.batch import MANIFEST, discover, run_batch
from medsr.cli import main
from medsr.provenance import sha256

SETTINGS = {"method": "linear", "keep_dtype": True}


def _nifti(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).random((6, 5, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 3.0, 1.0])), path)
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "in"
    _nifti(root / "a.nii.gz", 0)
    _nifti(root / "site2" / "b.nii.gz", 1)
    (root / "site2" / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08corrupt")
    series = root / "site2" / "slide7"
    series.mkdir()
    for index in range(4):
        Image.fromarray(np.full((8, 10, 3), 40 * index, np.uint8)).save(series / f"s{index}.png")
    (series / "series.json").write_text(json.dumps({"spacing": [0.5, 0.5, 4], "unit": "um"}))
    return root


def test_discover_keeps_relative_paths_and_series_folders(tree, tmp_path):
    tasks = discover(tree, tmp_path / "out", None, None)
    keys = {t.key: Path(t.output).relative_to(tmp_path / "out").as_posix() for t in tasks}
    assert keys == {
        "a.nii.gz": "a.nii.gz",
        "site2/b.nii.gz": "site2/b.nii.gz",
        "site2/broken.nii.gz": "site2/broken.nii.gz",
        "site2/slide7": "site2/slide7.ome.tif",
    }
    assert [t.key for t in discover(tree, tmp_path, "b.nii*", None)] == ["site2/b.nii.gz"]


def test_one_corrupt_input_does_not_stop_the_others(tree, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["batch", str(tree), str(out), "--method", "linear", "--workers", "2", "--quiet"])
    assert code == 1
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["inputs"]
    assert {k: v["status"] for k, v in manifest.items()} == {
        "a.nii.gz": "done",
        "site2/b.nii.gz": "done",
        "site2/broken.nii.gz": "failed",
        "site2/slide7": "done",
    }
    assert "cannot read" in manifest["site2/broken.nii.gz"]["error"]
    assert manifest["a.nii.gz"]["output_sha256"] == sha256(out / "a.nii.gz")
    assert (out / "site2" / "slide7.ome.tif").exists()
    assert not (out / "site2" / "broken.nii.gz").exists()


def test_resume_after_a_killed_run_skips_finished_inputs(tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    (tree / "site2" / "broken.nii.gz").unlink()
    real = medsr.batch.process_one
    calls = []

    def killed_on_second(task, settings):
        calls.append(task.key)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run dies here
        return real(task, settings)

    monkeypatch.setattr(medsr.batch, "process_one", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_batch(tree, out, settings=SETTINGS, workers=1)
    first = calls[0]
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["inputs"]
    assert list(manifest) == [first] and manifest[first]["status"] == "done"
    done_before = Path(manifest[first]["output"]).stat().st_mtime_ns
    monkeypatch.setattr(medsr.batch, "process_one", real)
    calls.clear()
    entries = run_batch(tree, out, settings=SETTINGS, workers=1)
    assert all(e["status"] == "done" for e in entries.values()) and len(entries) == 3
    assert Path(manifest[first]["output"]).stat().st_mtime_ns == done_before  # skipped
    # changed settings redo everything
    entries = run_batch(tree, out, settings={"method": "bspline", "keep_dtype": True}, workers=1)
    assert Path(entries[first]["output"]).stat().st_mtime_ns != done_before


def test_dask_local_cluster_runs_the_same_tasks(tree, tmp_path):
    pytest.importorskip("dask.distributed")
    (tree / "site2" / "broken.nii.gz").unlink()
    entries = run_batch(tree, tmp_path / "out", settings=SETTINGS, workers=1, scheduler="local")
    assert sorted(entries) == ["a.nii.gz", "site2/b.nii.gz", "site2/slide7"]
    assert all(e["status"] == "done" for e in entries.values())


def test_missing_input_root_is_a_clear_error(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "none"), str(tmp_path / "out"), "--quiet"]) == 1
    assert "input folder not found" in capsys.readouterr().err


def test_mixed_tree_right_inputs_nothing_clobbered_rerun_skips(tmp_path):
    import tifffile

    root = tmp_path / "in"
    _nifti(root / "subject1" / "t1.nii.gz", 0)
    _nifti(root / "subject1" / "t2.nii.gz", 1)
    for name in ("qc_axial.png", "qc_coronal.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "subject1" / name)
    stacks = root / "stacks"
    stacks.mkdir()
    for name in ("a.tif", "b.tif"):
        meta = {"spacing": 3.0, "unit": "um"}
        stack = np.zeros((4, 6, 5), np.uint16)
        tifffile.imwrite(stacks / name, stack, imagej=True, resolution=(2.0, 2.0), metadata=meta)
    series = root / "slide1"
    series.mkdir()
    for index in range(4):
        Image.fromarray(np.full((8, 10), 30 * index, np.uint8)).save(series / f"{index}.png")
    (series / "series.json").write_text(json.dumps({"spacing": [0.5, 0.5, 4], "unit": "um"}))
    write_dicom_series(root / "dicom_export", extension="")
    write_dicom_series(root / "exam2", uid="1.2.3.1", number=3)
    write_dicom_series(root / "exam2", uid="1.2.3.2", number=5, positions=[0, 3, 6, 9, 12.0])
    out = root / "results"  # the output folder inside the input folder
    keys = {t.key for t in discover(root, out, None, None)}
    assert keys == {
        "subject1/t1.nii.gz",
        "subject1/t2.nii.gz",
        "stacks/a.tif",
        "stacks/b.tif",
        "slide1",
        "dicom_export",
        "exam2#3",  # one input per series of a folder holding several
        "exam2#5",
    }
    out.mkdir()
    foreign = _nifti(out / "subject1" / "t1.nii.gz", 9)  # not this batch's: must survive
    before = foreign.read_bytes()
    argv = ["batch", str(root), str(out), "--method", "linear", "--workers", "1", "--quiet"]
    assert main(argv) == 1
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["inputs"]
    assert manifest["subject1/t1.nii.gz"]["status"] == "failed"
    assert "--overwrite" in manifest["subject1/t1.nii.gz"]["error"]
    assert foreign.read_bytes() == before
    done = {k for k, v in manifest.items() if v["status"] == "done"}
    assert done == keys - {"subject1/t1.nii.gz"}
    assert {t.key for t in discover(root, out, None, None)} == keys  # outputs not re-read
    assert main([*argv, "--overwrite"]) == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert main(argv) == 0  # a rerun skips every input
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
