"""The self-ensemble's passes: which flips of the planes each pass sees, and how its inputs are
flipped. One place for the reconstruction (`medsr.upsample.reconstruct`) and the in-plane
slices that calibrate its residual (`medsr.upsample.heldout`), so that both average the same
passes."""

from __future__ import annotations

import torch

#: the flips of the self-ensemble's passes, in the order an ensemble of n passes takes the
#: first n: (along the plane's in-plane axis w, along the thick axis, the neighbour planes'
#: order). Each is a symmetry of the acquisition that training draws too (flips of both plane
#: axes, reversed neighbour order), so every pass is an equally good estimate and their mean
#: has less variance (docs/benchmarks.md, "The fit's pixel loss and the self-ensemble"; the default
#: number of passes: `medsr.upsample.checks.default_ensemble`, on a float32 CPU
#: `medsr.upsample.budget.default_work`)
ENSEMBLE_FLIPS = (
    (False, False, False),
    (True, True, False),
    (True, False, False),
    (False, True, False),
    (False, False, True),
    (True, True, True),
    (True, False, True),
    (False, True, True),
)


def ensemble_passes(ensemble: int, neighbours: int) -> tuple[tuple[bool, bool, bool], ...]:
    """The distinct flips of an ensemble's passes.

    With one plane, reversing the neighbours' order changes nothing, so those passes would
    repeat the others; the mean is the same without them (every pass counted as often).

    Args:
        ensemble: passes asked for (`medsr.upsample.checks.ENSEMBLE_SIZES`; the first of
            `ENSEMBLE_FLIPS`).
        neighbours: the generator's k.

    Returns:
        The flips to run, in `ENSEMBLE_FLIPS`' order.

    Raises:
        ValueError: `ensemble` is not 1 to `len(ENSEMBLE_FLIPS)`.
    """
    if not 1 <= ensemble <= len(ENSEMBLE_FLIPS):
        raise ValueError(f"ensemble must be 1 to {len(ENSEMBLE_FLIPS)} passes, got {ensemble}")
    passes = ENSEMBLE_FLIPS[:ensemble]
    if neighbours == 1:
        passes = tuple(dict.fromkeys((flip_w, flip_n, False) for flip_w, flip_n, _ in passes))
    return passes


def flipped_pass(
    lr: torch.Tensor, positions: torch.Tensor, flips: tuple[bool, bool, bool]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The planes (B, k, W, n) and output positions a pass with `flips` decodes: flipped along
    W, along the thick axis (position t becomes ``n - 1 - t``) and in the neighbours' order, as
    `flips` says; its prediction comes back flipped along W only
    (`medsr.upsample.reconstruct.predict_flipped`)."""
    flip_w, flip_n, flip_p = flips
    dims = [d for d, on in ((-2, flip_w), (-1, flip_n), (1, flip_p)) if on]
    if dims:
        lr = lr.flip(dims)
    if flip_n:
        positions = (lr.shape[-1] - 1) - positions
    return lr, positions
