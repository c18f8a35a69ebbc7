"""End-to-end time of `medsr upsample` on the 256 x 256 x 60 scan, per runtime setting.

The scan is the INIA19 macaque template (168 x 206 x 128 at 0.5 mm) resampled by cubic spline
to 256 x 256 x 60, i.e. 0.33 x 0.40 x 1.07 mm (the same physical extent), written as float32
NIfTI. Each setting runs `medsr upsample` as its own process (imports, reading, the fit, the
reconstruction, writing), as a user runs it; the time is the process's wall clock. The settings
are the precision (``--precision``), channels_last for the encoder (the module constant
`medsr.upsample.reconstruct.CHANNELS_LAST`, set in the child process before the command runs)
and ``--batch-size``. Every setting is run `--repeats` times, interleaved, and the minimum is
reported (on a shared machine other processes only add time). The CPU model and whether it has
native bf16 are printed with the table: on a CPU without it, bf16 is emulated and far slower.
`CHANNELS_LAST` sets the reconstruction's layout only: with a fit (``--fit-steps`` above 0, the
default) the fitted model comes out of the CPU `Trainer` channels_last whatever it says, and the
fit's arithmetic follows the precision (`medsr.runtime.fit_precision`).

Usage (from the repository root):
    python pipelines/benchmark_end_to_end.py --data ../shared/data/mri [--repeats 2]
        [--fit-steps 0] [--settings fp32:0:8 bf16:1:4 ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medsr.provenance import cpu_model
from medsr.runtime import cpu_supports_bf16

SHAPE = (256, 256, 60)
DEFAULT_SETTINGS = [
    f"{precision}:{layout}:{batch}"
    for precision in ("fp32", "bf16")
    for layout in (0, 1)
    for batch in (4, 8)
]

CHILD = """
import sys
import medsr.upsample.reconstruct as reconstruct
reconstruct.CHANNELS_LAST[sys.argv[1]] = bool(int(sys.argv[2]))
from medsr.cli import main
sys.exit(main(sys.argv[3:]))
"""


def make_scan(data: Path, out: Path) -> Path:
    """The macaque template resampled to `SHAPE` over the same extent."""
    image = nib.load(data / "inia19_macaque_t1_0.5mm.nii.gz")
    array = np.asarray(image.dataobj, dtype=np.float32)
    zoom = [n / s for n, s in zip(SHAPE, array.shape, strict=True)]
    resampled = ndimage.zoom(array, zoom, order=3).astype(np.float32)
    spacing = [0.5 * s / n for s, n in zip(array.shape, SHAPE, strict=True)]
    affine = np.diag([*spacing, 1.0])
    path = out / "macaque_256x256x60.nii.gz"
    nib.save(nib.Nifti1Image(resampled, affine), path)
    return path


def run_setting(scan: Path, out: Path, setting: str, fit_steps: int | None) -> float:
    precision, layout, batch = setting.split(":")
    command = [sys.executable, "-c", CHILD, precision, layout, "upsample", str(scan)]
    command += ["-o", str(out / "out.nii.gz"), "--overwrite", "--quiet"]
    command += ["--precision", precision, "--batch-size", batch]
    if fit_steps is not None:
        command += ["--fit-steps", str(fit_steps)]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mri"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fit-steps", type=int, help="default: the command's")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        scan = make_scan(args.data, out)
        times: dict[str, list[float]] = {s: [] for s in args.settings}
        for _ in range(args.repeats):
            for setting in args.settings:
                times[setting].append(run_setting(scan, out, setting, args.fit_steps))
                print(setting, f"{times[setting][-1]:.1f}", flush=True)
    steps = "default" if args.fit_steps is None else args.fit_steps
    print(f"\ncpu: {cpu_model()}, native bf16: {'yes' if cpu_supports_bf16() else 'no'}")
    print("\n| precision | channels_last | batch | fit steps | min (s) | runs (s) |")
    print("|---|---|---|---|---|---|")
    for setting, values in times.items():
        precision, layout, batch = setting.split(":")
        runs = " / ".join(f"{v:.1f}" for v in values)
        row = [precision, bool(int(layout)), batch, steps, f"{min(values):.1f}", runs]
        print("| " + " | ".join(str(item) for item in row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
