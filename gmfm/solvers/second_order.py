"""Second-order GM solvers (paper Sec. 3.5): correct the current x0-GM with the previous step's.

The previous step's GM, re-conditioned on the current (x_t, sigma), predicts where the mean should be
to first order; the difference to the current mean, scaled as in a 2nd-order multistep method and
damped by how much of it is noise, becomes a bias that one GM reweighting applies (together with the
guidance bias, so both cost one reweighting and errors do not accumulate). The guidance enters only
through the :class:`gmfm.guidance.GuidedGM` it returned.

The state passed between steps is a plain value returned to the caller: nothing outlives one sampling
call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ..guidance.base import GuidedGM, reweight_towards
from ..math.containers import GaussianMixture, IsoGaussian
from ..math.flow import convert_denoising_gm_mean
from ..math.gm_ops import gm_mean, variance_floor
from ..math.validation import as_level, check_float_in

#: Official damping coefficients (ca, cb) of the 2nd-order mean difference.
DEFAULT_COEFS = (0.005, 1.0)


def check_second_order_coefs(coefs: object, name: str = "gm2_coefs") -> tuple[float, float]:
    """``coefs`` as (ca, cb) floats if it is two finite numbers in [0, 1000].

    Args:
        coefs: the damping coefficients (a sequence of two numbers).
        name: the argument's name in error messages.

    Returns:
        (ca, cb).

    Raises:
        ValueError: naming ``name``, if ``coefs`` is not two numbers in [0, 1000].
    """
    values = list(coefs) if isinstance(coefs, (list, tuple, np.ndarray)) else []
    if len(values) != 2:
        raise ValueError(f"{name} must be two numbers (ca, cb), got {coefs!r}")
    ca, cb = (check_float_in(name, v, 0.0, 1e3) for v in values)
    return ca, cb


#: Smallest share of the surrogate variance the corrected target keeps (official value).
_POWER_EPS = 1e-6


@dataclass(frozen=True, eq=False)
class SecondOrderState:
    """What one step leaves for the next.

    gm:    the step's x0-GM after guidance, before its own correction (B, K, C, H, W).
    x_t:   the step's input (B, C, H, W).
    sigma: its noise level, a number or (B,).
    h:     its step size in sigma, sigma_i - sigma_{i+1}, a number or (B,).
    """

    gm: GaussianMixture
    x_t: Tensor
    sigma: float | Tensor
    h: float | Tensor


@dataclass(frozen=True, eq=False)
class SecondOrderOutput:
    """gm: the x0-GM to sample with (B, K, C, H, W); gaussian: the Gaussian it was moved to (None at the
    first step, which is not corrected); state: to pass to the next step."""

    gm: GaussianMixture
    gaussian: IsoGaussian | None
    state: SecondOrderState


def second_order_correction(
    guided: GuidedGM,
    x_t: Tensor,
    sigma: float | Tensor,
    h: float | Tensor,
    previous: SecondOrderState | None,
    coefs: tuple[float, float] = DEFAULT_COEFS,
    refinement_steps: int = 0,
) -> SecondOrderOutput:
    """Apply the 2nd-order GM correction of one step.

    Args:
        guided: the step's x0-GM as the guidance left it (:meth:`GuidedGM.unguided` without guidance):
            its ``base`` is reweighted once, with the guidance bias (if any) and the 2nd-order bias.
        x_t: (B, C, H, W).
        sigma: current noise level, a number or (B,).
        h: step size (h = sigma on the last step), a number or (B,).
        previous: the state returned by the previous step, or None at the first step (then only stores).
        coefs: (ca, cb) of the damping sqrt(clamp(1 - avg_var (w^2 cb^2 + ca) / h_prev^2, min 0)), with
            w = ``guided.damping_scale``.
        refinement_steps: the official ``gm2_correction_steps`` (default 0): after the reweighting, adjust
            the bias this many times so that the corrected GM's mean moves by the damped 2nd-order
            difference plus the guidance's own mean shift (one reweighting only approximates it). The
            returned ``gaussian`` stays the first target, as in the official code.

    Returns:
        :class:`SecondOrderOutput`.
    """
    state = SecondOrderState(guided.gm, x_t, sigma, h)
    if previous is None:
        return SecondOrderOutput(guided.gm, None, state)

    surrogate, avg_var = guided.surrogate, guided.avg_var
    mean_from_previous = convert_denoising_gm_mean(previous.gm, previous.x_t, previous.sigma, x_t, sigma)
    ca, cb = coefs
    h_prev = as_level("previous.h", previous.h, x_t)
    k = 0.5 * as_level("h", h, x_t) / h_prev
    noise_power = avg_var * ((guided.damping_scale * cb) ** 2 + ca)
    damping = (1 - noise_power / h_prev**2).clamp(min=0).sqrt()
    mean_diff = (guided.mean - mean_from_previous) * (damping * k)
    bias = mean_diff + guided.bias if guided.bias is not None else mean_diff
    bias, target = _bounded_target(surrogate, bias, avg_var)
    gm = reweight_towards(guided.base, surrogate, target)
    wanted = mean_diff + guided.mean - surrogate.mean  # the mean shift the correction is after
    for _ in range(refinement_steps):
        moved = gm_mean(gm) - surrogate.mean
        ratio = (bias.norm(dim=-3, keepdim=True) / moved.norm(dim=-3, keepdim=True).clamp(min=1e-6)).clamp(max=1)
        bias, adjusted = _bounded_target(surrogate, bias - (moved - wanted) * ratio, avg_var)
        gm = reweight_towards(guided.base, surrogate, adjusted)
    return SecondOrderOutput(gm, target, state)


def _bounded_target(surrogate: IsoGaussian, bias: Tensor, avg_var: Tensor) -> tuple[Tensor, IsoGaussian]:
    """``bias`` rescaled to a power of at most avg_var, and the target N(mu_c + bias, v_c (1 - power / avg_var))."""
    bias_power = bias.square().mean(dim=(-3, -2, -1), keepdim=True)
    # scale-free floors: the official absolute 1e-6 breaks data with a tiny spread
    bias = bias * (avg_var / variance_floor(bias_power)).clamp(max=1).sqrt()
    target = IsoGaussian(
        surrogate.mean + bias,
        surrogate.var * (1 - bias_power / variance_floor(avg_var)).clamp(min=_POWER_EPS),
    )
    return bias, target
