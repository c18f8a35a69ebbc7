"""What the slices held back from the fit measure: the guard's choice, and the residual gain.

The fit holds a slab of in-plane slices back (`guard_slab`) and thickens
their middle slice as it thickens its pairs (`guard_planes`); a plane here
is that (lr, hr, positions, factor), one per in-plane orientation. `guard_score` scores a model
on them, `apply_guard` (after a fit) and `guard_without_fit` choose between the adapted model,
the prior and B-spline, and `calibrated` scales a model's residual over B-spline by the one
gain that fits in-plane slices best: a prior trained on sharper content than the scan's
over-sharpens it (validation: docs/benchmarks.md, "Residual gain"). Where nothing is fitted,
nothing needs holding back, and the gain is fitted on several slabs spread over the middle of
the axis (`calibration_slabs`, `calibration_planes`; docs/benchmarks.md, "The prior alone
calibrated on five slabs"); after a fit, only with `medsr.upsample.adapt.CALIBRATE_AFTER_FIT`.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from medsr.degrade import thin_slices
from medsr.evaluate.metrics import psnr
from medsr.geometry import neighbour_indices, slab_positions
from medsr.nets import MISRGenerator
from medsr.nets.generator import exact_bspline
from medsr.train.noise import thicken_like_scan
from medsr.train.pairs import MIN_PATCH_SLICES, PlaneSource
from medsr.upsample.ensemble import ensemble_passes, flipped_pass

logger = logging.getLogger(__name__)

#: the range the residual gain is kept in (0: B-spline; above 1: a model that under-sharpens)
GAIN_RANGE = (0.0, 1.5)

#: each guard plane is split into this many parts along its in-plane axis for the gain's
#: cross-check (`gain_holds_out`): the gain must hold on content it was not fitted on
GAIN_CHECK_PARTS = 2

#: scores within this many dB of the best count as a tie; ties go to the adapted model, then the
#: prior (the fit is kept unless it measurably loses)
GUARD_TIE_DB = 0.05

#: the guard's rule, as the provenance records it
GUARD_RULE = f"best PSNR; within {GUARD_TIE_DB} dB of it: adapted, then prior, then bspline"


def guard_slab(count: int, neighbours: int) -> tuple[int, int] | None:
    """The planes [start, stop) along the upsampled axis held back from the fit: the `neighbours`
    slices around its middle; None when the axis is too short to spare them (fewer than four
    slabs' worth of patch centres would be left on either side)."""
    if count < 2 * neighbours + 2 * MIN_PATCH_SLICES:
        return None
    start = count // 2 - neighbours // 2
    return start, start + neighbours


#: the share of the upsampled axis the calibration slabs are spread over (its middle: the ends of
#: a scan are mostly background, where B-spline is all but exact)
CALIBRATION_SPAN = (0.25, 0.75)


def calibration_slabs(count: int, neighbours: int, number: int) -> list[tuple[int, int]]:
    """Where nothing is fitted to the scan, the slabs the residual gain is fitted on: instead of
    `guard_slab`'s one, `number` slabs of `neighbours` slices centred at evenly spaced points of
    `CALIBRATION_SPAN` of an axis of `count` slices (centres that round to the same slice, on an
    axis too short for `number`, count once). Each lies inside the axis.

    Raises:
        ValueError: `number` below 1, or an axis shorter than one slab.
    """
    if number < 1:
        raise ValueError(f"calibration slabs must be at least 1, got {number}")
    if count < neighbours:
        raise ValueError(f"an axis of {count} slices holds no slab of {neighbours}")
    low, span = CALIBRATION_SPAN[0] * count, (CALIBRATION_SPAN[1] - CALIBRATION_SPAN[0]) * count
    # halves round up (Python's round() sends them to the even number and merges neighbours)
    points = (int(np.floor(low + (i + 0.5) * span / number + 0.5)) for i in range(number))
    first = neighbours // 2
    starts = sorted({min(max(point - first, 0), count - neighbours) for point in points})
    return [(start, start + neighbours) for start in starts]


def guard_planes(
    sources: list[PlaneSource],
    slab: tuple[int, int],
    neighbours: int,
    ratio: float,
    profile: str | None = None,
    noise: float = 0.0,
    seed: int = 0,
) -> list[tuple]:
    """(lr, hr, positions, factor) of the slab's middle slice of every source, thickened along
    its `a` axis as the fit thickens: by `ratio` x the factor (the fit's thickness ratio), with
    the scan's slice profile if given, else boxcar, and the scan's `noise` put back, drawn from
    `seed`."""
    rng = np.random.default_rng(seed)
    planes = []
    for source in sources:
        count, length, factor = source.array.shape[0], source.array.shape[2], source.factor
        slices = int(np.floor(length / factor))
        if slices < MIN_PATCH_SLICES:
            continue
        index = neighbour_indices(np.array([(slab[0] + slab[1]) // 2]), neighbours, 1, count)[0]
        patch = np.ascontiguousarray(source.array[index, :, : thin_slices(slices, factor, length)])
        lr = thicken_like_scan(patch, factor, factor * ratio, profile or "boxcar", noise, rng)
        positions = slab_positions(slices, factor)
        hr = patch[neighbours // 2][..., : len(positions)]
        planes.append((torch.from_numpy(lr[None].copy()), hr, torch.from_numpy(positions), factor))
    return planes


def calibration_planes(
    sources: list[PlaneSource],
    slabs: list[tuple[int, int]],
    neighbours: int,
    ratio: float,
    profile: str | None = None,
    noise: float = 0.0,
) -> list[tuple]:
    """`guard_planes` of every slab (`calibration_slabs`), slab by slab, each slab's noise from
    its own seed. Where both sources give a plane the planes alternate between the two
    orientations, as `plane_parts` takes them; where one source's slices are too short to
    thicken (`guard_planes` skips it, for every slab alike) all are of the other orientation, and
    `plane_parts` still cuts each in halves of one slice, along alternate axes."""
    return [
        plane
        for seed, slab in enumerate(slabs)
        for plane in guard_planes(sources, slab, neighbours, ratio, profile, noise, seed)
    ]


#: the guard's record where no slices could be held back
SHORT_AXIS = "the upsampled axis is too short to hold slices back"
#: ... where the held-back slice is too short, across the factor, to be thickened
NARROW_SLICE = "the held-back slice is too small to thicken by the factor"


def _scores_text(record: dict) -> str:
    names = [key for key in record if key.startswith("psnr_")]
    return ", ".join(f"{name[5:]} {record[name]:.2f} dB" for name in names)


def apply_guard(adapted, prior, planes, device) -> tuple[MISRGenerator, dict]:
    """The best of the adapted model, the prior and B-spline on the guard planes (`GUARD_RULE`:
    a score within `GUARD_TIE_DB` of the best goes to the adapted model, then the prior).
    Returns (the model to use, the record)."""
    scores = {
        name: guard_score(model, planes, device)
        for name, model in (("adapted", adapted), ("prior", prior), ("bspline", None))
    }
    best = max(scores.values())
    choice = next(name for name, value in scores.items() if value >= best - GUARD_TIE_DB)
    record = {"psnr_" + name: round(value, 4) for name, value in scores.items()}
    record.update(choice=choice, planes=len(planes), rule=GUARD_RULE)
    if choice == "adapted":
        logger.info(
            "fit guard: using the adapted model (held-back slices: %s)", _scores_text(record)
        )
        return adapted.eval(), record
    logger.warning(
        "fit guard: the adapted model scored below %s on held-back slices (%s); using %s instead",
        "the prior" if choice == "prior" else "B-spline",
        _scores_text(record),
        "the prior" if choice == "prior" else "cubic B-spline",
    )
    return (prior if choice == "prior" else as_bspline(prior)).eval(), record


#: the rule of the guard without a fit, as the provenance records it
NO_FIT_RULE = f"no fit; best PSNR, within {GUARD_TIE_DB} dB of it: prior, then bspline"


def guard_without_fit(prior, planes, device, ensemble: int = 1) -> tuple[MISRGenerator, dict]:
    """With no fit (``fit_steps`` 0): the prior, calibrated (`calibrated`, for the
    reconstruction's `ensemble`), or B-spline where the prior scores below B-spline on the guard
    planes by more than `GUARD_TIE_DB` even so. The record holds the prior's own score,
    B-spline's, the gain and the choice."""
    predicted = model_and_bspline_predictions(prior, planes, device, ensemble)
    record = {
        name: round(mean_psnr(predictions, planes), 4)
        for name, predictions in zip(("psnr_prior", "psnr_bspline"), predicted, strict=True)
    }
    model = calibrated(prior.eval(), planes, device, record, ensemble, predicted=predicted)
    score = record.get("psnr_calibrated", record["psnr_prior"])
    # `calibrated` records a gain of 0 (the output is B-spline) as the choice ``bspline``
    below = record.get("choice") == "bspline" or score < record["psnr_bspline"] - GUARD_TIE_DB
    record.update(choice="bspline" if below else "prior", planes=len(planes), rule=NO_FIT_RULE)
    if below:
        logger.warning(
            "the prior did not beat B-spline on in-plane slices (%s); using cubic B-spline",
            _scores_text(record),
        )
        return as_bspline(prior), record
    return model, record


def guard_score(
    generator: MISRGenerator | None, planes: list[tuple], device, ensemble: int = 1
) -> float:
    """Mean PSNR (normalised units, range 1) on the guard planes of `generator`'s prediction
    (the mean of `ensemble` flipped passes, `plane_prediction`); None: cubic B-spline."""
    return mean_psnr(plane_predictions(generator, planes, device, ensemble), planes)


@torch.no_grad()
def plane_predictions(
    generator: MISRGenerator | None, planes: list[tuple], device, ensemble: int = 1
) -> list[np.ndarray]:
    """Each guard plane's centre slice as `generator` predicts it (float32 on the CPU; the mean
    of `ensemble` flipped passes, `plane_prediction`; None: cubic B-spline): computed once and
    shared by the scores, the gain's sums and the calibrated score."""
    predictions = []
    for lr, _, positions, factor in planes:
        lr, positions = lr.to(device), positions.to(device=device, dtype=torch.float32)
        if generator is None:
            pred = _bspline_of(lr, positions)[0, 0]
        else:
            pred = plane_prediction(generator, lr, positions, factor, ensemble)
        predictions.append(pred.float().cpu().numpy())
    return predictions


def model_and_bspline_predictions(generator, planes: list[tuple], device, ensemble: int = 1):
    """(`generator`'s `plane_predictions` for `ensemble` passes, cubic B-spline's)."""
    return (
        plane_predictions(generator, planes, device, ensemble),
        plane_predictions(None, planes, device),
    )


def mean_psnr(predictions: list[np.ndarray], planes: list[tuple]) -> float:
    """Mean PSNR (normalised units, range 1) of `predictions` against the planes' truths."""
    pairs = zip(predictions, planes, strict=True)
    return float(np.mean([psnr(pred, plane[1], data_range=1.0) for pred, plane in pairs]))


def as_bspline(generator: MISRGenerator) -> MISRGenerator:
    """A copy of `generator` whose residual paths end in zeros (the decoder's last layer and the
    offset tail): exactly cubic B-spline."""
    bspline = copy.deepcopy(generator)
    for layer in (bspline.decode[-1], bspline.tail):
        if layer is not None:
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    return bspline.eval()


def _bspline_of(lr: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline of the centre slice of `lr` at `positions`: the model's base."""
    k = lr.shape[1]
    return exact_bspline(lr[:, k // 2 : k // 2 + 1], positions)


def plane_parts(array: np.ndarray, number: int) -> list[np.ndarray]:
    """Guard plane `number`'s 2D `array` cut into `GAIN_CHECK_PARTS` along one axis of the
    slice: the rows of the first plane, the columns of the second (its axes are the first's
    swapped), so that part j of either covers the same content."""
    axis = number % 2
    cuts = np.array_split(np.arange(array.shape[axis]), GAIN_CHECK_PARTS)
    return [np.take(array, part, axis=axis) for part in cuts]


@torch.no_grad()
def plane_prediction(
    generator: MISRGenerator, lr: torch.Tensor, positions: torch.Tensor, factor, ensemble: int = 1
) -> torch.Tensor:
    """(W, M) prediction of a guard plane's centre slice: the mean of the self-ensemble's
    `ensemble` passes (`medsr.upsample.ensemble.ensemble_passes`), each on flipped inputs and
    flipped back, as the reconstruction averages them; one pass is the plain forward."""
    passes = ensemble_passes(ensemble, lr.shape[1])
    total = 0
    for flips in passes:
        flipped, at = flipped_pass(lr, positions, flips)
        pred = generator.eval()(flipped, at, factor)[0, 0]
        total = total + (pred.flip(-2) if flips[0] else pred)
    return total / len(passes)


def residual_sums(
    generator: MISRGenerator, planes: list[tuple], device, ensemble: int = 1, *, predicted=None
) -> np.ndarray:
    """Per part of each guard plane, plane by plane, (sum r * d, sum r * r, sum d * d) with r the
    generator's residual over B-spline and d the truth's: the squared error of
    ``bspline + g * r`` on the part is ``dd - 2 g rd + g^2 rr``, for any gain g. The prediction
    is the mean of `ensemble` flipped passes (`plane_prediction`), the residual the output will
    carry: averaging passes shrinks the parts where they disagree, so the gain that fits the
    ensemble is not the one that fits a single pass.

    The planes are `guard_planes`' two orientations of a slice (of one slice after a fit; of
    each calibration slab's without one, `calibration_planes`), the second with the first's axes
    swapped; each is cut into `GAIN_CHECK_PARTS` along the same axis of the slice (the
    first plane's rows, the second's columns), so part j of either plane covers the same
    content. `predicted`: (the generator's `plane_predictions`, B-spline's), if already made."""
    if predicted is None:
        predicted = model_and_bspline_predictions(generator, planes, device, ensemble)
    sums = []
    for number, (pred, base, plane) in enumerate(zip(*predicted, planes, strict=True)):
        base = base.astype(np.float64)
        residual, truth = pred.astype(np.float64) - base, plane[1] - base
        for r, d in zip(plane_parts(residual, number), plane_parts(truth, number), strict=True):
            sums.append((np.sum(r * d), np.sum(r * r), np.sum(d * d)))
    return np.asarray(sums, dtype=np.float64).reshape(-1, 3)


def least_squares_gain(sums: np.ndarray) -> float:
    """The gain that minimises the squared error over the planes of `sums`, within
    `GAIN_RANGE`; 1.0 where the residual is zero."""
    cross, energy = float(sums[:, 0].sum()), float(sums[:, 1].sum())
    return 1.0 if energy <= 0.0 else float(np.clip(cross / energy, *GAIN_RANGE))


def residual_gain(
    generator: MISRGenerator, planes: list[tuple], device, ensemble: int = 1
) -> float:
    """The gain g of the generator's residual over B-spline that makes ``bspline + g * residual``
    fit the guard `planes` best in least squares (closed form, over all their pixels), clipped to
    `GAIN_RANGE`; 1.0 where the residual is zero. g < 1: the model over-sharpens this scan
    (a smooth scan, or a prior trained on sharper content); g > 1: it under-sharpens."""
    return least_squares_gain(residual_sums(generator, planes, device, ensemble))


def gain_holds_out(sums: np.ndarray, parts: int = GAIN_CHECK_PARTS) -> bool:
    """Whether the gain holds on what it was not fitted on: for each part of `sums` (plane by
    plane, `parts` per plane), the gain fitted on the parts of the other plane (the other
    in-plane orientation) and the other part of the slice (other content) must lower that part's
    squared error, summed over the parts, against the gain 1. With one plane, the other parts of
    it; with one part in all, it cannot be cross-checked: False."""
    count = len(sums)
    if count < 2:
        return False
    plane, part = np.arange(count) // parts, np.arange(count) % parts
    held_out = unchanged = 0.0
    for index, (cross, energy, data) in enumerate(sums):
        others = (plane != plane[index]) & (part != part[index])
        if not others.any():
            others = part != part[index]
        if not others.any():
            others = np.arange(count) != index
        gain = least_squares_gain(sums[others])
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


def calibrated(
    generator: MISRGenerator,
    planes: list[tuple],
    device,
    record: dict,
    ensemble: int = 1,
    *,
    predicted: tuple | None = None,
):
    """`generator` with its residual scaled by the least-squares gain on the guard `planes` (its
    predictions the mean of the reconstruction's `ensemble` passes, `residual_sums`), if
    that gain holds on the parts it was not fitted on (`gain_holds_out`); else as it is (and as
    it is with no planes, or if B-spline was chosen). The gain used (``residual_gain``, 1.0 when
    none), the one rejected (``residual_gain_rejected``) and the calibrated model's score on the
    planes the gain was fitted on (``psnr_calibrated``: in-sample) go into `record`.
    `predicted`: (the generator's `plane_predictions` for `ensemble`, B-spline's), if made."""
    if not planes or record.get("choice") == "bspline":
        return generator
    if predicted is None:  # made once: the sums and the calibrated score share them
        predicted = model_and_bspline_predictions(generator, planes, device, ensemble)
    sums = residual_sums(generator, planes, device, ensemble, predicted=predicted)
    gain = least_squares_gain(sums)
    record["gain_passes"] = int(ensemble)  # fitted, checked and scored on as many passes
    if gain != 1.0 and not gain_holds_out(sums):
        record.update(residual_gain=1.0, residual_gain_rejected=round(gain, 4))
        logger.info("residual gain %.3f not kept: it did not hold where it was not fitted", gain)
        return generator
    record["residual_gain"] = round(gain, 4)
    if gain == 0.0:  # no residual at all: the output is B-spline, and the record says so
        record["choice"] = "bspline"
    if gain == 1.0:
        return generator
    scaled = scale_residual(generator, gain)
    # the scaled model's prediction is B-spline + gain x the residual (`scale_residual`)
    pairs = zip(*predicted, strict=True)
    scaled_planes = [base + np.float32(gain) * (pred - base) for pred, base in pairs]
    record["psnr_calibrated"] = round(mean_psnr(scaled_planes, planes), 4)
    logger.info("residual gain on in-plane slices: %.3f", gain)
    return scaled
