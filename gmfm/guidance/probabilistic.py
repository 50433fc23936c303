"""Probabilistic guidance (paper Sec. 3.3): guide a conditional x0-GM without over-saturation.

Instead of extrapolating means as CFG does, the conditional GM is reweighted by a Gaussian ratio so
that its mean moves by a bias of bounded power while its total variance E|x0 - mu_c|^2 is preserved:
the target Gaussian N(mu_c + bias, v_c (1 - w^2)) has |bias|^2 = w^2 v_c (per-sample average).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..math.containers import GaussianMixture, IsoGaussian
from ..math.gm_ops import gm_mean, gm_mul_iso_gaussian, gm_to_iso_gaussian, iso_gaussian_mul_iso_gaussian
from ..math.validation import check_float_in

#: Clamp of the projection denominator and of the bias power (official values).
_POWER_EPS = 1e-6


@dataclass(frozen=True, eq=False)
class GuidanceOutput:
    """Result of :func:`probabilistic_guidance` (batch dims ``...`` as in the inputs).

    gm:            the guided x0-GM (..., K, C, H, W).
    cond:          the conditional x0-GM it was built from (the 2nd-order solver reweights it again).
    cond_gaussian: moment-matched surrogate N(mu_c, v_c) of the conditional GM; ``var`` averaged over
                   pixels, (..., 1, 1, 1).
    bias:          the applied mean shift (..., C, H, W).
    avg_var:       v_c averaged over C, H, W: (..., 1, 1, 1).
    target:        the Gaussian N(mu_c + bias, v_c (1 - w^2)) the guided GM was moved to.
    """

    gm: GaussianMixture
    cond: GaussianMixture
    cond_gaussian: IsoGaussian
    bias: Tensor
    avg_var: Tensor
    target: IsoGaussian


def pixel_averaged_gaussian(gm: GaussianMixture) -> IsoGaussian:
    """Moment-matched isotropic Gaussian with its variance averaged over pixels: var (..., 1, 1, 1)."""
    g = gm_to_iso_gaussian(gm)
    return IsoGaussian(g.mean, g.var.mean(dim=(-2, -1), keepdim=True))


def _mean_over_event(t: Tensor) -> Tensor:
    return t.mean(dim=(-3, -2, -1), keepdim=True)


def reweight_towards(base: GaussianMixture, surrogate: IsoGaussian, target: IsoGaussian) -> GaussianMixture:
    """Multiply ``base`` by target/surrogate, i.e. move its moment-matched Gaussian to ``target``."""
    return gm_mul_iso_gaussian(base, iso_gaussian_mul_iso_gaussian(target, surrogate, 1.0, -1.0), 1.0, 1.0)


def probabilistic_guidance(
    cond: GaussianMixture, uncond: GaussianMixture, guidance_scale: float, orthogonal: float = 1.0
) -> GuidanceOutput:
    """Guide the conditional x0-GM ``cond`` away from the unconditional ``uncond``.

    1. N(mu_c, v_c): moment-matched Gaussian of ``cond`` (v_c averaged over pixels, one per sample);
    2. bias = mean(cond) - mean(uncond), minus ``orthogonal`` times its projection on mu_c;
    3. bias rescaled to power w^2 avg(v_c) (``w = guidance_scale``);
    4. guided GM = cond x N(mu_c + bias, v_c (1 - w^2)) / N(mu_c, v_c), renormalised.

    Args:
        cond, uncond: x0-GMs with the same shapes (..., K, C, H, W).
        guidance_scale: w in [0, 1); 0 returns ``cond`` unchanged (the solver then skips ``uncond``).
        orthogonal: in [0, 1]; 1 removes the bias component parallel to mu_c (the paper's default).
    """
    w = check_float_in("guidance_scale", guidance_scale, 0.0, 1.0, high_open=True)
    orthogonal = check_float_in("orthogonal", orthogonal, 0.0, 1.0)
    if uncond.means.shape != cond.means.shape:
        raise ValueError(
            f"uncond must have the same shape as cond: cond.means {tuple(cond.means.shape)}, "
            f"uncond.means {tuple(uncond.means.shape)}"
        )
    surrogate = pixel_averaged_gaussian(cond)
    avg_var = _mean_over_event(surrogate.var)
    if w == 0.0:
        return GuidanceOutput(cond, cond, surrogate, torch.zeros_like(surrogate.mean), avg_var, surrogate)

    mu_c = surrogate.mean
    bias = mu_c - gm_mean(uncond)
    if orthogonal > 0.0:
        projection = _mean_over_event(bias * mu_c) / _mean_over_event(mu_c.square()).clamp(min=_POWER_EPS)
        bias = bias - orthogonal * projection * mu_c
    bias_power = _mean_over_event(bias.square()).clamp(min=_POWER_EPS)
    bias = bias * (w * torch.sqrt(avg_var / bias_power))
    target = IsoGaussian(mu_c + bias, surrogate.var * (1.0 - w * w))
    return GuidanceOutput(reweight_towards(cond, surrogate, target), cond, surrogate, bias, avg_var, target)
