"""Bad inputs and arguments across every subcommand: exit 1 (known error) or 2 (usage), one line
on stderr, no traceback, nothing written, inputs untouched, found before the work starts."""

import hashlib
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from conftest import make_affine, phantom_array, write_dicom_series

from medsr.cli import main
from medsr.io import Volume, write_volume


def _nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 4.0)) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Good and bad inputs, all under tmp_path/in."""
    root = tmp_path / "in"
    root.mkdir()
    scan = write_volume(
        Volume((phantom_array((16, 14, 8)) * 100).astype(np.int16), make_affine("RAS", (1, 1, 4))),
        root / "scan.nii.gz",
    )
    oblique = write_volume(
        Volume(phantom_array((16, 14, 8)), make_affine("oblique", (1, 1, 4))),
        root / "oblique.nii.gz",
    )
    (root / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    (root / "list.yaml").write_text("- steps: 3\n", encoding="utf-8")
    (root / "bad.pt").write_bytes(b"not a checkpoint")
    tifffile.imwrite(root / "nospacing.tif", np.zeros((5, 6, 7), np.uint16))
    write_dicom_series(root / "exam", uid="1.2.3.1", number=3)
    write_dicom_series(root / "exam", uid="1.2.3.2", number=4, positions=[0.0])
    (root / "empty").mkdir()
    (root / "existing.nii.gz").write_bytes(scan.read_bytes())
    (root / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n the user's figure")
    (root / "report").mkdir()
    (root / "report" / "report.md").write_text("# the user's report\n", encoding="utf-8")
    seg = np.zeros((16, 14, 9), np.uint8)
    return {
        "scan": scan,
        "oblique": oblique,
        "corrupt": root / "corrupt.nii.gz",
        "flat": _nifti(root / "flat.nii", np.zeros((5, 5), np.float32)),
        "five_d": _nifti(root / "five.nii", np.zeros((5, 5, 5, 2, 2), np.float32)),
        "nan": _nifti(root / "nan.nii", np.full((6, 6, 6), np.nan, np.float32)),
        "iso": _nifti(root / "iso.nii", np.ones((6, 6, 6), np.float32), (1.0, 1.0, 1.0)),
        "one_slice": _nifti(root / "one.nii", np.ones((6, 6, 1), np.float32)),
        "three_slices": _nifti(root / "three.nii", np.ones((6, 6, 3), np.float32)),
        "thick24": _nifti(root / "t24.nii", np.ones((6, 6, 5), np.float32), (0.25, 0.25, 6.0)),
        "seg_off_grid": _nifti(root / "seg.nii", seg),
        "yaml_list": root / "list.yaml",
        "bad_pt": root / "bad.pt",
        "nospacing": root / "nospacing.tif",
        "exam": root / "exam",
        "empty": root / "empty",
        "existing": root / "existing.nii.gz",
        "figure": root / "figure.png",
        "report": root / "report",
        "root": root,
    }


# (argv with {placeholders}, expected exit code, text in the one stderr line)
CASES = {
    # upsample: inputs
    "missing input": ("upsample {root}/nope.nii.gz", 1, "input not found"),
    "corrupt gzip": ("upsample {corrupt}", 1, "corrupt or truncated NIfTI"),
    "2D file": ("upsample {flat}", 1, "expected a 3D volume"),
    "5D file": ("upsample {five_d}", 1, "expected a 3D volume"),
    "NaN voxels": ("upsample {nan}", 1, "NaN/Inf voxels"),
    "isotropic input": ("upsample {iso}", 1, "already isotropic"),
    "too small to adapt": ("upsample {iso} --scale 8", 1, "iso.nii' is too small to adapt"),
    "unknown input format": ("upsample {yaml_list}", 1, "unknown volume format"),
    "single slice": ("upsample {one_slice}", 1, "1 slice(s) along its thick axis"),
    "three slices": ("upsample {three_slices}", 1, "3 slice(s) along its thick axis"),
    "TIFF without spacing": ("upsample {nospacing}", 1, "no spacing"),
    "two DICOM series": ("upsample {exam}", 1, "choose one with --series"),
    "unknown DICOM series": ("upsample {exam} --series 9", 1, "no single DICOM series '9'"),
    # upsample: outputs
    "missing output folder": ("upsample {scan} -o {tmp}/nodir/o.nii.gz", 1, "does not exist"),
    "DICOM output": ("upsample {scan} -o {tmp}/o.dcm", 1, "cannot write dicom"),
    "unknown output format": ("upsample {scan} -o {tmp}/o.xyz", 1, "unknown volume format"),
    "output exists": ("upsample {scan} -o {existing}", 1, "output exists"),
    "output is the input": ("upsample {scan} -o {scan} --overwrite", 1, "is the input"),
    "oblique to TIFF": ("upsample {oblique} -o {tmp}/o.ome.tif", 1, "TIFF stores no orientation"),
    "4D to NRRD": ("upsample {root}/dwi.nii.gz -o {tmp}/o.nrrd", 1, "write it as NIfTI"),
    "4D fit frame out of range": ("upsample {root}/dwi.nii.gz --fit-frame 2", 1, "out of range"),
    "fit frame of a 3D input": ("upsample {scan} --fit-frame 0", 1, "applies to a 4D series"),
    "fit frame and per frame": (
        "upsample {root}/dwi.nii.gz --fit-frame 0 --fit-per-frame",
        1,
        "exclude each other",
    ),
    "fit per frame without misr": (
        "upsample {root}/dwi.nii.gz --method bspline --fit-per-frame",
        1,
        "--fit-per-frame applies to --method misr only",
    ),
    "fit frame without misr": (
        "upsample {root}/dwi.nii.gz --method linear --fit-frame 1",
        1,
        "--fit-frame applies to --method misr only",
    ),
    # upsample: options
    "spacing with a bad unit": ("upsample {scan} --spacing 3furlongs", 2, "expected a length"),
    "negative spacing": ("upsample {scan} --spacing -1", 2, "must be positive"),
    "coarser target": ("upsample {scan} --spacing 8mm", 1, "--allow-coarser"),
    "spacing and scale": ("upsample {scan} --spacing 1 --scale 2", 2, "not allowed with"),
    "negative fit steps": ("upsample {scan} --fit-steps -1", 1, "--fit-steps must be >= 0"),
    "negative fit seconds": ("upsample {scan} --fit-seconds -1", 1, "--fit-seconds must be"),
    "fit options without misr": ("upsample {scan} --method linear --fit-steps 3", 1, "misr only"),
    "bad checkpoint": ("upsample {scan} --model {bad_pt}", 1, "cannot load model checkpoint"),
    "missing checkpoint": ("upsample {scan} --model {root}/no.pt", 1, "cannot load model"),
    "CUDA without a GPU": ("upsample {scan} --device cuda:0", 1, "CUDA is not available"),
    "zero threads": ("upsample {scan} --threads 0", 2, "--threads: must be >= 1"),
    "labels missing": ("upsample {scan} --labels {tmp}/none.nii.gz", 1, "label map not found"),
    "factor above the learned range": ("upsample {thick24}", 1, "above the learned method's"),
    "labels off the grid": ("upsample {scan} --labels {seg_off_grid}", 1, "voxel grid"),
    "labels-out alone": ("upsample {scan} --labels-out {tmp}/l.nii.gz", 1, "needs --labels"),
    "mixed input units": ("upsample {nospacing} --input-spacing 1um 1mm 2um", 1, "mixes units"),
    "two input spacings": ("upsample {scan} --input-spacing 1 2", 2, "expected 3 arguments"),
    "unknown method": ("upsample {scan} --method nearest", 2, "invalid choice"),
    # upsample: --confidence
    "confidence with bspline": (
        "upsample {scan} --method bspline --confidence {tmp}/c.nii.gz",
        1,
        "not --method bspline",
    ),
    "confidence with linear": (
        "upsample {scan} --method linear --confidence {tmp}/c.nii.gz",
        1,
        "not --method linear",
    ),
    "confidence with labels": (
        "upsample {scan} --method labels --confidence {tmp}/c.nii.gz",
        1,
        "not --method labels",
    ),
    "confidence exists": ("upsample {scan} --confidence {existing}", 1, "output exists"),
    "confidence folder missing": (
        "upsample {scan} --confidence {tmp}/nodir/c.nii.gz",
        1,
        "does not exist",
    ),
    "confidence format": ("upsample {scan} --confidence {tmp}/c.xyz", 1, "unknown volume format"),
    "confidence is the output": (
        "upsample {scan} -o {tmp}/o.nii.gz --confidence {tmp}/o.nii.gz",
        1,
        "is -o",
    ),
    "confidence oblique to TIFF": (
        "upsample {oblique} -o {tmp}/o.nii.gz --confidence {tmp}/c.ome.tif",
        1,
        "TIFF stores no orientation",
    ),
    "confidence of a coarser target": (
        "upsample {scan} --spacing 8mm --allow-coarser --confidence {tmp}/c.nii.gz",
        1,
        "needs a finer target",
    ),
    "4D confidence to NRRD": (
        "upsample {root}/dwi.nii.gz -o {tmp}/o.nii.gz --confidence {tmp}/c.nrrd",
        1,
        "write --confidence as NIfTI",
    ),
    # train
    "train without data": ("train --data {root}/none.nii.gz --out {tmp}/run", 1, "not found"),
    "train YAML list": (
        "train --data {scan} --out {tmp}/run --config {yaml_list}",
        1,
        "must be a mapping",
    ),
    "train even neighbours": (
        "train --data {scan} --out {tmp}/run --set model.neighbours=2",
        1,
        "must be odd",
    ),
    "train zero steps": ("train --data {scan} --out {tmp}/run --set train.steps=0", 1, "steps"),
    "train fraction 1.5": (
        "train --data {scan} --out {tmp}/run --set data.validation_fraction=1.5",
        1,
        "validation_fraction",
    ),
    "train unknown key": ("train --data {scan} --out {tmp}/run --set data.speed=2", 1, "unknown"),
    "train bad --set": ("train --data {scan} --out {tmp}/run --set steps", 1, "section.field"),
    "train resume nothing": ("train --data {scan} --out {tmp}/run --resume", 1, "no checkpoint"),
    "train out under a file": ("train --data {scan} --out {scan}/run", 1, "cannot create"),
    "train on the validation data": (
        "train --data {scan} --validation-data {scan} --out {tmp}/run",
        1,
        "in both --data and --validation-data",
    ),
    "train on a copy of the validation data": (
        "train --data {scan} --validation-data {existing} --out {tmp}/run",
        1,
        "is a copy of",
    ),
    # evaluate
    "evaluate factor below 1": ("evaluate {scan} --factor 0.5 --out {tmp}/rep", 1, "above 1"),
    "evaluate missing volume": (
        "evaluate {root}/no.nii --factor 2 --out {tmp}/rep",
        1,
        "not found",
    ),
    "evaluate over a report": ("evaluate {scan} --factor 2 --out {report}", 1, "output exists"),
    "evaluate out under a file": (
        "evaluate {scan} --factor 2 --out {scan}/rep",
        1,
        "cannot create",
    ),
    # compare
    "compare into a missing folder": ("compare {scan} {scan} --out {tmp}/nd/x.png", 1, "not exist"),
    "compare to a text file": ("compare {scan} {scan} --out {tmp}/x.txt", 1, "must end with"),
    "compare missing input": ("compare {root}/no.nii {scan} --out {tmp}/x.png", 1, "not found"),
    "compare over a figure": ("compare {scan} {scan} --out {figure}", 1, "output exists"),
    # batch
    "batch missing root": ("batch {root}/nothere {tmp}/out", 1, "input folder not found"),
    "batch empty root": ("batch {empty} {tmp}/out", 1, "no scans or section folders"),
    "batch into its input root": ("batch {root} {root}", 1, "is the input folder"),
    "batch input root inside the output root": ("batch {exam} {root}", 1, "inside the output"),
    # info
    "info missing": ("info {root}/nope.nii", 1, "input not found"),
    "info corrupt": ("info {corrupt}", 1, "corrupt or truncated NIfTI"),
    "unknown command": ("resample {scan}", 2, "invalid choice"),
}


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_there_are_at_least_35_cases_over_every_subcommand():
    commands = {argv.split()[0] for argv, _, _ in CASES.values()}
    assert len(CASES) >= 35
    assert {"upsample", "train", "evaluate", "compare", "batch", "info"} <= commands


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_no_output_input_untouched(case, files, tmp_path, capsys):
    template, code, text = CASES[case]
    if "{root}/dwi.nii.gz" in template:
        _nifti(files["root"] / "dwi.nii.gz", np.zeros((6, 6, 5, 2), np.float32))
    out = tmp_path / "outputs"
    out.mkdir()
    names = {key: str(value) for key, value in files.items()}
    argv = template.format(tmp=out, **names).split()
    before_in, start = _digests(files["root"]), time.perf_counter()
    assert main(argv) == code if code == 1 else _exits(argv, code)
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert text in err and "Traceback" not in err, err
    assert list(out.rglob("*")) == [], "nothing may be written"
    assert _digests(files["root"]) == before_in
    assert seconds < 5, f"the check took {seconds:.1f} s: it must come before the work"


def _exits(argv: list[str], code: int) -> bool:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code == code
