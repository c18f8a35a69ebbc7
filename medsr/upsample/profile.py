"""The slice profile of a scan that does not state it, estimated from its own data.

A thick-slice scan's through-plane lines are the anatomy blurred by the slice profile and sampled
at the thick spacing; its in-plane lines are the same kind of anatomy, sharp. Thickened by the
right profile (and with the scan's noise put back, `medsr.train.noise.thicken_like_scan`), the
in-plane lines have the through-plane lines' power spectrum (ECLARE's premise, Remedios et al.
2023, here with a fixed set of candidate profiles instead of a learned one). The spectra are
averaged over Hann-windowed segments of the foreground; each candidate is scored by the mean
squared difference of the log spectra, on the bins above zero frequency, after removing a free
level (``level``) or a free level and power law (``power``: anatomy need not be isotropic).

The decision is deliberately one-sided, because a wrong profile costs far more than the right one
gains. On the validation volumes a boxcar acquisition fitted as Gaussian lost 4.2 to 6.6 dB
against an even boxcar/Gaussian mixture, while the right profile gained +0.17 to +5.0 dB
(docs/benchmarks.md, "The slice profile from the data"). So the estimate names a profile only
past thresholds that named no acquisition wrongly in tuning, and otherwise leaves it undecided
(`None`):

- Gaussian, where its ``level`` score is below `GAUSSIAN_RATIO` x the best boxcar-like one's.
  The ratio is above 1 because the level score leans towards the boxcar on real anatomy: in
  tuning no boxcar-like acquisition came below 1.75, while half the Gaussian ones were above 1.5.
- Boxcar, where the Gaussian's ``power`` score is above `BOXCAR_RATIO` x the best boxcar-like
  one's; `BOXCAR_RATIO_MATCHED` x where the output spacing is the in-plane spacing (as it is by
  default: the finest in-plane spacing) and the factor is at least `MATCHED_MIN_FACTOR` (the
  tuned range starts at x2; nearer 1 the candidates barely differ). There the in-plane lines
  thickened by the factor are like for like with the through-plane ones, and in tuning (the
  isotropic Haase T1 along every axis, x2-x8) the highest Gaussian acquisition scored 1.76 while
  41 of the 54 boxcar-like ones scored above 2.5. Elsewhere three Gaussian acquisitions scored
  above 2.5, all at x2 on the ITK T1's own 3 mm axis, upsampled to 3 mm from in-plane lines of
  2 mm (a target coarser than the in-plane lines, where the stricter ratio stays): two (3.03,
  3.15) are named Gaussian by the level score first; the third (3.51) the 2.5 x would have named
  boxcar. The 2D multi-slice ``sinc`` profile counts as boxcar-like: its spectrum is within noise
  of the boxcar's, and the fit takes it as a boxcar.

The thresholds were set on 140 simulated acquisitions of the training and validation volumes
(`pipelines/profile_estimate_cases.py`: the Haase T1 along every axis, the ITK T1 and its
smoothed copy and the EPI along their thick axis; x2 to x8; boxcar, Gaussian and sinc profiles,
with and without Rician noise; never a test volume): the rule named 29 of the 56 Gaussian
acquisitions and 57 of the 84 boxcar-like ones, and no acquisition as the wrong one (34 of 84
before `BOXCAR_RATIO_MATCHED`, 2026-12-07). It refuses to guess (`None`, with the reason)
where the two in-plane spacings differ (the two orientations' lines would not be of one kind;
across the ITK T1's 2 mm axes the rule did mistake profiles), where the through-plane lines are
too short for `MIN_BINS` frequency bins, where either side has no foreground segment or no
variation, and where even the best candidate fits badly
(`MAX_MISFIT`: the in-plane lines thickened by the factor do not look like the through-plane
ones at all, e.g. an isotropic volume upsampled by an explicit factor). Like the fit, it takes
the in-plane lines thickened by the factor to stand for the through-plane ones.

An undecided fit draws the profiles the model was trained on, the boxcar-like ones more often
(`undecided_profiles`; `medsr.upsample.adapt.UNDECIDED_BOXCAR_WEIGHT`). On the 20 validation
cases where the estimate was undecided, three boxcar draws to one Gaussian gained +0.20 dB on
average over an even mixture (+0.10 without its one unstable x2 case): +0.28 on the 14
boxcar-like acquisitions (-0.02 to +2.05), +0.01 on the six Gaussian ones (-0.33 to +0.23). On
the test volumes it was neutral: +0.12 to +0.16 on three undecided boxcar acquisitions, -0.04 to
-0.34 on three Gaussian ones (docs/benchmarks.md, "A fit that leans to the boxcar where the
profile is undecided"). The slice profile of 2D multi-slice MR is boxcar-like.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from medsr.train.noise import thicken_like_scan
from medsr.train.pairs import PlaneSource

#: Gaussian where its level-only score is below this times the best boxcar-like score
GAUSSIAN_RATIO = 1.5
#: boxcar where the Gaussian's power-law score is above this times the best boxcar-like score
BOXCAR_RATIO = 5.0
#: the same where the output spacing is the in-plane spacing (within `SPACING_TOLERANCE`) and
#: the factor at least `MATCHED_MIN_FACTOR`
BOXCAR_RATIO_MATCHED = 2.5
#: the least factor `BOXCAR_RATIO_MATCHED` applies at (the tuning cases' least)
MATCHED_MIN_FACTOR = 2.0
#: undecided where the best candidate's level score is above this (mean squared log-power
#: difference; in tuning a decided case's best was at most 0.18, docs/profile_estimate_cases.csv)
MAX_MISFIT = 1.0
#: the fewest frequency bins (above zero) a decision is made on
MIN_BINS = 5
#: the longest segment of a line whose spectrum is taken (samples)
MAX_SEGMENT = 64
#: segments whose mean is below this share of the 99th percentile are background, left out
FOREGROUND_SHARE = 0.2
#: the most lines of each kind that are read (strided along the first axis), to bound time
MAX_LINES = 200_000
#: lines copied at a time, to bound memory
BLOCK_LINES = 16_384
#: the most voxels the foreground's percentile is taken over (strided along the first axis)
MAX_PERCENTILE_VOXELS = 16_000_000
#: the relative difference between the two in-plane spacings the estimate accepts
SPACING_TOLERANCE = 0.05
#: the candidate shapes, each with the fit's thickness ratio
CANDIDATES = ("boxcar", "gaussian", "sinc")
#: the candidates whose spectra are alike (the 2D multi-slice ``sinc`` is within noise of the
#: boxcar's), drawn more often by an undecided fit
BOXCAR_LIKE = ("boxcar", "sinc")


@dataclass
class ProfileEstimate:
    """The estimate: `profile` (None: undecided, the fit draws `undecided_profiles`), the scores
    of each candidate (``level`` and ``power``) and why it decided as it did."""

    profile: str | None
    reason: str
    scores: dict = field(default_factory=dict)

    def record(self) -> dict:
        """For the provenance (``fit_guard.slice_profile_estimate``; scores to 4 significant
        digits)."""
        scores = {
            name: {kind: float(f"{value:.4g}") for kind, value in score.items()}
            for name, score in self.scores.items()
        }
        return {"profile": self.profile, "reason": self.reason, "scores": scores}


def estimate_slice_profile(
    sources: list[PlaneSource], factor: float, ratio: float, noise: float
) -> ProfileEstimate:
    """The slice profile of a scan from its in-plane slices.

    Args:
        sources: the scan's in-plane slices in the fit's orientations
            (`medsr.train.pairs.sources_self_supervised` with the upsampled axis and `factor`),
            normalised.
        factor: the upsampling's factor (thick spacing / output spacing).
        ratio: the slice thickness / spacing the fit assumes (`adapt.fit_thickness_ratio`).
        noise: the voxel noise of `sources` (normalised units; `scan_noise`), put back on the
            thickened lines as the thick slices carry it.

    Returns:
        The `ProfileEstimate` (``profile`` None where undecided, and why).
    """
    inplane = [source.spacing[2] for source in sources]
    if max(inplane) - min(inplane) > SPACING_TOLERANCE * min(inplane):
        return ProfileEstimate(None, "the in-plane spacings differ")
    count = sources[0].array.shape[0]
    lengths = [int(np.floor(source.array.shape[2] / factor)) for source in sources]
    segment = min(MAX_SEGMENT, count, *lengths)
    segment -= segment % 2
    if segment // 2 < MIN_BINS:
        return ProfileEstimate(None, f"too few slices for {MIN_BINS} frequency bins")
    threshold = FOREGROUND_SHARE * foreground_percentile(sources[0].array)
    observed = log_spectrum([np.moveaxis(sources[0].array, 0, -1)], segment, threshold)
    if observed is None:
        return ProfileEstimate(None, "no foreground segment varies across the slices")
    rng = np.random.default_rng(0)
    scores = {}
    for shape in CANDIDATES:
        thickened = [
            thickened_lines(source.array, factor, ratio * factor, shape, noise, rng)
            for source in sources
        ]
        candidate = log_spectrum(thickened, segment, threshold)
        if candidate is None:
            return ProfileEstimate(None, "no foreground segment varies in-plane")
        scores[shape] = {kind: _misfit(observed - candidate, kind) for kind in ("level", "power")}
    output = sources[0].spacing[0] / factor  # the thick spacing over the factor
    at_inplane = abs(output - inplane[0]) <= SPACING_TOLERANCE * inplane[0]
    return decide(scores, matched=at_inplane and factor >= MATCHED_MIN_FACTOR)


def decide(scores: dict, matched: bool = False) -> ProfileEstimate:
    """The one-sided decision of the module's rule, from each candidate's scores; `matched`: the
    output spacing is the in-plane spacing, at a factor of at least `MATCHED_MIN_FACTOR`
    (`BOXCAR_RATIO_MATCHED`)."""
    boxlike = {kind: min(scores["boxcar"][kind], scores["sinc"][kind]) for kind in scores["sinc"]}
    gaussian = scores["gaussian"]
    if min(gaussian["level"], boxlike["level"]) > MAX_MISFIT:
        return ProfileEstimate(None, "no candidate fits the through-plane spectrum", scores)
    if gaussian["level"] < GAUSSIAN_RATIO * boxlike["level"]:
        return ProfileEstimate("gaussian", "the Gaussian fits clearly best", scores)
    if gaussian["power"] > (BOXCAR_RATIO_MATCHED if matched else BOXCAR_RATIO) * boxlike["power"]:
        return ProfileEstimate("boxcar", "a boxcar-like profile fits clearly best", scores)
    return ProfileEstimate(None, "no candidate fits clearly best", scores)


def undecided_profiles(trained: tuple[str, ...], weight: int) -> tuple[str, ...]:
    """The profiles an undecided fit draws from, uniformly: each of the model's `trained` ones,
    the `BOXCAR_LIKE` ones `weight` times (the shipped prior's boxcar and Gaussian with weight 3:
    three boxcar draws to one Gaussian)."""
    if weight < 1:
        raise ValueError(f"the boxcar-like weight must be at least 1, not {weight}")
    return tuple(name for name in trained for _ in range(weight if name in BOXCAR_LIKE else 1))


def foreground_percentile(array: np.ndarray) -> float:
    """The 99th percentile of `array` (over at most `MAX_PERCENTILE_VOXELS`, strided along its
    first axis)."""
    step = max(1, int(np.ceil(array.size / MAX_PERCENTILE_VOXELS)))
    return float(np.percentile(array[::step], 99))


def line_blocks(view: np.ndarray) -> Iterator[np.ndarray]:
    """The lines of `view` (..., L) as float32 blocks (lines, L), at most `MAX_LINES` of them
    (strided along the first axis), copied `BLOCK_LINES` at a time."""
    lines = int(np.prod(view.shape[:-1]))
    view = view[:: max(1, int(np.ceil(lines / MAX_LINES)))]
    per_row = max(1, int(np.prod(view.shape[1:-1])))
    rows = max(1, BLOCK_LINES // per_row)
    for start in range(0, view.shape[0], rows):
        block = view[start : start + rows]
        yield np.asarray(block, np.float32).reshape(-1, view.shape[-1])


def thickened_lines(
    array: np.ndarray, factor: float, thickness: float, shape: str, noise: float, rng
) -> Iterator[np.ndarray]:
    """The lines of `array` (p, w, a) along `a`, thickened by `factor` with the profile `shape`
    and the scan's `noise` put back (`thicken_like_scan`), block by block."""
    length = array.shape[2]
    thin = min(int(np.ceil(int(length / factor) * factor - 1e-6)), length)
    for block in line_blocks(array[..., :thin]):
        yield thicken_like_scan(block, factor, thickness, shape, noise, rng)


def log_spectrum(parts, segment: int, threshold: float) -> np.ndarray | None:
    """The log of the mean power spectrum (bins 1 .. segment / 2) of the Hann-windowed,
    mean-removed, half-overlapping segments of lines whose mean is at least `threshold`.

    Args:
        parts: arrays (..., L) of lines, or iterators of (lines, L) blocks.
        segment: segment length (even).
        threshold: the foreground's least segment mean.

    Returns:
        (segment / 2,) log mean power; None where no segment qualifies or none varies.
    """
    window = np.hanning(segment + 2)[1:-1].astype(np.float32)
    total, kept = np.zeros(segment // 2), 0
    for part in parts:
        blocks = line_blocks(part) if isinstance(part, np.ndarray) else part
        for flat in blocks:
            for start in range(0, flat.shape[1] - segment + 1, max(1, segment // 2)):
                piece = flat[:, start : start + segment]
                means = piece.mean(axis=1)
                inside = means >= threshold
                piece = piece[inside] - means[inside, None]
                power = np.abs(np.fft.rfft(piece * window, axis=1))[:, 1:] ** 2
                total += power.sum(axis=0, dtype=np.float64)
                kept += len(piece)
    if kept == 0 or not np.all(total > 0):
        return None
    return np.log(total / kept)


def _misfit(difference: np.ndarray, kind: str) -> float:
    """Mean squared residual of `difference` (log spectra, bins 1..) after a least-squares
    level (``level``) or level and power law in the frequency (``power``)."""
    columns = [np.ones_like(difference)]
    if kind == "power":
        columns.append(np.log(np.arange(1, len(difference) + 1)))
    design = np.stack(columns, axis=1)
    coefficients, *_ = np.linalg.lstsq(design, difference, rcond=None)
    return float(np.mean((difference - design @ coefficients) ** 2))
