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
gains. On the validation ITK T1 at x2 a boxcar acquisition fitted as Gaussian lost 4.4 dB against
the trained mixture, while the right profile gained 0.2 to 5 dB (docs/benchmarks.md, "The slice
profile from the data"). So the estimate names a profile only where one candidate is clearly
better, by the thresholds below, and otherwise leaves the fit to the mixture of profiles the
model was trained on (`None`):

- Gaussian, where its ``level`` score is below `GAUSSIAN_RATIO` x the best boxcar-like one's;
- boxcar, where the Gaussian's ``power`` score is above `BOXCAR_RATIO` x the best boxcar-like
  one's (the 2D multi-slice ``sinc`` profile is boxcar-like: its spectrum is within noise of the
  boxcar's, and the fit treats it as a boxcar).

The thresholds were set on 140 simulated acquisitions of the training and validation volumes
(the Haase T1 along every axis, the ITK T1 and its smoothed copy and the EPI along their thick
axis; x2 to x8; boxcar, Gaussian and sinc profiles, with and without Rician noise; never a test
volume): the rule named 29 of the 56 Gaussian acquisitions and 34 of the 84 boxcar-like ones, and
no acquisition as the wrong one. It refuses to guess (`None`, with the reason) where the two in-plane
spacings differ (the two orientations' lines would not be of one kind; the ITK T1 across its
2 mm axes, where the rule did mistake profiles) or the through-plane lines are too short for
`MIN_BINS` frequency bins. Like the fit, it takes the in-plane lines thickened by the factor to
stand for the through-plane ones, whether or not the output spacing is the in-plane one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from medsr.train.noise import thicken_like_scan
from medsr.train.pairs import PlaneSource

logger = logging.getLogger(__name__)

#: Gaussian where its level-only score is below this times the best boxcar-like score
GAUSSIAN_RATIO = 1.5
#: boxcar where the Gaussian's power-law score is above this times the best boxcar-like score
BOXCAR_RATIO = 5.0
#: the fewest frequency bins (above zero) a decision is made on
MIN_BINS = 5
#: the longest segment of a line whose spectrum is taken (samples)
MAX_SEGMENT = 64
#: segments whose mean is below this share of the 99th percentile are background, left out
FOREGROUND_SHARE = 0.2
#: the most lines of each kind that are read (evenly strided), to bound time and memory
MAX_LINES = 200_000
#: the relative difference between the two in-plane spacings the estimate accepts
SPACING_TOLERANCE = 0.05
#: the candidates: shapes, each with the fit's thickness ratio
CANDIDATES = ("boxcar", "gaussian", "sinc")


@dataclass
class ProfileEstimate:
    """The estimate: `profile` (None: undecided, the fit keeps the trained mixture), the scores
    of each candidate (``level`` and ``power``) and why it decided as it did."""

    profile: str | None
    reason: str
    scores: dict = field(default_factory=dict)

    def record(self) -> dict:
        """For the provenance (``fit_guard.slice_profile_estimate``)."""
        scores = {
            name: {kind: round(value, 6) for kind, value in score.items()}
            for name, score in self.scores.items()
        }
        return {"profile": self.profile, "reason": self.reason, "scores": scores}


def estimate_slice_profile(
    sources: list[PlaneSource],
    factor: float,
    ratio: float,
    noise: float,
) -> ProfileEstimate:
    """The slice profile of the scan whose in-plane slices are `sources`
    (`medsr.train.pairs.sources_self_supervised` with the upsampled axis and `factor`), thick
    by `ratio` x its spacing, with voxel noise `noise` (normalised units)."""
    inplane = [source.spacing[2] for source in sources]
    if max(inplane) - min(inplane) > SPACING_TOLERANCE * min(inplane):
        return ProfileEstimate(None, "the in-plane spacings differ")
    count = sources[0].array.shape[0]
    lengths = [int(np.floor(source.array.shape[2] / factor)) for source in sources]
    segment = min(MAX_SEGMENT, count, *lengths)
    segment -= segment % 2
    if segment // 2 < MIN_BINS:
        return ProfileEstimate(None, f"too few slices for {MIN_BINS} frequency bins")
    threshold = FOREGROUND_SHARE * float(np.percentile(sources[0].array, 99))
    observed = log_spectrum(np.moveaxis(sources[0].array, 0, -1), segment, threshold)
    rng = np.random.default_rng(0)
    scores = {}
    for shape in CANDIDATES:
        thickened = [
            _thickened(source.array, factor, ratio * factor, shape, noise, rng)
            for source in sources
        ]
        difference = observed - log_spectrum(thickened, segment, threshold)
        scores[shape] = {kind: _misfit(difference, kind) for kind in ("level", "power")}
    return decide(scores)


def decide(scores: dict) -> ProfileEstimate:
    """The one-sided decision of the module's rule, from each candidate's scores."""
    boxlike = {kind: min(scores["boxcar"][kind], scores["sinc"][kind]) for kind in scores["sinc"]}
    gaussian = scores["gaussian"]
    tiny = 1e-12
    if gaussian["level"] < GAUSSIAN_RATIO * max(boxlike["level"], tiny):
        return ProfileEstimate("gaussian", "the Gaussian fits clearly best", scores)
    if gaussian["power"] > BOXCAR_RATIO * max(boxlike["power"], tiny):
        return ProfileEstimate("boxcar", "a boxcar-like profile fits clearly best", scores)
    return ProfileEstimate(None, "no candidate fits clearly best", scores)


def _thickened(
    array: np.ndarray, factor: float, thickness: float, shape: str, noise: float, rng
) -> np.ndarray:
    length = array.shape[2]
    thin = min(int(np.ceil(int(length / factor) * factor - 1e-6)), length)
    lines = _strided(array.reshape(-1, length))[:, :thin]
    return thicken_like_scan(lines, factor, thickness, shape, noise, rng)


def _strided(lines: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(len(lines) / MAX_LINES)))
    return np.ascontiguousarray(lines[::step])


def log_spectrum(lines, segment: int, threshold: float) -> np.ndarray:
    """The log of the mean power spectrum (bins 1 .. segment / 2) of the Hann-windowed,
    mean-removed segments of `lines` (an array (..., L) or a list of them) whose mean is at
    least `threshold`; half-overlapping segments."""
    parts = lines if isinstance(lines, list) else [lines]
    window = np.hanning(segment + 2)[1:-1].astype(np.float32)
    total, kept = np.zeros(segment // 2), 0
    for part in parts:
        flat = _strided(np.asarray(part, np.float32).reshape(-1, part.shape[-1]))
        for start in range(0, flat.shape[1] - segment + 1, max(1, segment // 2)):
            piece = flat[:, start : start + segment]
            means = piece.mean(axis=1)
            piece = piece[means >= threshold] - means[means >= threshold, None]
            power = np.abs(np.fft.rfft(piece * window, axis=1))[:, 1:] ** 2
            total += power.sum(axis=0)
            kept += len(piece)
    return np.log(total / max(kept, 1) + 1e-20)


def _misfit(difference: np.ndarray, kind: str) -> float:
    """Mean squared residual of `difference` (log spectra, bins 1..) after a least-squares
    level (``level``) or level and power law in the frequency (``power``)."""
    columns = [np.ones_like(difference)]
    if kind == "power":
        columns.append(np.log(np.arange(1, len(difference) + 1)))
    design = np.stack(columns, axis=1)
    coefficients, *_ = np.linalg.lstsq(design, difference, rcond=None)
    return float(np.mean((difference - design @ coefficients) ** 2))
