"""What the slices held back from the fit measure: the guard's score, and the residual gain.

The fit holds a slab of in-plane slices back (`medsr.upsample.adapt.guard_slab`) and thickens
their middle slice as it thickens its pairs (`guard_planes`); a plane here is that
(lr, hr, positions, factor). `guard_score` scores a model on them (the guard's choice between
the adapted model, the prior and B-spline), and `calibrated` scales the kept model's residual
over B-spline by the one gain that fits them best: a prior trained on sharper content than the
scan's over-sharpens it (validation: docs/benchmarks.md, "Residual gain").
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from medsr.evaluate.metrics import psnr
from medsr.nets import MISRGenerator
from medsr.nets.generator import exact_bspline

logger = logging.getLogger(__name__)

#: the range the residual gain is kept in (0: B-spline; above 1: a model that under-sharpens)
GAIN_RANGE = (0.0, 1.5)


@torch.no_grad()
def guard_score(generator: MISRGenerator | None, planes: list[tuple], device) -> float:
    """Mean PSNR (normalised units, range 1) on the guard planes; None: cubic B-spline."""
    scores = []
    for lr, hr, positions, factor in planes:
        lr, positions = lr.to(device), positions.to(device=device, dtype=torch.float32)
        if generator is None:
            k = lr.shape[1]
            pred = exact_bspline(lr[:, k // 2 : k // 2 + 1], positions)
        else:
            pred = generator.eval()(lr, positions, factor)
        scores.append(psnr(pred[0, 0].float().cpu().numpy(), hr, data_range=1.0))
    return float(np.mean(scores))


def as_bspline(generator: MISRGenerator) -> MISRGenerator:
    """A copy of `generator` whose residual paths end in zeros (the decoder's last layer and the
    offset tail): exactly cubic B-spline."""
    bspline = copy.deepcopy(generator)
    for layer in (bspline.decode[-1], bspline.tail):
        if layer is not None:
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    return bspline.eval()


@torch.no_grad()
def residual_sums(generator: MISRGenerator, planes: list[tuple], device) -> np.ndarray:
    """Per guard plane, (sum r * d, sum r * r, sum d * d) with r the generator's residual over
    B-spline and d the truth's: the squared error of ``bspline + g * r`` on the plane is
    ``dd - 2 g rd + g^2 rr``, for any gain g."""
    sums = []
    for lr, hr, positions, factor in planes:
        lr, positions = lr.to(device), positions.to(device=device, dtype=torch.float32)
        k = lr.shape[1]
        base = exact_bspline(lr[:, k // 2 : k // 2 + 1], positions)[0, 0].double().cpu()
        pred = generator.eval()(lr, positions, factor)[0, 0].double().cpu()
        residual, truth = (pred - base).numpy(), hr - base.numpy()
        sums.append((np.sum(residual * truth), np.sum(residual**2), np.sum(truth**2)))
    return np.asarray(sums, dtype=np.float64).reshape(-1, 3)


def least_squares_gain(sums: np.ndarray) -> float:
    """The gain that minimises the squared error over the planes of `sums`, within
    `GAIN_RANGE`; 1.0 where the residual is zero."""
    cross, energy = float(sums[:, 0].sum()), float(sums[:, 1].sum())
    return 1.0 if energy <= 0.0 else float(np.clip(cross / energy, *GAIN_RANGE))


def residual_gain(generator: MISRGenerator, planes: list[tuple], device) -> float:
    """The gain g of the generator's residual over B-spline that makes ``bspline + g * residual``
    fit the guard `planes` best in least squares (closed form, over all their pixels), clipped to
    `GAIN_RANGE`; 1.0 where the residual is zero. g < 1: the model over-sharpens this scan
    (a smooth scan, or a prior trained on sharper content); g > 1: it under-sharpens."""
    return least_squares_gain(residual_sums(generator, planes, device))


def gain_holds_out(sums: np.ndarray) -> bool:
    """Whether a gain fitted without each plane lowers that plane's squared error, summed over
    the planes (leave-one-out over the guard planes, one per in-plane orientation), against the
    gain 1. Fewer than two planes cannot be cross-checked: False."""
    if len(sums) < 2:
        return False
    held_out = unchanged = 0.0
    for index, (cross, energy, data) in enumerate(sums):
        gain = least_squares_gain(np.delete(sums, index, axis=0))
        held_out += data - 2 * gain * cross + gain**2 * energy
        unchanged += data - 2 * cross + energy
    return held_out < unchanged


def scale_residual(generator: MISRGenerator, gain: float) -> MISRGenerator:
    """A copy of `generator` whose residual over B-spline is `gain` times its own: the residual
    is linear in the weights and biases of its two last layers (the decoder's and the offset
    tail's), which are scaled. `gain` 0 is `as_bspline`."""
    scaled = copy.deepcopy(generator)
    with torch.no_grad():
        for layer in (scaled.decode[-1], scaled.tail):
            if layer is not None:
                layer.weight.mul_(gain)
                layer.bias.mul_(gain)
    return scaled.eval()


def calibrated(generator: MISRGenerator, planes: list[tuple], device, record: dict):
    """`generator` with its residual scaled by the least-squares gain on the guard `planes`, if
    that gain, fitted without each plane in turn, also lowers the error of the plane left out
    (`gain_holds_out`); else as it is (and as it is with no planes, or if B-spline was chosen).
    The gain used (``residual_gain``, 1.0 when none), the one rejected
    (``residual_gain_rejected``) and the score go into the guard's `record`."""
    if not planes or record.get("choice") == "bspline":
        return generator
    sums = residual_sums(generator, planes, device)
    gain = least_squares_gain(sums)
    if gain != 1.0 and not gain_holds_out(sums):
        record.update(residual_gain=1.0, residual_gain_rejected=round(gain, 4))
        logger.info("residual gain %.3f not kept: it did not hold on a held-out slice", gain)
        return generator
    record["residual_gain"] = round(gain, 4)
    if gain == 1.0:
        return generator
    scaled = scale_residual(generator, gain)
    record["psnr_calibrated"] = round(guard_score(scaled, planes, device), 4)
    logger.info("residual gain on held-back slices: %.3f", gain)
    return scaled
