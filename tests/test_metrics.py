import numpy as np
import pytest
from conftest import phantom_array
from scipy import ndimage

from medsr.evaluate.metrics import foreground_mask, psnr, ssim


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    array = phantom_array()
    assert psnr(array, array, data_range=150) == float("inf")
    assert ssim(array, array, data_range=150) == pytest.approx(1.0)


def test_psnr_matches_its_definition_and_worse_images_score_lower():
    target = phantom_array()
    noisy = target + np.random.default_rng(0).normal(0, 2.0, target.shape).astype(np.float32)
    mse = np.mean((noisy.astype(float) - target) ** 2)
    assert psnr(noisy, target, data_range=150) == pytest.approx(10 * np.log10(150**2 / mse))
    blurred = ndimage.gaussian_filter(target, 1.5)
    more_blurred = ndimage.gaussian_filter(target, 3.0)
    assert ssim(blurred, target, data_range=150) > ssim(more_blurred, target, data_range=150)
    assert psnr(blurred, target, data_range=150) > psnr(more_blurred, target, data_range=150)


def test_mask_restricts_the_average_and_empty_mask_is_an_error():
    target = np.zeros((10, 10, 10), np.float32)
    pred = target.copy()
    pred[:5] = 1.0  # errors only outside the mask
    mask = np.zeros_like(target, dtype=bool)
    mask[6:] = True
    assert psnr(pred, target, data_range=1, mask=mask) == float("inf")
    with pytest.raises(ValueError, match="no voxels"):
        psnr(pred, target, data_range=1, mask=np.zeros_like(mask))


def test_foreground_mask_finds_the_object():
    array = np.zeros((30, 30, 30), np.float32)
    array[8:22, 8:22, 8:22] = 100
    array[14:16, 14:16, 14:16] = 0  # a dark hole inside is still foreground
    array += np.random.default_rng(0).normal(0, 3, array.shape).astype(np.float32)
    mask = foreground_mask(array)
    assert mask[15, 15, 15] and not mask[0, 0, 0]
    assert abs(int(mask.sum()) - 14**3) < 0.1 * 14**3


def test_hfen_and_sharpness_rank_blur():
    from medsr.evaluate.metrics import hfen, sharpness_ratio

    target = phantom_array((24, 24, 24))
    assert hfen(target, target) == 0.0
    assert sharpness_ratio(target, target, axis=2) == pytest.approx(1.0)
    soft = ndimage.gaussian_filter1d(target, 1.0, axis=2)
    softer = ndimage.gaussian_filter1d(target, 2.5, axis=2)
    assert 0 < hfen(soft, target) < hfen(softer, target)
    assert sharpness_ratio(softer, target, axis=2) < sharpness_ratio(soft, target, axis=2) < 1
