"""Rectified-flow noising conventions and the GMFlow transitions built on them.

Time is a noise level ``sigma`` in [0, 1] with ``alpha = 1 - sigma``: ``x_t = alpha x0 + sigma eps``
(data at sigma = 0, noise at sigma = 1). Networks predict a GM over the velocity
``u = eps - x0 = (x_t - x0) / sigma``. Sigmas are given per sample: a number, or a tensor of the batch
shape ``(...)`` (usually ``(B,)``). Images/samples are ``(..., C, H, W)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, TypeVar

import torch
from torch import Tensor

from .containers import GaussianMixture, IsoGaussian
from .gm_ops import EPS, channel_dot
from .validation import Level, as_level, check_same_dtype, check_same_trailing, check_tensor, value_checks_enabled

Dist = TypeVar("Dist", GaussianMixture, IsoGaussian, Tensor)

def _for_gm(level: Level) -> Level:
    """The same level broadcastable against GM tensors (..., K, C, H, W)."""
    return level.unsqueeze(-4) if isinstance(level, Tensor) else level


def _clamp_min(value: Level, minimum: float) -> Level:
    return value.clamp(min=minimum) if isinstance(value, Tensor) else max(value, minimum)


def _log(value: Level) -> Level:
    return torch.log(value) if isinstance(value, Tensor) else math.log(value)


def _sqrt_nonneg(value: Level) -> Level:
    """sqrt(max(value, 0)): rounding can make a zero variance slightly negative; never return NaN."""
    return value.clamp(min=0).sqrt() if isinstance(value, Tensor) else math.sqrt(max(value, 0.0))


def _float64(value: Level) -> Level:
    return value.double() if isinstance(value, Tensor) else float(value)


def _to_dtype(value: Level, dtype: torch.dtype) -> Level:
    return value.to(dtype) if isinstance(value, Tensor) else value


def _fma(base: Tensor, x: Tensor, scale: Level) -> Tensor:
    """base + scale * x as one fused kernel over the large tensor ``x``."""
    if isinstance(scale, Tensor):
        return torch.addcmul(base, x, scale)
    return torch.add(base, x, alpha=scale)


def _any_above(a: Level, b: Level) -> bool:
    if not value_checks_enabled():
        return False
    above = a > b
    return bool(above.any()) if isinstance(above, Tensor) else bool(above)


def _check_x(name: str, x: Tensor, event_shape: torch.Size | None = None,
             dist: GaussianMixture | IsoGaussian | None = None) -> Tensor:
    check_tensor(name, x, min_dim=3)
    if event_shape is not None:
        check_same_trailing(name, x, event_shape, "(C, H, W)")
    if dist is not None:
        check_same_dtype(name, x, dist)
    return x


def u_to_x0(dist: Dist, x_t: Tensor, sigma: Level, eps: float = EPS) -> Dist:
    """Turn a prediction over u into one over x0 = x_t - sigma u.

    For distributions, stds scale by sigma (for a GM, sigma is clamped at ``eps`` inside the log).

    Args:
        dist: a u-GM (GaussianMixture (..., K, C, H, W)), an IsoGaussian over u, or a point prediction
            (Tensor (..., C, H, W)).
        x_t: noisy samples (..., C, H, W), in the dtype of ``dist``.
        sigma: noise level of ``x_t`` in [0, 1]: a number or a tensor of the batch shape ``(...)``.
        eps: lower clamp of sigma inside the log of a GM's std.

    Returns:
        The prediction over x0, of the same kind and shape as ``dist``.

    Raises:
        ValueError: if a tensor, its shape or dtype, or sigma is invalid.
    """
    _check_x("x_t", x_t, dist=dist if isinstance(dist, (GaussianMixture, IsoGaussian)) else None)
    s = as_level("sigma", sigma, x_t)
    if isinstance(dist, GaussianMixture):
        check_same_trailing("x_t", x_t, dist.event_shape, "the GM's (C, H, W)")
        s_gm = _for_gm(s)
        means = _fma(x_t.unsqueeze(-4), dist.means, -s_gm)
        return GaussianMixture.trusted(means, dist.logweights, dist.logstds + _log(_clamp_min(s_gm, eps)))
    if isinstance(dist, IsoGaussian):
        return IsoGaussian(_fma(x_t, dist.mean, -s), dist.var * s**2)
    return _fma(x_t, check_tensor("dist", dist), -s)


def x0_to_u(dist: Dist, x_t: Tensor, sigma: Level, eps: float = EPS) -> Dist:
    """Inverse of :func:`u_to_x0`: u = (x_t - x0) / sigma, sigma clamped at ``eps``.

    Args:
        dist: an x0-GM (GaussianMixture (..., K, C, H, W)), an IsoGaussian over x0, or a point prediction
            (Tensor (..., C, H, W)).
        x_t: noisy samples (..., C, H, W), in the dtype of ``dist``.
        sigma: noise level of ``x_t`` in [0, 1]: a number or a tensor of the batch shape ``(...)``.
        eps: lower clamp of sigma.

    Returns:
        The prediction over u, of the same kind and shape as ``dist``.

    Raises:
        ValueError: if a tensor, its shape or dtype, or sigma is invalid.
    """
    _check_x("x_t", x_t, dist=dist if isinstance(dist, (GaussianMixture, IsoGaussian)) else None)
    inv_s = 1 / _clamp_min(as_level("sigma", sigma, x_t), eps)
    if isinstance(dist, GaussianMixture):
        check_same_trailing("x_t", x_t, dist.event_shape, "the GM's (C, H, W)")
        inv_gm = _for_gm(inv_s)
        means = _fma((x_t * inv_s).unsqueeze(-4), dist.means, -inv_gm)
        return GaussianMixture.trusted(means, dist.logweights, dist.logstds + _log(inv_gm))
    if isinstance(dist, IsoGaussian):
        return IsoGaussian(_fma(x_t * inv_s, dist.mean, -inv_s), dist.var * inv_s**2)
    return _fma(x_t * inv_s, check_tensor("dist", dist), -inv_s)


def forward_diffusion(x0: Tensor, sigma: Level, noise: Tensor) -> Tensor:
    """Noise data to level sigma: x_t = (1 - sigma) x0 + sigma noise.

    Args:
        x0: data (..., C, H, W).
        sigma: noise level in [0, 1]: a number or a tensor of the batch shape ``(...)``.
        noise: standard normal noise with the trailing shape (C, H, W) of ``x0``.

    Returns:
        x_t, (..., C, H, W).

    Raises:
        ValueError: if a tensor, its shape, or sigma is invalid.
    """
    _check_x("x0", x0)
    _check_x("noise", noise, x0.shape[-3:])
    s = as_level("sigma", sigma, x0)
    return _fma((1 - s) * x0, noise, s)


def forward_transition(x_low: Tensor, sigma_low: Level, sigma_high: Level, noise: Tensor) -> Tensor:
    """Diffuse x at sigma_low further to sigma_high >= sigma_low (builds the transition-loss input).

    x_high = (alpha_high/alpha_low) x_low + sqrt(sigma_high^2 - (alpha_high/alpha_low sigma_low)^2) noise,
    with alpha_low clamped at ``EPS``.

    Args:
        x_low: samples (..., C, H, W) at ``sigma_low``.
        sigma_low: noise level of ``x_low`` in [0, 1]: a number or a tensor of the batch shape ``(...)``.
        sigma_high: the target noise level, same forms, >= sigma_low.
        noise: standard normal noise with the trailing shape (C, H, W) of ``x_low``.

    Returns:
        x_high, (..., C, H, W).

    Raises:
        ValueError: if sigma_high < sigma_low (while value checks are enabled), or a tensor, its shape or a
            noise level is invalid.
    """
    _check_x("x_low", x_low)
    _check_x("noise", noise, x_low.shape[-3:])
    lo = as_level("sigma_low", sigma_low, x_low)
    hi = as_level("sigma_high", sigma_high, x_low)
    if _any_above(lo, hi):
        raise ValueError("sigma_high must be >= sigma_low for a forward transition")
    ratio = (1 - hi) / _clamp_min(1 - lo, EPS)
    return _fma(ratio * x_low, noise, _sqrt_nonneg(hi**2 - (ratio * lo) ** 2))


def _reverse_coefficients(sigma_high: Level, sigma_low: Level, eps: float) -> tuple[Level, Level, Level]:
    """(c1, c2, c3) of q(x_low | x_high, x0) = N(c1 x_high + c2 x0, c3 I) (paper Eq. 9)."""
    sigma_ratio = sigma_low / _clamp_min(sigma_high, eps)
    alpha_ratio = (1 - sigma_high) / _clamp_min(1 - sigma_low, eps)
    beta_over_sigma_sq = 1 - (sigma_ratio * alpha_ratio) ** 2
    c1 = sigma_ratio**2 * alpha_ratio
    c2 = beta_over_sigma_sq * (1 - sigma_low)
    c3 = beta_over_sigma_sq * sigma_low**2
    return c1, c2, c3


def _check_order(sigma_high: Level, sigma_low: Level) -> None:
    if _any_above(sigma_low, sigma_high):
        raise ValueError("sigma_low must be <= sigma_high (sampling moves towards the data, sigma = 0)")


def reverse_transition(
    gm: GaussianMixture,
    x_high: Tensor,
    sigma_high: Level,
    sigma_low: Level,
    prediction_type: Literal["u", "x0"] = "u",
    eps: float = EPS,
) -> GaussianMixture:
    """GM over x at sigma_low given x_high and a GM over u (or x0) predicted at sigma_high (GM-SDE).

    x_low | x_high ~ sum_k w_k N(c1 x_high + c2 mu_x0k, (c3 + c2^2 s_x0^2) I), where
    q(x_low | x_high, x0) = N(c1 x_high + c2 x0, c3 I) (paper Eq. 9).

    Args:
        gm: the predicted GM (..., K, C, H, W), over u or x0 as ``prediction_type`` says.
        x_high: samples (..., C, H, W) at ``sigma_high``, in the dtype of ``gm``.
        sigma_high: noise level of ``x_high`` in [0, 1]: a number or a tensor of the batch shape ``(...)``.
        sigma_low: the target noise level, same forms, <= sigma_high.
        prediction_type: "u" if ``gm`` is over the velocity u, "x0" if it is over x0.
        eps: lower clamp of sigma_high and alpha_low in the coefficients, and of the scales inside the logs.

    Returns:
        The GM over x_low, (..., K, C, H, W).

    Raises:
        ValueError: for an unknown ``prediction_type``, sigma_low > sigma_high (while value checks are
            enabled), or an invalid tensor, shape, dtype or noise level.
    """
    if prediction_type not in ("u", "x0"):
        raise ValueError(f"prediction_type must be 'u' or 'x0', got {prediction_type!r}")
    _check_x("x_high", x_high, gm.event_shape, gm)
    hi = _for_gm(as_level("sigma_high", sigma_high, x_high))
    lo = _for_gm(as_level("sigma_low", sigma_low, x_high))
    _check_order(hi, lo)
    c1, c2, c3 = _reverse_coefficients(hi, lo, eps)
    x = x_high.unsqueeze(-4)
    if prediction_type == "u":
        means = _fma((c1 + c2) * x, gm.means, -(c2 * hi))  # c1 x + c2 (x - sigma u), one pass over the means
        x0_scale = hi * c2  # std of x0 = sigma * std of u
    else:
        means = _fma(c1 * x, gm.means, c2)
        x0_scale = c2
    var_part = 2 * (gm.logstds + _log(_clamp_min(x0_scale, eps)))
    noise_part = _log(_clamp_min(c3, eps))
    if not isinstance(noise_part, Tensor):
        noise_part = torch.full_like(var_part, noise_part)
    return GaussianMixture.trusted(means, gm.logweights, 0.5 * torch.logaddexp(var_part, noise_part))


def sde_step(x0: Tensor, x_t: Tensor, sigma: Level, sigma_to: Level, noise: Tensor, eps: float = EPS) -> Tensor:
    """GM-SDE step from a sample x0 of the denoising distribution: x_to = c1 x_t + c2 x0 + sqrt(c3) noise.

    (c1, c2, c3) are the coefficients of q(x_to | x_t, x0) = N(c1 x_t + c2 x0, c3 I) (paper Eq. 9).

    Args:
        x0: a sample of the denoising distribution, (..., C, H, W).
        x_t: current samples (..., C, H, W).
        sigma: noise level of ``x_t`` in [0, 1]: a number or a tensor of the batch shape ``(...)``.
        sigma_to: the target noise level, same forms, <= sigma.
        noise: standard normal noise (..., C, H, W).
        eps: lower clamp of sigma and alpha_to in the coefficients.

    Returns:
        x_to, (..., C, H, W).

    Raises:
        ValueError: if sigma_to > sigma (while value checks are enabled), or a tensor, its shape or a noise
            level is invalid.
    """
    _check_x("x_t", x_t)
    _check_x("x0", x0, x_t.shape[-3:])
    _check_x("noise", noise, x_t.shape[-3:])
    hi = as_level("sigma", sigma, x_t)
    lo = as_level("sigma_to", sigma_to, x_t)
    _check_order(hi, lo)
    c1, c2, c3 = _reverse_coefficients(hi, lo, eps)
    return _fma(_fma(c1 * x_t, x0, c2), noise, _sqrt_nonneg(c3))


def euler_step(x0: Tensor, x_t: Tensor, sigma: Level, sigma_to: Level, eps: float = EPS) -> Tensor:
    """Flow-ODE Euler step from an x0 prediction: x_to = x_t + (x_t - x0)/sigma (sigma_to - sigma).

    Args:
        x0: the x0 prediction, (..., C, H, W).
        x_t: current samples (..., C, H, W).
        sigma: noise level of ``x_t`` in [0, 1]: a number or a tensor of the batch shape ``(...)``.
        sigma_to: the target noise level, same forms.
        eps: lower clamp of sigma in the division.

    Returns:
        x_to, (..., C, H, W).

    Raises:
        ValueError: if a tensor, its shape or a noise level is invalid.
    """
    _check_x("x_t", x_t)
    _check_x("x0", x0, x_t.shape[-3:])
    s = as_level("sigma", sigma, x_t)
    s_to = as_level("sigma_to", sigma_to, x_t)
    return _fma(x_t, x_t - x0, (s_to - s) / _clamp_min(s, eps))


@dataclass(frozen=True, eq=False)
class DenoisingGMConverter:
    """Re-condition one x0-GM, predicted at (x_src, sigma_src), on other points (x_tgt, sigma_tgt).

    p(x0 | x_tgt) is proportional to p(x0 | x_src) p(x_tgt | x0) / p(x_src | x0) (paper Eq. 10): exact when
    the x0-GM is, so GM-ODE and GM-SDE substeps need no further network call. The ratio is
    exp(nu . x0 - zeta |x0|^2 / 2) with zeta = (alpha_t/sigma_t)^2 - (alpha_s/sigma_s)^2 and
    nu = alpha_t x_tgt / sigma_t^2 - alpha_s x_src / sigma_s^2; each component N(mu, v) becomes
    N((mu + v nu)/d, v/d), d = 1 + v zeta, reweighted by (mu . nu - zeta |mu|^2 / 2) / d. This natural form
    (LakonLab) stays exact as sigma_tgt -> sigma_src, where the moment form divides by ~0. Both terms are
    differences of large numbers at small sigma (alpha / sigma^2 ~ 1e6 at sigma = 1e-3): the noise-level
    coefficients are computed in float64 and nu as c_t (x_tgt - x_src) + (c_t - c_s) x_src, so that a
    conversion to (nearly) the same point is (nearly) the identity in any dtype.

    An immutable value: build it with :meth:`create` once per network evaluation (it caches |mu_k|^2)
    and query it at every substep with :meth:`mean` or :meth:`converted`.
    """

    gm: GaussianMixture
    x_src: Tensor
    sigma_src: Level  # clamped at eps
    eps: float = EPS

    @classmethod
    def create(cls, gm: GaussianMixture, x_src: Tensor, sigma_src: Level, eps: float = EPS) -> DenoisingGMConverter:
        """Build the converter of an x0-GM predicted at (x_src, sigma_src).

        Args:
            gm: the x0-GM (..., K, C, H, W).
            x_src: the samples (..., C, H, W) it was predicted at, in the dtype of ``gm``.
            sigma_src: their noise level in [0, 1]: a number or a tensor of the batch shape ``(...)``;
                clamped at ``eps``.
            eps: lower clamp of the noise levels and of the denominator d.

        Returns:
            The converter.

        Raises:
            ValueError: if ``x_src``, its shape or dtype, or ``sigma_src`` is invalid.
        """
        _check_x("x_src", x_src, gm.event_shape, gm)
        return cls(gm, x_src, _clamp_min(as_level("sigma_src", sigma_src, x_src), eps), eps)

    @cached_property
    def _var(self) -> Tensor:
        return torch.exp(2 * self.gm.logstds)

    @cached_property
    def _sq_norms(self) -> Tensor:
        return channel_dot(self.gm.means, self.gm.means)  # (..., K, 1, H, W)

    @cached_property
    def _src_coefficients(self) -> tuple[Level, Level]:
        """((alpha_s / sigma_s)^2, alpha_s / sigma_s^2) in float64."""
        s = _float64(self.sigma_src)
        return ((1 - s) / s) ** 2, (1 - s) / s**2

    def _reweighting(self, x_tgt: Tensor, sigma_tgt: Level) -> tuple[Tensor, Tensor, Tensor]:
        """(nu (..., 1, C, H, W), 1 / denom (..., 1, 1, 1, 1), logits (..., K, 1, H, W)) at the target point.

        Two fused kernels make the logits (the substep loop of GM-ODE runs this at every substep)."""
        _check_x("x_tgt", x_tgt, self.gm.event_shape, self.gm)
        s_tgt = _float64(_clamp_min(as_level("sigma_tgt", sigma_tgt, self.x_src), self.eps))
        src_precision, c_src = self._src_coefficients
        c_tgt = (1 - s_tgt) / s_tgt**2
        dtype = self.x_src.dtype
        zeta = _for_gm(_to_dtype(((1 - s_tgt) / s_tgt) ** 2 - src_precision, dtype))
        nu = _fma((x_tgt - self.x_src) * _to_dtype(c_tgt, dtype), self.x_src, _to_dtype(c_tgt - c_src, dtype))
        nu = nu.unsqueeze(-4)
        inv_denom = (self._var * zeta + 1).clamp(min=self.eps).reciprocal()
        scaled = _fma(channel_dot(self.gm.means, nu), self._sq_norms, -0.5 * zeta)  # nu.mu - zeta |mu|^2 / 2
        return nu, inv_denom, torch.addcmul(self.gm.logweights, scaled, inv_denom)

    def mean(self, x_tgt: Tensor, sigma_tgt: Level) -> Tensor:
        """Mean of the re-conditioned x0-GM, without building the GM.

        Args:
            x_tgt: the samples (..., C, H, W) to condition on, in the GM's dtype.
            sigma_tgt: their noise level in [0, 1]: a number or a tensor of the batch shape ``(...)``;
                clamped at ``eps``.

        Returns:
            The mean, (..., C, H, W).

        Raises:
            ValueError: if ``x_tgt``, its shape or dtype, or ``sigma_tgt`` is invalid.
        """
        nu, inv_denom, logits = self._reweighting(x_tgt, sigma_tgt)
        weighted = (torch.softmax(logits, dim=-4) * self.gm.means).sum(dim=-4)  # weights sum to 1
        return torch.addcmul(weighted, nu.squeeze(-4), self._var.squeeze(-4)).mul_(inv_denom.squeeze(-4))

    def converted(self, x_tgt: Tensor, sigma_tgt: Level) -> GaussianMixture:
        """The full re-conditioned x0-GM.

        Args:
            x_tgt: the samples (..., C, H, W) to condition on, in the GM's dtype.
            sigma_tgt: their noise level in [0, 1]: a number or a tensor of the batch shape ``(...)``;
                clamped at ``eps``.

        Returns:
            The x0-GM, (..., K, C, H, W).

        Raises:
            ValueError: if ``x_tgt``, its shape or dtype, or ``sigma_tgt`` is invalid.
        """
        nu, inv_denom, logits = self._reweighting(x_tgt, sigma_tgt)
        means = torch.addcmul(self._var * nu * inv_denom, self.gm.means, inv_denom)  # (mu + v nu) / d
        return GaussianMixture.trusted(means, torch.log_softmax(logits, dim=-4),
                                       self.gm.logstds + 0.5 * torch.log(inv_denom))


def convert_denoising_gm(
    gm: GaussianMixture, x_src: Tensor, sigma_src: Level, x_tgt: Tensor, sigma_tgt: Level, eps: float = EPS
) -> GaussianMixture:
    """Re-condition an x0-GM predicted at (x_src, sigma_src) on (x_tgt, sigma_tgt).

    See :class:`DenoisingGMConverter`.

    Args:
        gm: the x0-GM (..., K, C, H, W).
        x_src: the samples (..., C, H, W) it was predicted at.
        sigma_src: their noise level in [0, 1]: a number or a tensor of the batch shape ``(...)``.
        x_tgt: the samples (..., C, H, W) to condition on.
        sigma_tgt: their noise level, same forms.
        eps: lower clamp of the noise levels and of the denominator d.

    Returns:
        The re-conditioned x0-GM, (..., K, C, H, W).

    Raises:
        ValueError: if a tensor, its shape or dtype, or a noise level is invalid.
    """
    return DenoisingGMConverter.create(gm, x_src, sigma_src, eps).converted(x_tgt, sigma_tgt)


def convert_denoising_gm_mean(
    gm: GaussianMixture, x_src: Tensor, sigma_src: Level, x_tgt: Tensor, sigma_tgt: Level, eps: float = EPS
) -> Tensor:
    """Mean of :func:`convert_denoising_gm`, without building the full GM.

    Args:
        gm: the x0-GM (..., K, C, H, W).
        x_src: the samples (..., C, H, W) it was predicted at.
        sigma_src: their noise level in [0, 1]: a number or a tensor of the batch shape ``(...)``.
        x_tgt: the samples (..., C, H, W) to condition on.
        sigma_tgt: their noise level, same forms.
        eps: lower clamp of the noise levels and of the denominator d.

    Returns:
        The mean of the re-conditioned x0-GM, (..., C, H, W).

    Raises:
        ValueError: if a tensor, its shape or dtype, or a noise level is invalid.
    """
    return DenoisingGMConverter.create(gm, x_src, sigma_src, eps).mean(x_tgt, sigma_tgt)
