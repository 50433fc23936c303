"""Second-order GM solvers (paper Sec. 3.5): correct the current x0-GM with the previous step's.

The previous step's GM, re-conditioned on the current (x_t, sigma), predicts where the mean should be
to first order; the difference to the current mean, scaled as in a 2nd-order multistep method and
damped by how much of it is noise, becomes a bias that one GM reweighting applies (together with the
guidance bias, so both cost one reweighting and errors do not accumulate).

The state passed between steps is a plain value returned to the caller: nothing outlives one sampling
call.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..guidance.probabilistic import GuidanceOutput, pixel_averaged_gaussian, reweight_towards
from ..math.containers import GaussianMixture, IsoGaussian
from ..math.flow import convert_denoising_gm_mean
from ..math.gm_ops import gm_mean
from ..math.validation import as_level

#: Official damping coefficients (ca, cb) of the 2nd-order mean difference.
DEFAULT_COEFS = (0.005, 1.0)
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
    """gm: the x0-GM to sample with; gaussian: the Gaussian it was moved to (None at the first step,
    which is not corrected); state: to pass to the next step."""

    gm: GaussianMixture
    gaussian: IsoGaussian | None
    state: SecondOrderState


def second_order_correction(
    gm: GaussianMixture,
    x_t: Tensor,
    sigma: float | Tensor,
    h: float | Tensor,
    previous: SecondOrderState | None,
    guidance: GuidanceOutput | None = None,
    guidance_scale: float = 0.0,
    coefs: tuple[float, float] = DEFAULT_COEFS,
) -> SecondOrderOutput:
    """Apply the 2nd-order GM correction of one step.

    Args:
        gm: the step's x0-GM (after guidance if any), (B, K, C, H, W).
        x_t: (B, C, H, W); sigma, h: current noise level and step size (h = sigma on the last step), numbers
            or (B,) tensors.
        previous: the state returned by the previous step, or None at the first step (then only stores).
        guidance: the step's probabilistic-guidance output, if guided: the correction then reweights the
            conditional GM once with the guidance bias and the 2nd-order bias together.
        guidance_scale: w, also used to damp the 2nd-order difference (official behaviour).
        coefs: (ca, cb) of the damping sqrt(clamp(1 - avg_var (w^2 cb^2 + ca) / h_prev^2, min 0)).
    """
    state = SecondOrderState(gm, x_t, sigma, h)
    if previous is None:
        return SecondOrderOutput(gm, None, state)

    if guidance is not None:
        base, surrogate, avg_var = guidance.cond, guidance.cond_gaussian, guidance.avg_var
        mean_now, extra_bias = gm_mean(gm), guidance.bias
    else:
        base = gm
        surrogate = pixel_averaged_gaussian(gm)
        avg_var = surrogate.var.mean(dim=(-3, -2, -1), keepdim=True)
        mean_now, extra_bias = surrogate.mean, None

    mean_from_previous = convert_denoising_gm_mean(previous.gm, previous.x_t, previous.sigma, x_t, sigma)
    ca, cb = coefs
    h_prev = as_level("previous.h", previous.h, x_t)
    k = 0.5 * as_level("h", h, x_t) / h_prev
    noise_power = avg_var * ((guidance_scale * cb) ** 2 + ca)
    damping = (1 - noise_power / h_prev**2).clamp(min=0).sqrt()
    bias = (mean_now - mean_from_previous) * (damping * k)
    if extra_bias is not None:
        bias = bias + extra_bias

    bias_power = bias.square().mean(dim=(-3, -2, -1), keepdim=True)
    bias = bias * (avg_var / bias_power.clamp(min=_POWER_EPS)).clamp(max=1).sqrt()
    target = IsoGaussian(
        surrogate.mean + bias,
        surrogate.var * (1 - bias_power / avg_var.clamp(min=_POWER_EPS)).clamp(min=_POWER_EPS),
    )
    return SecondOrderOutput(reweight_towards(base, surrogate, target), target, state)


__all__ = ["SecondOrderState", "SecondOrderOutput", "second_order_correction", "DEFAULT_COEFS"]
