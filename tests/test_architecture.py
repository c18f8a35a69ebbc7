"""The package layout (docs/architecture.md): imports point down only, and the rooms stay small.

The checker reads every module under ``medsr/`` with `ast` (imports at module level and inside
functions both count) and reports cycles, imports of a higher rank, and the explicit rules. It is
tested on a small fake package first, so that it cannot pass by finding nothing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medsr"

#: rank of each room: a module imports only lower ranks, or its own package's modules of the
#: same rank (without cycles). The longest matching prefix wins.
RANKS = {
    "errors": 0,
    "_version": 0,
    "io": 1,
    "geometry": 2,
    "intensity": 2,
    "config": 2,
    "runtime": 2,
    "interp": 3,
    "degrade": 3,
    "provenance": 3,
    "evaluate.metrics": 3,
    "labels": 4,
    "nets": 4,
    "evaluate.simulate": 4,
    "evaluate.tables": 4,
    "train": 5,
    "histology": 5,
    "upsample": 6,
    "evaluate": 7,
    "batch": 7,
    "cli": 8,
    "monai": 8,
    "": 9,  # the package's own __init__: the public facade, loaded lazily
}

MAX_LINES = 400
#: the modules of `upsample` that make up the per-scan fit, the only ones that import `train`
FIT_MODULES = ("adapt", "heldout", "profile")
MAX_TOP_LEVEL_MODULES = 12


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join((package, *parts))] = path
    return names


def imports_of(path: Path, name: str, modules: dict[str, Path], package: str) -> dict[str, int]:
    """{imported module of `package`: line} of one module (module- and function-level)."""
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".") if is_package else name.split(".")[:-1]
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:  # `from pkg import module` imports the module
                child = f"{base}.{alias.name}"
                targets.append(child if child in modules else base)
        for target in targets:
            if target == package or target.startswith(package + "."):
                while target not in modules and "." in target:  # `import pkg.mod.attr`
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    found.setdefault(target, node.lineno)
    return found


def rank(name: str, package: str, ranks: dict[str, int]) -> int:
    relative = name[len(package) + 1 :] if name != package else ""
    keys = [k for k in ranks if k and (relative == k or relative.startswith(k + "."))]
    return ranks[max(keys, key=len)] if keys else ranks[""]


def parent(name: str, modules: dict[str, Path]) -> str:
    """The package a module belongs to (a package's __init__ belongs to itself)."""
    return name if modules[name].name == "__init__.py" else name.rsplit(".", 1)[0]


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, {}):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def check_layout(root: Path, package: str, ranks: dict[str, int] = RANKS) -> list[str]:
    """Every violation of the import rules in the package at `root`, one line each."""
    modules = module_names(root, package)
    graph = {name: imports_of(path, name, modules, package) for name, path in modules.items()}
    problems = [f"import cycle: {' -> '.join(c)}" for c in find_cycles(graph)]

    def room(name: str) -> str:
        return name[len(package) + 1 :].split(".")[0] if name != package else ""

    for name, targets in sorted(graph.items()):
        for target, line in sorted(targets.items()):
            where = f"{modules[name].relative_to(root.parent)}:{line}: {name} imports {target}"
            mine, theirs = rank(name, package, ranks), rank(target, package, ranks)
            same_package = parent(name, modules) == parent(target, modules) or target.startswith(
                name + "."
            )
            if theirs > mine or (theirs == mine and not same_package):
                problems.append(f"{where}: upward (rank {mine} imports rank {theirs})")
            if room(name) == "nets" and room(target) == "io":
                problems.append(f"{where}: the networks import no file I/O")
            if room(name) == "upsample" and room(target) == "train":
                if name not in {f"{package}.upsample.{fit}" for fit in FIT_MODULES}:
                    problems.append(f"{where}: upsampling imports the trainer (only the fit may)")
            if room(target) == "monai" and room(name) != "monai":
                problems.append(f"{where}: only {package}.monai imports {package}.monai")
    init = modules[package]
    for node in ast.parse(init.read_text(encoding="utf-8")).body:  # eager imports of __init__
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package + "."):
            if node.module not in (f"{package}.errors", f"{package}._version"):
                problems.append(f"{package}/__init__.py:{node.lineno}: eager import {node.module}")
    return problems


def _fake_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / "fake" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "fake"


CLEAN = {
    "__init__.py": "from fake.errors import MedsrError\n",
    "errors.py": "class MedsrError(Exception): ...\n",
    "io/__init__.py": "from fake.io.volume import Volume\n",
    "io/volume.py": "from fake.errors import MedsrError\nVolume = object\n",
    "geometry.py": "from fake.errors import MedsrError\n",
    "nets/__init__.py": "",
    "nets/blocks.py": "from fake import geometry\n",
    "train/__init__.py": "",
    "train/trainer.py": "from fake.nets import blocks\n",
    "upsample/__init__.py": "",
    "upsample/api.py": "def f():\n    from fake.nets.blocks import x\n",
    "upsample/adapt.py": "from fake.train.trainer import Trainer\n",
    "monai/__init__.py": "from fake.upsample.api import f\n",
}


def test_the_checker_passes_a_clean_package_and_catches_each_kind_of_violation(tmp_path):
    assert check_layout(_fake_package(tmp_path / "clean", CLEAN), "fake") == []
    bad = dict(CLEAN)
    bad["nets/blocks.py"] = "def f():\n    from fake.io import Volume\n"  # networks -> I/O
    bad["upsample/api.py"] = "from fake.train import trainer\n"  # inference -> trainer
    bad["geometry.py"] = "import fake.upsample.api\n"  # upward
    bad["train/trainer.py"] = "from fake.monai import f\n"  # core -> integration layer
    bad["io/volume.py"] = "from fake.io import Volume\n"  # cycle io <-> io.volume
    bad["__init__.py"] = "from fake.upsample.api import f\n"  # heavy eager import
    problems = "\n".join(check_layout(_fake_package(tmp_path / "bad", bad), "fake"))
    assert "fake.nets.blocks imports fake.io" in problems and "no file I/O" in problems
    assert "fake.upsample.api imports fake.train" in problems and "only the fit may" in problems
    assert "fake.geometry imports fake.upsample.api: upward" in problems
    assert "fake.train.trainer imports fake.monai" in problems and "only fake.monai" in problems
    assert "import cycle: fake.io -> fake.io.volume" in problems
    assert "eager import fake.upsample.api" in problems


def test_medsr_imports_point_down_only():
    problems = check_layout(PACKAGE, "medsr")
    assert not problems, "\n".join(problems)


def test_every_module_of_medsr_is_ranked_on_purpose():
    # a new room must get a rank here (and a line in docs/architecture.md), not fall to the top
    for name in module_names(PACKAGE, "medsr"):
        if name != "medsr":
            assert rank(name, "medsr", RANKS) < RANKS[""], f"{name} has no rank"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_is_over_400_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines"


def test_the_top_level_holds_at_most_12_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_import_medsr_and_the_cli_parser_do_not_import_torch():
    code = (
        "import sys, medsr, medsr.cli; medsr.cli.build_parser(); "
        "assert medsr.__version__ and medsr.MedsrError; "
        "print(sorted(m for m in ('torch', 'monai', 'scipy', 'SimpleITK') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    )
    assert out.stdout.strip() == "[]"


def test_the_public_api_is_at_the_top_level():
    import medsr
    from medsr.io import Volume, read_volume, write_volume
    from medsr.upsample.api import upsample_volume
    from medsr.upsample.files import upsample_file

    assert medsr.upsample_volume is upsample_volume and medsr.upsample_file is upsample_file
    assert medsr.read_volume is read_volume and medsr.write_volume is write_volume
    assert medsr.Volume is Volume
    assert set(medsr.__all__) <= set(dir(medsr))
    with pytest.raises(AttributeError):
        medsr.not_a_name  # noqa: B018


def test_a_nifti_upsample_loads_no_reader_or_library_it_does_not_use(tmp_path):
    """MONAI (with matplotlib), SimpleITK and tifffile are imported where they are used: together
    they add about 200 MiB to a process that reads and writes one NIfTI (the peak-RSS target of
    docs/benchmarks.md counts them). Both the learned method (its fit's modules imported) and
    B-spline."""
    sample = PACKAGE.parent / "sample_data" / "dipy_aniso_vox.nii.gz"
    for method in (["bspline"], ["misr", "--fit-steps", "0"]):
        out = tmp_path / f"{method[0]}.nii.gz"
        code = (
            "import sys; from medsr.cli import main; "
            f"assert main(['upsample', {str(sample)!r}, '-o', {str(out)!r}, '--method', "
            f"*{method!r}, '--quiet']) == 0; "
            "print(sorted(m for m in ('monai', 'SimpleITK', 'tifffile', 'matplotlib') "
            "if m in sys.modules))"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "[]"
        assert out.exists()
