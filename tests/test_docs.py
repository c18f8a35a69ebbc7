"""The Python examples in docs/monai.md run as written (from a copy of the repository root)."""

import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(
    r"```python\n(.*?)```", (ROOT / "docs" / "monai.md").read_text(encoding="utf-8"), re.S
)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_monai_doc_example_runs(index, tmp_path, monkeypatch):
    (tmp_path / "sample_data").mkdir()
    shutil.copy(ROOT / "sample_data" / "dipy_aniso_vox.nii.gz", tmp_path / "sample_data")
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"docs/monai.md block {index}", "exec"), {})  # noqa: S102
    if index == 0:
        assert (tmp_path / "monai_demo" / "dipy_aniso_vox_misr.nii.gz").is_file()
    assert os.getcwd() == str(tmp_path)


def test_the_source_files_named_in_the_docs_exist():
    """A file the docs point to (``medsr/nets/generator.py``) is where they say it is."""
    missing = []
    for doc in sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]):
        for name in re.findall(r"\b(medsr/[\w/]+\.py)\b", doc.read_text("utf-8")):
            if not (ROOT / name).exists():
                missing.append(f"{doc.name}: {name}")
    assert not missing
