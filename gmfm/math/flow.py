"""Rectified-flow noising conventions and the GMFlow transitions built on them.

Time is a noise level ``sigma`` in [0, 1] with ``alpha = 1 - sigma``: ``x_t = alpha x0 + sigma eps``
(data at sigma = 0, noise at sigma = 1). Networks predict a GM over the velocity
``u = eps - x0 = (x_t - x0) / sigma``. Sigmas are given per sample: a number, or a tensor of the batch
shape ``(...)`` (usually ``(B,)``). Images/samples are ``(..., C, H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal, TypeVar

import torch
from torch import Tensor

from .containers import GaussianMixture, IsoGaussian
from .gm_ops import EPS, channel_dot
from .validation import as_sigma, check_same_trailing, check_tensor, pad_right

Dist = TypeVar("Dist", GaussianMixture, IsoGaussian, Tensor)


def _sigma_for(name: str, sigma: object, batch_shape: torch.Size, like: Tensor, ndim: int) -> Tensor:
    return pad_right(as_sigma(name, sigma, batch_shape, like), ndim)


def _check_x(name: str, x: Tensor, event_shape: torch.Size | None = None) -> Tensor:
    check_tensor(name, x, min_dim=3)
    if event_shape is not None:
        check_same_trailing(name, x, event_shape, "(C, H, W)")
    return x


def u_to_x0(dist: Dist, x_t: Tensor, sigma: object, eps: float = EPS) -> Dist:
    """Turn a prediction over u into one over x0 = x_t - sigma u.

    ``dist`` is a u-GM (GaussianMixture), an IsoGaussian over u, or a point prediction (Tensor
    (..., C, H, W)). For distributions, stds scale by sigma (clamped at ``eps`` inside the log).
    """
    _check_x("x_t", x_t)
    if isinstance(dist, GaussianMixture):
        check_same_trailing("x_t", x_t, dist.event_shape, "the GM's (C, H, W)")
        s = _sigma_for("sigma", sigma, x_t.shape[:-3], x_t, x_t.dim() + 1)
        means = torch.addcmul(x_t.unsqueeze(-4), dist.means, s, value=-1.0)  # x_t - sigma u
        return GaussianMixture(means, dist.logweights, dist.logstds + torch.log(s.clamp(min=eps)))
    s = _sigma_for("sigma", sigma, x_t.shape[:-3], x_t, x_t.dim())
    if isinstance(dist, IsoGaussian):
        return IsoGaussian(x_t - s * dist.mean, dist.var * s.square())
    return x_t - s * check_tensor("dist", dist)


def x0_to_u(dist: Dist, x_t: Tensor, sigma: object, eps: float = EPS) -> Dist:
    """Inverse of :func:`u_to_x0`: u = (x_t - x0) / sigma, sigma clamped at ``eps``."""
    _check_x("x_t", x_t)
    if isinstance(dist, GaussianMixture):
        check_same_trailing("x_t", x_t, dist.event_shape, "the GM's (C, H, W)")
        inv_s = 1 / _sigma_for("sigma", sigma, x_t.shape[:-3], x_t, x_t.dim() + 1).clamp(min=eps)
        means = torch.addcmul((x_t * inv_s.squeeze(-4)).unsqueeze(-4), dist.means, inv_s, value=-1.0)
        return GaussianMixture(means, dist.logweights, dist.logstds + torch.log(inv_s))
    s = _sigma_for("sigma", sigma, x_t.shape[:-3], x_t, x_t.dim()).clamp(min=eps)
    if isinstance(dist, IsoGaussian):
        return IsoGaussian((x_t - dist.mean) / s, dist.var / s.square())
    return (x_t - check_tensor("dist", dist)) / s


def forward_diffusion(x0: Tensor, sigma: object, noise: Tensor) -> Tensor:
    """x_t = (1 - sigma) x0 + sigma noise."""
    _check_x("x0", x0)
    _check_x("noise", noise, x0.shape[-3:])
    s = _sigma_for("sigma", sigma, x0.shape[:-3], x0, x0.dim())
    return (1 - s) * x0 + s * noise


def forward_transition(x_low: Tensor, sigma_low: object, sigma_high: object, noise: Tensor) -> Tensor:
    """Diffuse x at sigma_low further to sigma_high >= sigma_low (builds the transition-loss input).

    x_high = (alpha_high/alpha_low) x_low + sqrt(sigma_high^2 - (alpha_high/alpha_low sigma_low)^2) noise.
    """
    _check_x("x_low", x_low)
    _check_x("noise", noise, x_low.shape[-3:])
    lo = _sigma_for("sigma_low", sigma_low, x_low.shape[:-3], x_low, x_low.dim())
    hi = _sigma_for("sigma_high", sigma_high, x_low.shape[:-3], x_low, x_low.dim())
    if bool((hi < lo).any()):
        raise ValueError("sigma_high must be >= sigma_low for a forward transition")
    ratio = (1 - hi) / (1 - lo).clamp(min=EPS)
    std = (hi.square() - (ratio * lo).square()).clamp(min=0).sqrt()
    return ratio * x_low + std * noise


def _reverse_coefficients(sigma_high: Tensor, sigma_low: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(c1, c2, c3) of q(x_low | x_high, x0) = N(c1 x_high + c2 x0, c3 I) (paper Eq. 9)."""
    sigma_ratio = sigma_low / sigma_high.clamp(min=eps)
    alpha_ratio = (1 - sigma_high) / (1 - sigma_low).clamp(min=eps)
    beta_over_sigma_sq = 1 - (sigma_ratio * alpha_ratio).square()
    c1 = sigma_ratio.square() * alpha_ratio
    c2 = beta_over_sigma_sq * (1 - sigma_low)
    c3 = beta_over_sigma_sq * sigma_low.square()
    return c1, c2, c3


def _check_order(sigma_high: Tensor, sigma_low: Tensor) -> None:
    if bool((sigma_low > sigma_high).any()):
        raise ValueError("sigma_low must be <= sigma_high (sampling moves towards the data, sigma = 0)")


def reverse_transition(
    gm: GaussianMixture,
    x_high: Tensor,
    sigma_high: object,
    sigma_low: object,
    prediction_type: Literal["u", "x0"] = "u",
    eps: float = EPS,
) -> GaussianMixture:
    """GM over x at sigma_low given x_high and a GM over u (or x0) predicted at sigma_high (GM-SDE).

    x_low | x_high ~ sum_k w_k N(c1 x_high + c2 mu_x0k, (c3 + c2^2 s_x0^2) I).
    """
    if prediction_type not in ("u", "x0"):
        raise ValueError(f"prediction_type must be 'u' or 'x0', got {prediction_type!r}")
    _check_x("x_high", x_high, gm.event_shape)
    batch, ndim = x_high.shape[:-3], x_high.dim() + 1
    hi = _sigma_for("sigma_high", sigma_high, batch, x_high, ndim)
    lo = _sigma_for("sigma_low", sigma_low, batch, x_high, ndim)
    _check_order(hi, lo)
    c1, c2, c3 = _reverse_coefficients(hi, lo, eps)
    x = x_high.unsqueeze(-4)
    if prediction_type == "u":
        # c1 x + c2 (x - sigma u) in one fused pass over the means
        means = torch.addcmul((c1 + c2) * x, gm.means, c2 * hi, value=-1.0)
        x0_scale = hi * c2  # std of x0 = sigma * std of u
    else:
        means = torch.addcmul(c1 * x, gm.means, c2)
        x0_scale = c2
    logstds = 0.5 * torch.logaddexp(
        2 * (gm.logstds + torch.log(x0_scale.clamp(min=eps))), torch.log(c3.clamp(min=eps))
    )
    return GaussianMixture(means, gm.logweights, logstds)


def sde_step(x0: Tensor, x_t: Tensor, sigma: object, sigma_to: object, noise: Tensor, eps: float = EPS) -> Tensor:
    """GM-SDE step from a sample x0 of the denoising distribution: x_to = c1 x_t + c2 x0 + sqrt(c3) noise."""
    _check_x("x_t", x_t)
    _check_x("x0", x0, x_t.shape[-3:])
    _check_x("noise", noise, x_t.shape[-3:])
    batch, ndim = x_t.shape[:-3], x_t.dim()
    hi = _sigma_for("sigma", sigma, batch, x_t, ndim)
    lo = _sigma_for("sigma_to", sigma_to, batch, x_t, ndim)
    _check_order(hi, lo)
    c1, c2, c3 = _reverse_coefficients(hi, lo, eps)
    return c1 * x_t + c2 * x0 + c3.sqrt() * noise


def euler_step(x0: Tensor, x_t: Tensor, sigma: object, sigma_to: object, eps: float = EPS) -> Tensor:
    """Flow-ODE Euler step from an x0 prediction: x_to = x_t + (x_t - x0)/sigma (sigma_to - sigma)."""
    _check_x("x_t", x_t)
    _check_x("x0", x0, x_t.shape[-3:])
    batch, ndim = x_t.shape[:-3], x_t.dim()
    s = _sigma_for("sigma", sigma, batch, x_t, ndim)
    s_to = _sigma_for("sigma_to", sigma_to, batch, x_t, ndim)
    return x_t + (x_t - x0) / s.clamp(min=eps) * (s_to - s)


@dataclass(frozen=True, eq=False)
class DenoisingGMConverter:
    """Re-condition one x0-GM, predicted at (x_src, sigma_src), on other points (x_tgt, sigma_tgt).

    p(x0 | x_tgt) is proportional to p(x0 | x_src) p(x_tgt | x0) / p(x_src | x0) (paper Eq. 10): exact when
    the x0-GM is, so GM-ODE and GM-SDE substeps need no further network call. The ratio is
    exp(nu . x0 - zeta |x0|^2 / 2) with zeta = (alpha_t/sigma_t)^2 - (alpha_s/sigma_s)^2 and
    nu = alpha_t x_tgt / sigma_t^2 - alpha_s x_src / sigma_s^2; each component N(mu, v) becomes
    N((mu + v nu)/d, v/d), d = 1 + v zeta, reweighted by (mu . nu - zeta |mu|^2 / 2) / d. This natural form
    (LakonLab) stays exact as sigma_tgt -> sigma_src, where the moment form divides by ~0.

    An immutable value: build it once per network evaluation (it caches |mu_k|^2) and query it at every
    substep with :meth:`mean` or :meth:`gm`.
    """

    gm: GaussianMixture
    x_src: Tensor
    sigma_src: Tensor  # (..., 1, 1, 1), clamped at eps
    eps: float = EPS

    @classmethod
    def create(cls, gm: GaussianMixture, x_src: Tensor, sigma_src: object, eps: float = EPS) -> DenoisingGMConverter:
        _check_x("x_src", x_src, gm.event_shape)
        s = _sigma_for("sigma_src", sigma_src, x_src.shape[:-3], x_src, x_src.dim()).clamp(min=eps)
        return cls(gm, x_src, s, eps)

    @cached_property
    def _var(self) -> Tensor:
        return torch.exp(2 * self.gm.logstds)

    @cached_property
    def _sq_norms(self) -> Tensor:
        return channel_dot(self.gm.means, self.gm.means)  # (..., K, 1, H, W)

    def _reweighting(self, x_tgt: Tensor, sigma_tgt: object) -> tuple[Tensor, Tensor, Tensor]:
        """(nu (..., 1, C, H, W), denom (..., 1, 1, 1, 1), logits (..., K, 1, H, W)) at the target point."""
        _check_x("x_tgt", x_tgt, self.gm.event_shape)
        s_src = self.sigma_src
        s_tgt = _sigma_for("sigma_tgt", sigma_tgt, self.x_src.shape[:-3], self.x_src, self.x_src.dim())
        s_tgt = s_tgt.clamp(min=self.eps)
        a_src, a_tgt = (1 - s_src) / s_src, (1 - s_tgt) / s_tgt
        zeta = (a_tgt.square() - a_src.square()).unsqueeze(-4)
        nu = (a_tgt / s_tgt * x_tgt - a_src / s_src * self.x_src).unsqueeze(-4)
        denom = (self._var * zeta + 1).clamp(min=self.eps)
        logits = self.gm.logweights + (channel_dot(self.gm.means, nu) - 0.5 * zeta * self._sq_norms) / denom
        return nu, denom, logits

    def mean(self, x_tgt: Tensor, sigma_tgt: object) -> Tensor:
        """Mean of the re-conditioned x0-GM, (..., C, H, W), without building the GM."""
        nu, denom, logits = self._reweighting(x_tgt, sigma_tgt)
        weighted = (torch.softmax(logits, dim=-4) * self.gm.means).sum(dim=-4)  # weights sum to 1
        return (weighted + (self._var * nu).squeeze(-4)) / denom.squeeze(-4)

    def converted(self, x_tgt: Tensor, sigma_tgt: object) -> GaussianMixture:
        """The full re-conditioned x0-GM (..., K, C, H, W)."""
        nu, denom, logits = self._reweighting(x_tgt, sigma_tgt)
        means = torch.addcmul(self._var * nu / denom, self.gm.means, 1 / denom)  # (mu + v nu) / d
        return GaussianMixture(means, torch.log_softmax(logits, dim=-4), self.gm.logstds - 0.5 * torch.log(denom))


def convert_denoising_gm(
    gm: GaussianMixture, x_src: Tensor, sigma_src: object, x_tgt: Tensor, sigma_tgt: object, eps: float = EPS
) -> GaussianMixture:
    """Re-condition an x0-GM predicted at (x_src, sigma_src) on (x_tgt, sigma_tgt): see
    :class:`DenoisingGMConverter`."""
    return DenoisingGMConverter.create(gm, x_src, sigma_src, eps).converted(x_tgt, sigma_tgt)


def convert_denoising_gm_mean(
    gm: GaussianMixture, x_src: Tensor, sigma_src: object, x_tgt: Tensor, sigma_tgt: object, eps: float = EPS
) -> Tensor:
    """Mean (..., C, H, W) of :func:`convert_denoising_gm`, without building the full GM."""
    return DenoisingGMConverter.create(gm, x_src, sigma_src, eps).mean(x_tgt, sigma_tgt)


__all__ = [
    "u_to_x0",
    "x0_to_u",
    "forward_diffusion",
    "forward_transition",
    "reverse_transition",
    "sde_step",
    "euler_step",
    "DenoisingGMConverter",
    "convert_denoising_gm",
    "convert_denoising_gm_mean",
]
