import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_dicom_series
from PIL import Image

import medsr.batch.plan
import medsr.batch.run
from medsr.batch.plan import MANIFEST, discover
from medsr.batch.run import run_batch
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
    real = medsr.batch.run.process_one
    calls = []

    def killed_on_second(task, settings):
        calls.append(task.key)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run dies here
        return real(task, settings)

    monkeypatch.setattr(medsr.batch.run, "process_one", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_batch(tree, out, settings=SETTINGS, workers=1)
    first = calls[0]
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["inputs"]
    assert list(manifest) == [first] and manifest[first]["status"] == "done"
    done_before = Path(manifest[first]["output"]).stat().st_mtime_ns
    monkeypatch.setattr(medsr.batch.run, "process_one", real)
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


def test_a_rerun_after_a_refusal_leaves_the_users_file_untouched(tree, tmp_path, capsys):
    out = tmp_path / "out"
    foreign = _nifti(out / "a.nii.gz", 9)  # the user's own file where an output would go
    before = foreign.read_bytes()
    argv = ["batch", str(tree), str(out), "--method", "linear", "--workers", "1", "--quiet"]
    for _ in range(3):  # the same command again and again, never --overwrite
        assert main(argv) == 1
        assert foreign.read_bytes() == before
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["inputs"]
        assert manifest["a.nii.gz"]["status"] == "failed"
        assert "not this batch's" in manifest["a.nii.gz"]["error"]
        assert "not this batch's" in capsys.readouterr().out  # tqdm.write: stdout


def test_an_output_replaced_by_the_user_is_no_longer_the_batchs(tree, tmp_path):
    out = tmp_path / "out"
    (tree / "site2" / "broken.nii.gz").unlink()
    run_batch(tree, out, settings=SETTINGS, workers=1)
    mine = _nifti(out / "a.nii.gz", 9)  # the user puts their own file in the output's place
    before = mine.read_bytes()
    entries = run_batch(tree, out, settings={"method": "bspline", "keep_dtype": True}, workers=1)
    assert entries["a.nii.gz"]["status"] == "failed" and mine.read_bytes() == before
    assert entries["site2/b.nii.gz"]["status"] == "done"  # its own outputs are redone


def _nrrd(path: Path, seed: int) -> Path:
    from medsr.io import Volume, write_volume

    array = np.random.default_rng(seed).random((6, 5, 4)).astype(np.float32)
    return write_volume(Volume(array, np.diag([1.0, 1.0, 3.0, 1.0])), path)


@pytest.mark.parametrize("case", ["dicom folder beside its nifti", "one --output-suffix"])
def test_two_inputs_that_would_write_one_output_are_refused(case, tmp_path, capsys):
    root, out = tmp_path / "in", tmp_path / "out"
    if case == "dicom folder beside its nifti":
        write_dicom_series(root / "case1")
        _nifti(root / "case1.nii.gz", 0)
        extra, names = [], ("'case1'", "'case1.nii.gz'", "case1.nii.gz'")
    else:
        _nifti(root / "scan.nii.gz", 0)
        _nrrd(root / "scan.nrrd", 1)
        extra, names = ["--output-suffix", ".nii.gz"], ("'scan.nii.gz'", "'scan.nrrd'")
    _nifti(root / "other.nii.gz", 2)  # no collision: refused all the same, before any work
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    argv = ["batch", str(root), str(out), "--method", "linear", "--workers", "1", "--quiet"]
    assert main([*argv, *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(name in err[0] for name in names), err
    assert "would both write" in err[0]
    assert not out.exists()  # nothing written, not even the folder or the manifest
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_every_collision_gets_its_own_line(tmp_path, capsys):
    root = tmp_path / "in"
    for name in ("a", "b"):
        _nifti(root / f"{name}.nii.gz", 0)
        _nrrd(root / f"{name}.nrrd", 1)
    argv = ["batch", str(root), str(tmp_path / "out"), "--output-suffix", ".nii.gz", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "'a.nii.gz' and 'a.nrrd'" in err[0] and "'b.nrrd'" in err[1], err


@pytest.mark.parametrize("where", ["same", "inside"])
def test_an_output_root_holding_the_input_root_is_refused(where, tree, tmp_path, capsys):
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    input_root, output_root = (tree, tree) if where == "same" else (tree / "site2", tree)
    assert main(["batch", str(input_root), str(output_root), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("is the input folder" if where == "same" else "inside") in err[0]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_dry_run_lists_pairs_and_problems_and_writes_nothing(tree, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["batch", str(tree), str(out), "--method", "linear", "--dry-run"]
    assert main(argv) == 1  # the corrupt input is found by the dry run, not by the batch
    lines = capsys.readouterr().out.splitlines()
    assert f"{tree / 'a.nii.gz'} -> {out / 'a.nii.gz'}  [run]" in lines
    assert f"{tree / 'site2' / 'slide7'} -> {out / 'site2' / 'slide7.ome.tif'}  [run]" in lines
    broken = tree / "site2" / "broken.nii.gz"
    assert f"{broken} -> {out / 'site2' / 'broken.nii.gz'}  [would fail]" in lines
    assert [line for line in lines if line.startswith("problem:")] == [
        next(line for line in lines if line.startswith("problem: site2/broken.nii.gz: "))
    ]
    assert lines[-1].startswith("4 inputs: 4 to run, 0 done, 1 problem(s)")
    assert not out.exists()
    broken.unlink()
    foreign = _nifti(out / "a.nii.gz", 9)
    _nifti(tree / "a.nii", 3)  # a.nii and a.nii.gz both become a.nii.gz
    assert main([*argv, "--output-suffix", ".nii.gz"]) == 1
    text = capsys.readouterr().out
    assert "problem: inputs 'a.nii' and 'a.nii.gz' would both write" in text
    assert f"{tree / 'a.nii'} -> {out / 'a.nii.gz'}  [collides]" in text
    assert f"problem: a.nii.gz: output exists and is not this batch's: '{foreign}'" in text
    assert [p for p in out.rglob("*")] == [foreign]


def test_dry_run_gives_every_input_the_upsample_checks(tmp_path, capsys):
    root, out = tmp_path / "in", tmp_path / "out"
    _nifti(root / "thick.nii.gz", 0)
    iso = root / "iso.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), np.eye(4)), iso)
    thin = root / "one_slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 1), np.float32), np.diag([1, 1, 3, 1.0])), thin)
    argv = ["batch", str(root), str(out), "--dry-run"]
    assert main([*argv, "--method", "bspline"]) == 1
    lines = capsys.readouterr().out.splitlines()
    problems = sorted(line for line in lines if line.startswith("problem:"))
    assert len(problems) == 2
    assert problems[0].startswith("problem: iso.nii.gz: ") and "isotropic" in problems[0]
    assert problems[1].startswith("problem: one_slice.nii.gz: ") and "slice" in problems[1]
    assert f"{root / 'thick.nii.gz'} -> {out / 'thick.nii.gz'}  [run]" in lines
    iso.unlink(), thin.unlink()
    # the learned method's own checks: a factor beyond the model's range
    assert main([*argv, "--spacing", "0.1"]) == 1
    text = capsys.readouterr().out
    assert "problem: thick.nii.gz: factor 30 is above the learned method's range" in text
    assert "[would fail]" in text
    # and the fit's extent: x5 needs five voxels on both other axes; axis 1 has three
    small = root / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 3, 4), np.float32), np.diag([1, 1, 5, 1.0])), small)
    assert main([*argv, "--pattern", "small*"]) == 1
    assert "problem: small.nii.gz: " in (text := capsys.readouterr().out) and "too small" in text
    small.unlink()
    assert main([*argv, "--fit-steps", "0"]) == 0
    assert "0 problem(s); dry run, nothing written" in capsys.readouterr().out
    assert not out.exists()


def _count_input_reads(monkeypatch, root: Path) -> dict[str, int]:
    """How often each file under `root` is opened for reading through `Path.open` (the
    checksum's way of reading; the volume readers open files their own way)."""
    counts: dict[str, int] = {}
    real = Path.open

    def counting(self, mode="r", *args, **kwargs):
        if "r" in mode and "b" in mode and Path(self).resolve().is_relative_to(root.resolve()):
            counts[Path(self).name] = counts.get(Path(self).name, 0) + 1
        return real(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting)
    return counts


def test_each_input_is_hashed_once_and_an_unchanged_rerun_hashes_nothing(tmp_path, monkeypatch):
    root, out = tmp_path / "in", tmp_path / "out"
    for name in ("a", "b"):
        _nifti(root / f"{name}.nii.gz", 0)
    counts = _count_input_reads(monkeypatch, root)
    entries = run_batch(root, out, settings=SETTINGS, workers=1)
    assert all(e["status"] == "done" for e in entries.values())
    assert counts == {"a.nii.gz": 1, "b.nii.gz": 1}
    counts.clear()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    entries = run_batch(root, out, settings=SETTINGS, workers=1)
    assert counts == {}, "an unchanged input is not read again to decide the skip"
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a touched but identical input is hashed (once) and still skipped; a changed one is redone
    os.utime(root / "a.nii.gz", ns=(1, 1))
    _nifti(root / "b.nii.gz", 5)
    entries = run_batch(root, out, settings=SETTINGS, workers=1)
    assert counts == {"a.nii.gz": 1, "b.nii.gz": 1}
    assert (out / "a.nii.gz").stat().st_mtime_ns == stamps[out / "a.nii.gz"]
    assert entries["b.nii.gz"]["input_sha256"] == sha256(root / "b.nii.gz")
    assert entries["a.nii.gz"]["input_stat"][1] == 1


def test_the_provenance_records_the_threads_cpu_and_device(tmp_path):
    import torch

    root, out = tmp_path / "in", tmp_path / "out"
    _nifti(root / "a.nii.gz", 0)
    run_batch(root, out, settings=SETTINGS, workers=1)
    record = json.loads((out / "a.nii.gz.json").read_text(encoding="utf-8"))
    assert record["torch_threads"] == max(1, os.cpu_count() or 1) == torch.get_num_threads()
    assert record["device"] == "cpu" and record["cpu"] and record["cpu"] != "unknown"


def _series_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _read_series(folder: Path):
    import SimpleITK as sitk

    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    assert len(uids) == 1, uids
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uids[0]))
    return reader.Execute()


@pytest.fixture
def dicom_tree(tmp_path) -> Path:
    root = tmp_path / "in"
    _nifti(root / "a.nii.gz", 0)
    _nifti(root / "site2" / "b.nii.gz", 1)
    write_dicom_series(root / "exam")
    return root


DICOM_BATCH = ["--method", "linear", "--format", "dicom", "--workers", "1", "--quiet"]


def test_dicom_batch_writes_the_series_that_upsample_writes(dicom_tree, tmp_path):
    import pydicom

    out = tmp_path / "out"
    assert main(["batch", str(dicom_tree), str(out), *DICOM_BATCH]) == 0
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["inputs"]
    assert sorted(p.name for p in out.iterdir()) == [
        "a",
        "a.json",
        "exam",
        "exam.json",
        MANIFEST,
        "site2",
    ]
    patients = {}
    for key, folder in (("a.nii.gz", "a"), ("site2/b.nii.gz", "site2/b"), ("exam", "exam")):
        entry, output = manifest[key], out / folder
        assert entry["status"] == "done" and entry["output"] == str(output)
        assert entry["output_sha256"] == sha256(output)
        source = dicom_tree / key
        reference = tmp_path / "reference" / folder
        reference.parent.mkdir(parents=True, exist_ok=True)
        argv = ["upsample", str(source), "-o", str(reference), "--method", "linear"]
        if entry["dicom_patient_id"] is not None:
            argv += ["--dicom-patient-id", entry["dicom_patient_id"]]
        assert main([*argv, "--format", "dicom", "--quiet"]) == 0
        assert _series_files(output) == _series_files(reference)  # the one writer, same bytes
        image, expected = _read_series(output), _read_series(reference)
        assert image.GetSize() == expected.GetSize()
        assert image.GetOrigin() == expected.GetOrigin()
        assert image.GetSpacing() == expected.GetSpacing()
        assert image.GetDirection() == expected.GetDirection()
        first = pydicom.dcmread(next(output.iterdir()), stop_before_pixels=True)
        patients[key] = (str(first.PatientID), str(first.StudyInstanceUID))
    source = pydicom.dcmread(next((dicom_tree / "exam").iterdir()), stop_before_pixels=True)
    assert patients["exam"] == (str(source.PatientID), str(source.StudyInstanceUID))
    assert manifest["exam"]["dicom_patient_id"] is None  # a DICOM input keeps its patient
    # non-DICOM inputs: a stable anonymous patient each, derived from the relative path
    assert patients["a.nii.gz"][0] == medsr.batch.plan.batch_patient_id(
        medsr.batch.plan.Task("", "", "a.nii.gz"), {}
    )
    assert patients["a.nii.gz"][0].startswith("MEDSR-")
    assert patients["a.nii.gz"][0] != patients["site2/b.nii.gz"][0]


def test_one_dicom_patient_id_for_the_batch_gives_each_input_its_own_study(dicom_tree, tmp_path):
    import pydicom

    out = tmp_path / "out"
    argv = ["batch", str(dicom_tree), str(out), *DICOM_BATCH, "--dicom-patient-id", "P7"]
    assert main(argv) == 0
    first = {
        name: pydicom.dcmread(next((out / name).iterdir()), stop_before_pixels=True)
        for name in ("a", "site2/b", "exam")
    }
    assert str(first["a"].PatientID) == str(first["site2/b"].PatientID) == "P7"
    assert first["a"].StudyInstanceUID != first["site2/b"].StudyInstanceUID
    assert str(first["exam"].PatientID) != "P7"  # a DICOM input keeps its own patient


def test_dicom_batch_rerun_skips_and_a_changed_folder_is_no_longer_the_batchs(
    dicom_tree, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["batch", str(dicom_tree), str(out), *DICOM_BATCH]
    assert main(argv) == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert main(argv) == 0  # every folder is done: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    edited = sorted((out / "a").iterdir())[0]
    edited.write_bytes(edited.read_bytes()[:-2] + b"\0\0")  # the user edits one slice
    before = _series_files(out / "a")
    assert main(argv) == 1
    assert _series_files(out / "a") == before
    entry = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["inputs"]["a.nii.gz"]
    assert entry["status"] == "failed" and "not this batch's" in entry["error"]


def test_a_users_folder_at_a_dicom_output_is_left_alone(dicom_tree, tmp_path, capsys):
    out = tmp_path / "out"
    mine = write_dicom_series(out / "a", uid="1.2.3.99")  # the user's own series there
    (out / "a" / "notes.txt").write_text("mine")
    before = _series_files(mine)
    argv = ["batch", str(dicom_tree), str(out), *DICOM_BATCH]
    for _ in range(2):
        assert main(argv) == 1
        assert _series_files(mine) == before
        assert f"not this batch's: '{mine}'" in capsys.readouterr().out
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["inputs"]
    assert manifest["a.nii.gz"]["status"] == "failed"
    assert manifest["exam"]["status"] == "done"


def test_dicom_dry_run_lists_the_folders_and_writes_nothing(dicom_tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["batch", str(dicom_tree), str(out), *DICOM_BATCH, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{dicom_tree / 'a.nii.gz'} -> {out / 'a'}  [run]" in lines
    assert f"{dicom_tree / 'exam'} -> {out / 'exam'}  [run]" in lines
    assert not out.exists()
    assert main(["batch", str(dicom_tree), str(out), *DICOM_BATCH]) == 0
    assert main(["batch", str(dicom_tree), str(out), *DICOM_BATCH, "--dry-run"]) == 0
    assert f"{dicom_tree / 'a.nii.gz'} -> {out / 'a'}  [skip (done)]" in capsys.readouterr().out


def test_an_output_folder_holding_another_inputs_output_is_a_collision(tmp_path, capsys):
    root, out = tmp_path / "in", tmp_path / "out"
    _nifti(root / "a.nii.gz", 0)
    _nifti(root / "a" / "b.nii.gz", 1)  # out/a/ (a's series) would hold out/a/b/
    argv = ["batch", str(root), str(out), *DICOM_BATCH]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'a.nii.gz'" in err[0] and "'a/b.nii.gz'" in err[0], err
    assert not out.exists()
    assert main([*argv, "--dry-run"]) == 1
    text = capsys.readouterr().out
    assert f"{root / 'a.nii.gz'} -> {out / 'a'}  [collides]" in text
    assert f"{root / 'a' / 'b.nii.gz'} -> {out / 'a' / 'b'}  [collides]" in text
    assert not out.exists()


def test_dicom_batch_bad_options_are_one_line_before_work(dicom_tree, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["batch", str(dicom_tree), str(out), "--quiet"]
    for extra, message in (
        (["--format", "dicom", "--output-suffix", ".nii.gz"], "does not apply to --format dicom"),
        (["--dicom-patient-id", "P1"], "need --format dicom"),
        (["--format", "dicom", "--dicom-patient-id", "x" * 65], "1 to 64 characters"),
    ):
        assert main([*base, *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_rerun_finishes_a_half_done_4d_series_and_hidden_names_are_no_inputs(
    tmp_path, monkeypatch
):
    import medsr.upsample.series4d
    from medsr.upsample.series4d import partial_folder

    root, out = tmp_path / "in", tmp_path / "out"
    _nifti(root / "a.nii.gz", 0)
    data = np.random.default_rng(2).random((6, 5, 4, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), root / "dwi.nii.gz")
    hidden = root / ".dwi.nii.gz.medsr-partial"  # a series left half done beside its input
    hidden.mkdir()
    _nifti(hidden / "frame.nii.gz", 3)
    _nifti(root / ".hidden.nii.gz", 4)
    assert sorted(t.key for t in discover(root, out, None, None)) == ["a.nii.gz", "dwi.nii.gz"]
    kept, real = [], medsr.upsample.series4d._keep_frame

    def killed_after_two(folder, index, result, name="frame"):
        if len(kept) == 2:
            raise KeyboardInterrupt  # the run dies in the middle of the series
        kept.append(index)
        real(folder, index, result, name)

    monkeypatch.setattr(medsr.upsample.series4d, "_keep_frame", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_batch(root, out, settings=SETTINGS, workers=1)
    monkeypatch.undo()
    output = out / "dwi.nii.gz"
    assert not output.exists() and len(list(partial_folder(output).glob("frame_*.npy"))) == 2
    calls, real_upsample = [], medsr.upsample.series4d.upsample_volume
    monkeypatch.setattr(
        medsr.upsample.series4d,
        "upsample_volume",
        lambda *a, **k: calls.append(1) or real_upsample(*a, **k),
    )
    entries = run_batch(root, out, settings=SETTINGS, workers=1)
    assert all(e["status"] == "done" for e in entries.values()) and len(entries) == 2
    assert len(calls) == 1  # only the frame the killed run had not finished
    assert not partial_folder(output).exists()
    whole = tmp_path / "whole.nii.gz"
    assert main(["upsample", str(root / "dwi.nii.gz"), "-o", str(whole), "--method", "linear"]) == 0
    assert output.read_bytes() == whole.read_bytes()


def test_an_input_removed_after_it_failed_no_longer_fails_the_batch(tree, tmp_path, capsys):
    """The exit status and the summary count this run's inputs, not every manifest entry."""
    out = tmp_path / "out"
    command = ["batch", str(tree), str(out), "--method", "linear", "--workers", "1"]
    assert main(command) == 1
    (tree / "site2" / "broken.nii.gz").unlink()
    capsys.readouterr()
    assert main(command) == 0
    assert "3 done, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "option", [["--fit-steps", "3"], ["--fit-seconds", "5"], ["--model", "m.pt"]]
)
def test_fit_options_without_the_learned_method_are_refused(tree, tmp_path, capsys, option):
    """As in `medsr upsample`: one line, exit 1, nothing written."""
    out = tmp_path / "out"
    assert main(["batch", str(tree), str(out), "--method", "bspline", *option]) == 1
    error = capsys.readouterr().err
    assert "apply to --method misr only" in error and len(error.strip().splitlines()) == 1
    assert not out.exists()


def test_threads_are_the_threads_of_each_worker(tree, tmp_path, monkeypatch):
    """``--threads N``: each worker's torch threads (default: the CPUs shared out); not a setting
    of the manifest, so changing it does not redo finished inputs."""
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    out = tmp_path / "out"
    command = ["batch", str(tree), str(out), "--method", "linear", "--workers", "1", "--quiet"]
    main([*command, "--threads", "3", "--pattern", "a.nii*"])
    assert calls and set(calls) == {3}
    assert "threads" not in json.loads((out / MANIFEST).read_text(encoding="utf-8"))["settings"]
    assert medsr.batch.run._job_settings({}, 2, 4)[0]["threads"] == max(
        1, (os.cpu_count() or 1) // 4
    )


def test_slice_profile_passes_through_to_each_fit_and_the_manifest(
    tree, tmp_path, identity_checkpoint
):
    out = tmp_path / "out"
    command = ["batch", str(tree), str(out), "--workers", "1", "--quiet", "--pattern", "a.nii*"]
    command += ["--model", str(identity_checkpoint), "--fit-steps", "1", "--slice-profile", "sinc"]
    assert main(command) == 0
    assert (
        json.loads((out / MANIFEST).read_text(encoding="utf-8"))["settings"]["slice_profile"]
        == "sinc"
    )
    assert json.loads((out / "a.nii.gz.json").read_text(encoding="utf-8"))["slice_profile"] == (
        "sinc"
    )


def test_the_planes_per_call_are_not_part_of_the_manifest_key():
    """`--batch-size` changes no output value: a rerun with another one redoes nothing."""
    from medsr.batch.plan import settings_key

    learned = {"method": "misr", "fit_steps": 800, "device": "auto"}
    assert settings_key(dict(learned, batch_size=4)) == settings_key(dict(learned, batch_size=8))
    assert settings_key(dict(learned, batch_size=4)) != settings_key(dict(learned, fit_steps=400))


def test_a_learned_batch_of_another_medsr_version_is_redone(monkeypatch):
    """The learned method's outputs may change between versions (the fit, the reconstruction):
    its manifest key holds the version; the interpolations' keys stay as they were."""
    import medsr._version
    from medsr.batch.plan import settings_key

    learned, spline = {"method": "misr", "fit_steps": 800}, {"method": "bspline"}
    before = settings_key(learned), settings_key(spline)
    assert json.loads(before[1]) == spline
    monkeypatch.setattr(medsr._version, "__version__", "9.9.9")
    assert settings_key(learned) != before[0] and settings_key(spline) == before[1]


@pytest.mark.parametrize("native", [False, True])
def test_a_learned_batch_resumed_on_another_kind_of_cpu_is_redone(monkeypatch, native):
    """A default left to medsr is 800 bf16 steps on a CPU with native bf16 and a float32 time
    budget on one without (`medsr.upsample.budget`): the key holds the fit's arithmetic, so the
    other kind of CPU does not skip what the first made; the interpolations' keys hold none."""
    import medsr.runtime
    from medsr.batch.plan import settings_key

    learned = {"method": "misr", "fit_steps": None, "device": "cpu", "precision": "auto"}
    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: native)
    key = settings_key(learned)
    assert json.loads(key)["fit_arithmetic"] == ("bf16" if native else "fp32")
    monkeypatch.setattr(medsr.runtime, "cpu_supports_bf16", lambda: not native)
    assert settings_key(learned) != key
    assert settings_key({"method": "bspline"}) == json.dumps({"method": "bspline"})
