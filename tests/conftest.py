"""Shared fixtures: a small deterministic anisotropic phantom and affines of many orientations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsr.io import Volume, write_volume

_CODE_AXES = {
    "R": (0, 1.0),
    "L": (0, -1.0),
    "A": (1, 1.0),
    "P": (1, -1.0),
    "S": (2, 1.0),
    "I": (2, -1.0),
}


def rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix from three Euler angles (x, y, z) in degrees."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(orientation: str, spacing, origin=(-20.0, 13.5, 7.25)) -> np.ndarray:
    """Affine whose array axes point along `orientation` codes, or ``"oblique"``."""
    if orientation == "oblique":
        direction = rotation((17.0, -23.0, 31.0))
    else:
        direction = np.zeros((3, 3))
        for column, code in enumerate(orientation):
            row, sign = _CODE_AXES[code]
            direction[row, column] = sign
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = origin
    return affine


def phantom_array(shape=(20, 18, 16), seed: int = 0) -> np.ndarray:
    """A smooth blob plus a sharp cube and mild noise, float32, deterministic."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius2 = sum(g**2 for g in grids)
    array = 100 * np.exp(-3 * radius2) + 50 * (np.max(np.abs(grids), axis=0) < 0.4)
    return (array + rng.normal(0, 1, shape)).astype(np.float32)


def random_generator():
    """A small generator whose residual is far from zero and from any symmetry of the flips or
    the orientations (its last layers drawn, not zero)."""
    import torch

    from medsr.nets import MISRGenerator

    torch.manual_seed(0)
    generator = MISRGenerator(num_features=8, num_blocks=1, hidden=8, tail_knots=5)
    torch.nn.init.normal_(generator.decode[-1].weight, std=0.2)
    torch.nn.init.normal_(generator.tail.weight, std=0.2)
    return generator.eval()


@pytest.fixture
def phantom() -> Volume:
    """An LPS phantom, 20x18x8 voxels of 1 x 1 x 4 mm (thick axis 2), int16."""
    array = np.rint(phantom_array((20, 18, 8)) * 10).astype(np.int16)
    return Volume(
        array=array,
        affine=make_affine("LPS", (1.0, 1.0, 4.0)),
        meta={"unit": "mm", "description": "phantom"},
    )


@pytest.fixture
def phantom_path(tmp_path: Path, phantom: Volume) -> Path:
    """The phantom written as NIfTI under tmp_path."""
    return write_volume(phantom, tmp_path / "phantom.nii.gz")


VGG_WEIGHTS = (
    Path(__file__).resolve().parents[2] / "shared" / "weights" / "vgg16_imagenet_features.pth"
)


@pytest.fixture
def tiny_config():
    """A model and run small enough for a CPU test (seconds)."""
    from medsr.config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig

    return Config(
        model=ModelConfig(
            neighbours=3,
            num_features=8,
            num_blocks=1,
            hidden=8,
            discriminator_channels=8,
            discriminator_layers=2,
        ),
        loss=LossConfig(perceptual_weight=0.0, adversarial_weight=0.01),
        data=DataConfig(
            min_factor=2.0, max_factor=16.0, patch_width=16, patch_slices=8, batch_size=4
        ),
        train=TrainConfig(
            steps=2, warmup_steps=1, checkpoint_every=1, validate_every=2, device="cpu"
        ),
    )


@pytest.fixture
def hr_volume() -> Volume:
    """A 1 mm isotropic phantom (source-1 training data)."""
    return Volume(array=phantom_array((24, 22, 20)), affine=make_affine("RAS", (1, 1, 1)))


@pytest.fixture
def identity_checkpoint(tmp_path, tiny_config) -> Path:
    """A checkpoint of an untrained generator: zero heads, so it reproduces cubic B-spline."""
    import torch

    from medsr import __version__
    from medsr.config import config_to_dict
    from medsr.nets.checkpoint import build_generator

    torch.manual_seed(0)
    path = tmp_path / "identity.pt"
    generator = build_generator(tiny_config)
    torch.save(
        {
            "generator": generator.state_dict(),
            "config": config_to_dict(tiny_config),
            "version": __version__,
        },
        path,
    )
    return path


def write_dicom_series(
    folder: Path,
    *,
    positions: list[float] | None = None,
    thickness: float = 4.0,
    uid: str = "1.2.826.0.1.3680043.2.1125.1.42",
    number: int = 3,
    description: str = "T2 AX",
    extension: str = ".dcm",
    shape: tuple[int, int] = (12, 10),
) -> Path:
    """A DICOM series written with SimpleITK: one file per slice at `positions` (mm along z,
    default 5 slices 4 mm apart), 0.8 mm pixels, SliceThickness `thickness`; `extension` ""
    names the files without one, as exports often do."""
    import SimpleITK as sitk

    positions = [4.0 * i for i in range(5)] if positions is None else positions
    folder.mkdir(parents=True, exist_ok=True)
    for index, z in enumerate(positions):
        image = sitk.GetImageFromArray(np.full((1, *shape), 100 + 10 * index, np.int16))
        image.SetSpacing((0.8, 0.8, thickness))
        image.SetOrigin((0.0, 0.0, z))
        tags = {
            "0020|000e": uid,
            "0020|000d": uid + ".1",
            "0020|0011": str(number),
            "0008|103e": description,
            "0008|0060": "MR",
            "0020|0013": str(index + 1),
            "0020|0032": f"0\\0\\{z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(thickness),
            "0028|0030": "0.8\\0.8",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        name = folder / f"{number}_{index:04d}.dcm"
        writer.SetFileName(str(name))
        writer.Execute(image)
        if extension != ".dcm":
            name.rename(name.with_suffix(extension))
    return folder
