"""Build the MONAI bundle of the shipped model.

    python pipelines/build_bundle.py [--out dist/medsr_through_plane_sr]

Copies the bundle's sources (`bundle/medsr_through_plane_sr`: LICENSE, configs, docs), the
metadata schema, and the shipped generator (`medsr/weights/misr_default.pt` as
`models/model.pt`), and writes medsr's version into the metadata. Run it with:

    cd dist/medsr_through_plane_sr && python -m monai.bundle run \
        --config_file configs/inference.json --dataset_dir ../../sample_data
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from medsr import __version__
from medsr.nets.checkpoint import default_model_path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "bundle" / "medsr_through_plane_sr"


def build_bundle(out: Path) -> Path:
    """Assemble the bundle folder at `out` (replaced if it exists)."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(SOURCE, out)
    shutil.copy(ROOT / "bundle" / "metadata_schema.json", out / "metadata_schema.json")
    (out / "models").mkdir()
    shutil.copy(default_model_path(), out / "models" / "model.pt")
    metadata_path = out / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    metadata["required_packages_version"]["medsr"] = __version__
    metadata_path.write_text(json.dumps(metadata, indent=4) + "\n", encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "medsr_through_plane_sr")
    args = parser.parse_args()
    print(f"built {build_bundle(args.out)}")


if __name__ == "__main__":
    main()
