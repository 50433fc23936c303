"""The official GMFlow time grid."""

from __future__ import annotations

import torch
from torch import Tensor

from ..math.validation import check_float_in, check_positive_int


def flow_sigmas(num_steps: int, shift: float = 1.0) -> Tensor:
    """Noise levels of an ``num_steps``-step sampler, from sigma = 1 down to 0.

    s_j = 1 - j / num_steps for j < num_steps, sigma_j = shift s_j / (1 + (shift - 1) s_j), and a final
    sigma = 0. With N steps of n substeps, ``num_steps = N n`` and the network runs at sigma_{i n}.

    Args:
        num_steps: the number of steps, >= 1.
        shift: the time shift, > 0; > 1 spends more steps at high noise (as SD3/official GMFlow configs do).

    Returns:
        The noise levels, float64 (num_steps + 1,).

    Raises:
        ValueError: if ``num_steps`` is not an integer >= 1 or ``shift`` is not a finite number > 0.
    """
    check_positive_int("num_steps", num_steps)
    shift = check_float_in("shift", shift, 0.0, float("inf"), low_open=True)
    s = 1.0 - torch.arange(num_steps, dtype=torch.float64) / num_steps
    sigmas = shift * s / (1.0 + (shift - 1.0) * s)
    return torch.cat([sigmas, sigmas.new_zeros(1)])
