"""Peak memory of one `medsr upsample`, and where it is reached: an RSS timeline (a probe).

Runs the command in this process, samples the resident set size every 50 ms in a thread, marks
each medsr log line with the RSS at that moment, and prints the peak, the marks and the samples
around the peak. `--make-ct36 PATH` first writes the chest CT of docs/benchmarks.md (slices 12-47
of ``ct/pyradiomics_lung2_ct_0.63x0.63x5mm.nrrd``, 512 x 512 x 36, int16 NIfTI, same geometry).

Usage (from the repository root):
    python pipelines/probe_rss.py --make-ct36 ct36.nii.gz --data ../shared/data
    python pipelines/probe_rss.py -- upsample ct36.nii.gz -o out.nii.gz --scale 10 --overwrite

The sampling thread adds a few MiB; `/usr/bin/time -v medsr upsample ...` is the number the
benchmarks quote.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import threading
import time
from pathlib import Path

CT = "ct/pyradiomics_lung2_ct_0.63x0.63x5mm.nrrd"
CT_SLICES = slice(12, 48)


def rss_mib() -> float:
    """This process's resident set size now (MiB)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_ct36(data: Path, out: Path) -> None:
    """The 36-slice chest CT of the end-to-end benchmark, as int16 NIfTI (SimpleITK keeps the
    crop's geometry)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(data / CT))
    sitk.WriteImage(sitk.Cast(image[:, :, CT_SLICES], sitk.sitkInt16), str(out))


class _Marks(logging.Handler):
    def __init__(self, start: float, marks: list) -> None:
        super().__init__(logging.DEBUG)
        self.start, self.marks = start, marks

    def emit(self, record: logging.LogRecord) -> None:
        when = time.perf_counter() - self.start
        self.marks.append((when, rss_mib(), record.name, record.getMessage()[:90]))


def probe(argv: list[str]) -> int:
    """Run ``medsr argv`` here and print its RSS timeline; the command's exit code."""
    samples, marks, start = [], [], time.perf_counter()

    def sample() -> None:
        while True:
            samples.append((time.perf_counter() - start, rss_mib()))
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    logger, handler = logging.getLogger("medsr"), _Marks(start, marks)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        from medsr.cli import main

        marks.append((time.perf_counter() - start, rss_mib(), "probe", "medsr.cli imported"))
        code = main(argv)
        marks.append((time.perf_counter() - start, rss_mib(), "probe", "done"))
    finally:  # the process may go on (a test): leave medsr's logging as it was
        logger.removeHandler(handler)
        logger.setLevel(level)
    peak_at, peak = max(samples, key=lambda item: item[1])
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"exit {code}; peak RSS {peak:.0f} MiB at {peak_at:.1f} s; ru_maxrss {maxrss:.0f} MiB")
    for when, rss, name, message in marks:
        print(f"{when:7.1f} s {rss:7.0f} MiB  {name}: {message}")
    print("around the peak (s, MiB):")
    for when, rss in samples:
        if abs(when - peak_at) < 3:
            print(f"  {when:6.2f} {rss:6.0f}")
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:  # everything after it is the medsr command
        split = argv.index("--")
        return probe(argv[split + 1 :])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-ct36", type=Path, required=True, metavar="PATH")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args(argv)
    make_ct36(args.data, args.make_ct36)
    print(f"wrote {args.make_ct36}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
