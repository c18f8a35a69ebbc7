"""Build `sample_data/he_sections/` from the real H&E image of the development data.

No public package ships a real serial-section stack (see ../shared/data/PROVENANCE.md), so the
sample series is cut from one real 2D H&E section: section `i` is the window of rows
``i * step .. i * step + height`` of the image. Consecutive "sections" therefore differ the way
neighbouring tissue does, and the skipped rows are a known truth for what lies between them.

Usage: python pipelines/make_sample_sections.py [--source IMG] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

PIXEL_UM = 0.5  # assumed scan resolution (20x objective); the source does not state it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="../shared/data/histology/stardist_he.jpg")
    parser.add_argument("--out", default="sample_data/he_sections")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--step", type=int, default=16, help="rows between sections (pixels)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    args = parser.parse_args()
    image = np.asarray(Image.open(args.source).convert("RGB"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for index in range(args.count):
        top = index * args.step
        section = image[top : top + args.height, : args.width]
        Image.fromarray(section).save(out / f"section_{index + 1}.png", optimize=True)
    sidecar = {"spacing": [PIXEL_UM, PIXEL_UM, PIXEL_UM * args.step], "unit": "um"}
    (out / "series.json").write_text(json.dumps(sidecar, indent=2) + "\n")


if __name__ == "__main__":
    main()
