"""Section series: order, padding, named failures, alignment and colour, on real H&E data."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image
from scipy import ndimage

from medsr.cli import main
from medsr.errors import MedsrError
from medsr.histology.alignment import align_sections
from medsr.io import Volume, read_volume

ROOT = Path(__file__).resolve().parents[1]
HE_TILE = ROOT.parent / "shared" / "data" / "histology" / "wsidicom_he_tile.png"


def _he_image() -> np.ndarray:
    """A real H&E image (Y, X, 3): the shared tile, or the bundled sample sections."""
    if HE_TILE.exists():
        return np.asarray(Image.open(HE_TILE).convert("RGB"))
    return np.asarray(Image.open(ROOT / "sample_data" / "he_sections" / "section_1.png"))


def _write_series(folder: Path, images: list[np.ndarray], names: list[str]) -> Path:
    folder.mkdir()
    for image, name in zip(images, names, strict=True):
        Image.fromarray(image).save(folder / name)
    (folder / "series.json").write_text(json.dumps({"spacing": [0.5, 0.5, 20], "unit": "um"}))
    return folder


def test_bundled_he_sections_read_with_their_spacing():
    volume = read_volume(ROOT / "sample_data" / "he_sections")
    assert volume.array.shape == (192, 128, 10, 3) and volume.array.dtype == np.uint8
    np.testing.assert_allclose(volume.spacing, [0.5, 0.5, 8.0])
    assert volume.unit == "um"


def test_order_file_sets_the_order_and_missing_sections_are_named(tmp_path):
    image = _he_image()[:40, :50]
    folder = _write_series(
        tmp_path / "s", [image, image // 2, image // 3], ["a.png", "b.png", "c.png"]
    )
    (folder / "order.txt").write_text("# cutting order\nc.png\na.png\nb.png\n")
    volume = read_volume(folder)
    np.testing.assert_array_equal(volume.array[:, :, 0], (image // 3).transpose(1, 0, 2))
    (folder / "order.txt").write_text("a.png\nlost.png\n")
    with pytest.raises(MedsrError, match="missing: lost.png"):
        read_volume(folder)


def test_unreadable_section_is_named(tmp_path):
    image = _he_image()[:30, :30]
    folder = _write_series(tmp_path / "s", [image, image], ["s1.png", "s2.png"])
    (folder / "s3.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(MedsrError, match="cannot read section .*s3.png"):
        read_volume(folder)


def test_unequal_sections_are_centred_and_padded_with_background(tmp_path, caplog):
    image = _he_image()
    small = image[:40, :60]
    folder = _write_series(tmp_path / "s", [image[:50, :70], small], ["1.png", "2.png"])
    with caplog.at_level(logging.WARNING):
        volume = read_volume(folder)
    assert volume.spatial_shape == (70, 50, 2)
    assert "padded 1 of 2 sections" in caplog.text and "2.png" in caplog.text
    padded = volume.array[:, :, 1]  # (X, Y, 3)
    np.testing.assert_array_equal(padded[5:65, 5:45], small.transpose(1, 0, 2))
    border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    np.testing.assert_array_equal(padded[0, 0], np.median(border, axis=0).astype(np.uint8))


def test_alignment_recovers_a_known_shift():
    image = _he_image().transpose(1, 0, 2).astype(np.float64)  # (X, Y, 3)
    base = image[20:-20, 20:-20]
    moved = ndimage.shift(image, (4.0, -3.0, 0), order=1)[20:-20, 20:-20]
    volume = Volume(
        array=np.stack([base, moved], axis=2).astype(np.uint8),
        affine=np.diag([0.5, 0.5, 20, 1.0]),
        meta={"unit": "um"},
    )
    aligned, records = align_sections(volume)
    np.testing.assert_allclose(records[1]["translation_px"], [4.0, -3.0], atol=0.2)
    assert abs(records[1]["angle_rad"]) < 0.01
    inner = (slice(10, -10), slice(10, -10))
    error_before = np.abs(moved[inner] - base[inner]).mean()
    error_after = np.abs(aligned.array[..., 1, :][inner].astype(float) - base[inner]).mean()
    assert error_after < 0.3 * error_before


def _resample_rgb(image: np.ndarray, transform: sitk.Transform) -> np.ndarray:
    """`image` (X, Y, 3) sampled at `transform` of each pixel, white outside (glass)."""
    channels = []
    for c in range(3):
        plane = sitk.GetImageFromArray(np.ascontiguousarray(image[..., c].T, dtype=np.float32))
        moved = sitk.Resample(plane, plane, transform, sitk.sitkLinear, 255.0)
        channels.append(sitk.GetArrayFromImage(moved).T)
    return np.clip(np.rint(np.stack(channels, axis=2)), 0, 255).astype(np.uint8)


def test_alignment_brings_a_rotating_chain_back_to_the_first_section():
    """Each section is turned by 0.08 rad about the centre and shifted relative to the one
    before (a different shift each time, so the order of composition matters)."""
    image = _he_image().transpose(1, 0, 2)  # (X, Y, 3)
    centre = ((image.shape[0] - 1) / 2, (image.shape[1] - 1) / 2)
    shifts = [(10.0, 6.0), (-6.0, 10.0), (-10.0, -6.0)]
    pairs = [sitk.Euler2DTransform(centre, 0.08, shift) for shift in shifts]
    sections = [image]
    for count in range(1, len(pairs) + 1):
        back = sitk.CompositeTransform(2)  # section k -> section 0: P_1^-1(...P_k^-1(y))
        for pair in pairs[:count]:
            back.AddTransform(pair.GetInverse())  # the last added is applied first
        sections.append(_resample_rgb(image, back))
    volume = Volume(np.stack(sections, axis=2), np.diag([0.5, 0.5, 20, 1.0]), {"unit": "um"})
    aligned, records = align_sections(volume)
    np.testing.assert_allclose([r["angle_rad"] for r in records[1:]], 0.08, atol=0.005)
    inner = (slice(25, -25), slice(25, -25))
    for index in range(1, len(sections)):
        error_before = np.abs(sections[index][inner].astype(float) - image[inner]).mean()
        after = aligned.array[:, :, index][inner].astype(float)
        error_after = np.abs(after - image[inner]).mean()
        assert error_after < 0.15 * error_before, (index, error_before, error_after)


def test_upsample_with_align_writes_transforms_and_ome_tiff(tmp_path):
    image = _he_image()[:48, :64]
    shifted = np.roll(image, 2, axis=1)
    folder = _write_series(
        tmp_path / "sections", [image, shifted, image, image], ["1.png", "2.png", "3.png", "4.png"]
    )
    out = tmp_path / "volume.ome.tif"
    assert (
        main(["upsample", str(folder), "-o", str(out), "--method", "bspline", "--align", "--quiet"])
        == 0
    )
    transforms = json.loads(
        (tmp_path / "volume.ome.tif.transforms.json").read_text(encoding="utf-8")
    )
    assert len(transforms["transforms"]) == 4
    # content rolled +2 px along x: the fixed -> moving map translates by +2
    assert transforms["transforms"][1]["translation_px"][0] == pytest.approx(2, abs=0.3)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
        assert 'PhysicalSizeZ="0.5"' in tif.ome_metadata and "µm" in tif.ome_metadata
    result = read_volume(out)
    assert result.array.dtype == np.uint8 and result.array.shape == (64, 48, 160, 3)


def test_section_folder_default_output_is_ome_tiff(tmp_path):
    image = _he_image()[:24, :32]
    folder = _write_series(tmp_path / "slide", [image] * 4, ["1.png", "2.png", "3.png", "4.png"])
    assert main(["upsample", str(folder), "--method", "linear", "--quiet"]) == 0
    result = read_volume(tmp_path / "slide_linear.ome.tif")
    assert result.unit == "um" and result.spatial_shape == (32, 24, 160)


def test_folder_output_goes_beside_the_folder_and_is_never_read_back(tmp_path, monkeypatch):
    from medsr.cli import main

    folder = tmp_path / "sections"
    folder.mkdir()
    for index in range(4):
        Image.fromarray(np.full((8, 10), 20 * index, np.uint8)).save(folder / f"s{index}.png")
    (folder / "series.json").write_text('{"spacing": [0.5, 0.5, 2.0], "unit": "um"}')
    monkeypatch.chdir(folder)
    assert main(["upsample", ".", "--method", "bspline", "--quiet"]) == 0
    assert (tmp_path / "sections_bspline.ome.tif").is_file()
    assert sorted(p.name for p in folder.iterdir())[-1] == "series.json"  # nothing written inside
    (folder / "old_misr.ome.tif").write_bytes((tmp_path / "sections_bspline.ome.tif").read_bytes())
    assert main(["info", "."]) == 0  # a medsr output inside is not taken for a section


def test_series_json_section_thickness_sets_the_fit_profile(tmp_path):
    from medsr.io import read_volume

    folder = tmp_path / "thin"
    folder.mkdir()
    for index in range(4):
        Image.fromarray(np.full((8, 10), 20 * index, np.uint8)).save(folder / f"s{index}.png")
    (folder / "series.json").write_text(
        '{"spacing": [0.5, 0.5, 8.0], "unit": "um", "thickness": 0.5}', encoding="utf-8"
    )
    volume = read_volume(folder)
    assert volume.meta["slice_thickness"] == 0.5 and volume.spacing[2] == 8.0
