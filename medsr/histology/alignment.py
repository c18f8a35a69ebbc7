"""Rigid alignment of consecutive sections (SimpleITK registration), because cut, mounted and
scanned sections are never perfectly aligned.

Each section is registered to the previous one on a downsampled grey copy (2D Euler transform:
rotation about the image centre plus translation, mean-squares metric, regular-step gradient
descent), the transforms are composed so every section maps to the first, and all channels are
resampled once with linear interpolation, background filled with the section's border value.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsr.intensity import grey_mean
from medsr.io import Volume
from medsr.io.atomic import write_text_atomically
from medsr.io.sections import border_value

logger = logging.getLogger(__name__)


def _grey_image(section: np.ndarray, shrink: int) -> sitk.Image:
    grey = grey_mean(section, section.ndim == 3)
    image = sitk.GetImageFromArray(np.ascontiguousarray(grey.T, dtype=np.float32))  # (y, x)
    return sitk.Shrink(image, [shrink, shrink]) if shrink > 1 else image


def register_pair(fixed: np.ndarray, moving: np.ndarray, shrink: int = 2) -> sitk.Euler2DTransform:
    """Rigid transform mapping `fixed` pixel coordinates (x, y) into `moving`.

    Args:
        fixed, moving: sections (X, Y) or (X, Y, C), array order of `Volume`.
        shrink: downsampling factor of the registration copies.
    """
    fixed_image, moving_image = _grey_image(fixed, shrink), _grey_image(moving, shrink)
    initial = sitk.CenteredTransformInitializer(
        fixed_image,
        moving_image,
        sitk.Euler2DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY,
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMeanSquares()
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=200
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SetInitialTransform(initial, inPlace=False)
    result = method.Execute(fixed_image, moving_image)
    return sitk.Euler2DTransform(
        result.GetNthTransform(0) if hasattr(result, "GetNthTransform") else result
    )


def _resample(section: np.ndarray, transform: sitk.Transform) -> np.ndarray:
    channels = (
        [section] if section.ndim == 2 else [section[..., c] for c in range(section.shape[2])]
    )
    out = []
    for channel in channels:
        image = sitk.GetImageFromArray(np.ascontiguousarray(channel.T, dtype=np.float32))
        moved = sitk.Resample(
            image, image, transform, sitk.sitkLinear, float(border_value(channel))
        )
        out.append(sitk.GetArrayFromImage(moved).T)
    result = out[0] if section.ndim == 2 else np.stack(out, axis=2)
    if np.issubdtype(section.dtype, np.integer):
        info = np.iinfo(section.dtype)
        result = np.clip(np.rint(result), info.min, info.max)
    return result.astype(section.dtype)


def chain_to_first(pairs: list[sitk.Transform]) -> sitk.CompositeTransform:
    """The transform from section 0's pixels into section i's: ``P_i(...P_2(P_1(x)))``, where
    ``pairs[k - 1]`` = P_k maps section k-1 into section k.

    An ITK composite applies the transform added *last* first, so P_1 goes in last. Added in
    cutting order it would give ``P_1(P_2(...P_i(x)))``: the same for pure shifts, wrong as soon
    as the sections also rotate.
    """
    composed = sitk.CompositeTransform(2)
    for pair in reversed(pairs):
        composed.AddTransform(pair)
    return composed


def align_sections(volume: Volume, *, axis: int = 2, shrink: int = 2) -> tuple[Volume, list[dict]]:
    """Align every section (slice along `axis`) to the first.

    Returns:
        The aligned volume and, per section, its transform to the first section: rotation
        (radians), translation (pixels, x and y) and centre (pixels).
    """
    sections = np.moveaxis(volume.array, axis, 0)
    aligned = np.empty_like(sections)
    aligned[0] = sections[0]
    pairs: list[sitk.Euler2DTransform] = []
    records = [
        {"section": 0, "angle_rad": 0.0, "translation_px": [0.0, 0.0], "centre_px": [0.0, 0.0]}
    ]
    for index in range(1, sections.shape[0]):
        pair = register_pair(sections[index - 1], sections[index], shrink)
        pairs.append(pair)  # fixed(i-1) -> moving(i)
        aligned[index] = _resample(sections[index], chain_to_first(pairs))
        records.append(
            {
                "section": index,
                "angle_rad": pair.GetAngle(),
                "translation_px": list(pair.GetTranslation()),
                "centre_px": list(pair.GetCenter()),
                "relative_to": index - 1,
            }
        )
        logger.debug(
            "section %d: angle %.4f rad, shift %s px", index, pair.GetAngle(), pair.GetTranslation()
        )
    return volume.with_array(np.moveaxis(aligned, 0, axis)), records


def save_transforms(records: list[dict], path: str | os.PathLike[str]) -> Path:
    """Write the per-section transforms as JSON beside the output, atomically."""
    return write_text_atomically(
        path,
        json.dumps(
            {
                "transforms": records,
                "convention": (
                    "section i is registered to section i-1 (rigid 2D, pixel units, x along "
                    "array axis 0, y along axis 1, rotation about centre_px): P_i maps pixels "
                    "of section i-1 into section i, and pixels of section 0 map into section i "
                    "by P_i(...P_2(P_1(x))), P_1 applied first"
                ),
            },
            indent=2,
        )
        + "\n",
    )
