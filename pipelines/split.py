"""The train / validation / test split of ../shared/data (pipelines/configs/split.yaml).

One place that says which volume may do what: training lists (default_model_data.txt,
default_model_validation.txt) must list exactly the split's train and validation entries, and the
benchmarks take their volumes from its test entries. Histology images are split by region (the
`part` of an entry), the only exception to the rule that the split is disjoint by subject.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parent / "configs"
SPLIT_FILE = CONFIGS / "split.yaml"
ROLES = ("train", "validation", "test", "unused")
#: how a list in pipelines/configs names a file of ../shared/data, and a histology half
SHARED_PREFIX = "../../../shared/data/"
HALVES_PREFIX = "../../runs/default_model/histology_train/"


def read_split(path: Path = SPLIT_FILE) -> dict[str, list[dict]]:
    """The split as {role: [entry]}; each entry has path, subject, why (and maybe part).

    Raises:
        ValueError: an unknown role or key, an entry without subject or why, a file in two
            roles (other than two halves of one image), or a subject in test and elsewhere.
    """
    split = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if set(split) - set(ROLES):
        raise ValueError(f"{path}: unknown roles {sorted(set(split) - set(ROLES))}")
    seen: dict[tuple, str] = {}
    for role in ROLES:
        for entry in split.setdefault(role, []):
            if set(entry) - {"path", "part", "subject", "why"} or not entry.get("why"):
                raise ValueError(f"{path}: bad entry {entry} (path, part, subject, why)")
            key = (entry["path"], entry.get("part"))
            if key in seen:
                raise ValueError(f"{path}: {key} is in {seen[key]} and {role}")
            seen[key] = role
    check_subjects(split)
    return split


def check_subjects(split: dict[str, list[dict]]) -> None:
    """No subject of a whole volume is in two of train, validation and test."""
    roles_of: dict[str, set] = {}
    for role in ("train", "validation", "test"):
        for entry in split[role]:
            if "part" not in entry:
                roles_of.setdefault(entry["subject"], set()).add(role)
    shared = {subject: roles for subject, roles in roles_of.items() if len(roles) > 1}
    if shared:
        raise ValueError(f"subjects in more than one role: {shared}")


def list_line(entry: dict) -> str:
    """The line naming `entry` in a training list of pipelines/configs."""
    if entry.get("part") is None:
        return SHARED_PREFIX + entry["path"]
    if entry["part"] != "left half":
        raise ValueError(f"only left halves are written for training, not {entry}")
    name = Path(entry["path"])
    suffix = ".tif" if name.suffix == ".tif" else ".png"  # train_default_model.histology_halves
    return f"{HALVES_PREFIX}{name.stem}_left{suffix}"


def read_list(path: Path) -> list[str]:
    """The entries of a training list (``#`` comments and blank lines dropped)."""
    lines = [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


def check_lists(split: dict[str, list[dict]], data: Path, validation: Path) -> None:
    """Refuse a training list that is not exactly the split's train (validation) entries."""
    for role, path in (("train", data), ("validation", validation)):
        wanted = {list_line(entry) for entry in split[role]}
        listed = read_list(path)
        if set(listed) != wanted or len(listed) != len(wanted):
            extra = sorted(set(listed) - wanted)
            missing = sorted(wanted - set(listed))
            raise ValueError(
                f"{path} does not follow {SPLIT_FILE.name} ({role}): "
                f"not in the split {extra}, missing {missing}"
            )


def held_out_volumes(split: dict[str, list[dict]], folder: str = "mri") -> list[str]:
    """File names of the whole test volumes under `folder` of ../shared/data."""
    return [
        Path(e["path"]).name
        for e in split["test"]
        if "part" not in e and Path(e["path"]).parts[0] == folder
    ]
