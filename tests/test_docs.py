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
