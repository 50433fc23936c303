"""Pure functions over :class:`GaussianMixture` and :class:`IsoGaussian` (SPEC "Operations").

Shapes: ``...`` = batch dims, ``K`` components, ``C`` channels, ``H x W`` pixels. Every pixel of a GM
is an independent mixture over its C channels; all components of a sample share one std ``s``.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .containers import GaussianMixture, IsoGaussian
from .random import Generators, rand, randn
from .validation import check_broadcastable, check_float_in, check_same_dtype, check_same_trailing, check_tensor

#: Lower clamp of noise levels and of the transition variance in the training loss (official value).
EPS = 1e-6
#: Relative floor of a difference of variances (a ratio of Gaussians): a share of the operands' scale.
REL_EPS = 1e-6


@dataclass
class FloorReport:
    """How often the official floors changed a value inside :func:`official_floors`."""

    bound: int = 0


_OFFICIAL_FLOORS: contextvars.ContextVar[FloorReport | None] = contextvars.ContextVar("gmfm_official_floors",
                                                                                     default=None)


@contextmanager
def official_floors() -> Iterator[FloorReport]:
    """Floor variance-like quantities at the official code's absolute 1e-6 within the block.

    Replaces gmfm's scale-relative floors (:func:`variance_floor`), to reproduce the official numbers
    exactly.

    Yields:
        A :class:`FloorReport` counting the floorings that changed a value: where none did, both modes agree.
    """
    report = FloorReport()
    token = _OFFICIAL_FLOORS.set(report)
    try:
        yield report
    finally:
        _OFFICIAL_FLOORS.reset(token)


_WORKING_DTYPES = (torch.float32, torch.float64)
_TINY = {dtype: torch.finfo(dtype).tiny for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def variance_floor(value: Tensor, scale: Tensor | None = None, rel: float = REL_EPS, *,
                   floor: Tensor | None = None) -> Tensor:
    """``value`` clamped below at a floor that follows the operands' scale.

    The floor is ``rel * |scale|`` (or ``floor``, when the caller has it at hand), and at least the dtype's
    smallest normal number (no scale: that number alone), so data with a tiny spread is treated as data
    with a unit spread is. Inside :func:`official_floors`, the official absolute 1e-6 (``EPS``) instead,
    and the report counts the calls where it changed a value.

    Args:
        value: the quantity to floor (any shape).
        scale: the operands' scale, broadcastable to ``value``; None for the absolute floor.
        rel: the relative floor.
        floor: ``rel * |scale|`` computed by the caller (non-negative), instead of ``scale`` and ``rel``.

    Returns:
        The floored tensor, of the broadcast shape of ``value`` and ``scale``.
    """
    report = _OFFICIAL_FLOORS.get()
    if report is not None:
        if bool((value < EPS).any()):
            report.bound += 1
        return value.clamp(min=EPS)
    tiny = _TINY.get(value.dtype) or torch.finfo(value.dtype).tiny
    if floor is None:
        if scale is None:
            return value.clamp(min=tiny)
        floor = scale.abs().mul_(rel)
    return torch.maximum(value, floor).clamp_(min=tiny)


def upcast(*tensors: Tensor) -> tuple[torch.dtype, list[Tensor]]:
    """Promote tensors to float32 at least, so that half precision is computed in float32.

    Args:
        *tensors: the inputs; the first one's dtype is reported.

    Returns:
        (the first input's dtype, all inputs converted to that dtype promoted to float32 at least).
    """
    dtype = tensors[0].dtype
    if dtype in _WORKING_DTYPES and all(t.dtype == dtype for t in tensors):
        return dtype, list(tensors)  # the common case, without a conversion call per tensor
    work = torch.promote_types(dtype, torch.float32)
    return dtype, [t.to(work) for t in tensors]


def _check_sample(name: str, x: Tensor, gm: GaussianMixture) -> None:
    check_tensor(name, x, min_dim=3)
    check_same_trailing(name, x, gm.event_shape, "the GM's (C, H, W)")
    check_broadcastable(name, x, gm.batch_shape, 3)
    check_same_dtype(name, x, gm)


def gm_weights(gm: GaussianMixture) -> Tensor:
    """Component weights: a softmax over K, so unnormalised log-weights are tolerated.

    Args:
        gm: the mixture (..., K, C, H, W).

    Returns:
        The weights, (..., K, 1, H, W).
    """
    return torch.softmax(gm.logweights, dim=-4)


def gm_mean(gm: GaussianMixture) -> Tensor:
    """Mean of the mixture, sum_k w_k mu_k.

    Args:
        gm: the mixture (..., K, C, H, W).

    Returns:
        The mean, (..., C, H, W).
    """
    return (gm_weights(gm) * gm.means).sum(dim=-4)


def channel_dot(a: Tensor, b: Tensor) -> Tensor:
    """Inner product over the channel dim -3, kept.

    Args:
        a: tensor (..., C, H, W).
        b: tensor broadcastable against ``a``.

    Returns:
        sum_c a_c b_c, (..., 1, H, W) (the broadcast shape with dim -3 reduced to 1).
    """
    return (a * b).sum(dim=-3, keepdim=True)


def _consume_sq_norm(diff: Tensor) -> Tensor:
    """|diff|^2 over channels, (..., 1, H, W), for a temporary ``diff`` the caller no longer needs.

    Squaring in place saves one full-size allocation (on CPU, fresh large buffers cost page faults
    comparable to the arithmetic); autograd needs the unsquared values, so then it copies.
    """
    squared = diff.square() if diff.requires_grad else diff.square_()
    return squared.sum(dim=-3, keepdim=True)


def gm_to_iso_gaussian(gm: GaussianMixture) -> IsoGaussian:
    """Moment-matched isotropic Gaussian per pixel.

    Args:
        gm: the mixture (..., K, C, H, W).

    Returns:
        IsoGaussian with mean (..., C, H, W) = sum_k w_k mu_k and
        var (..., 1, H, W) = mean over channels of sum_k w_k (mu_k - mean)^2, plus s^2.
    """
    weights = gm_weights(gm)
    mean = (weights * gm.means).sum(dim=-4)
    spread = (weights * _consume_sq_norm(gm.means - mean.unsqueeze(-4))).sum(dim=-4) / gm.event_shape[0]
    return IsoGaussian(mean, spread + torch.exp(2 * gm.logstds).squeeze(-4))


def _component_log_likelihoods(gm: GaussianMixture, x: Tensor, max_inv_std: float | None) -> Tensor:
    """log N(x | mu_k, s^2 I) + log w_k without the 2*pi constant: (..., K, H, W)."""
    inv_std = torch.exp(-gm.logstds)
    if max_inv_std is not None:
        inv_std = inv_std.clamp(max=max_inv_std)
    sq_dist = _consume_sq_norm(x.unsqueeze(-4) - gm.means).squeeze(-3)  # (..., K, H, W)
    channels = gm.event_shape[0]
    return (gm.logweights.squeeze(-3) - channels * gm.logstds.squeeze(-3)) - 0.5 * inv_std.square().squeeze(-3) * sq_dist


def gm_log_prob(gm: GaussianMixture, x: Tensor) -> Tensor:
    """Log density of ``x`` per pixel, summed over channels.

    Args:
        gm: the mixture (..., K, C, H, W).
        x: points (..., C, H, W) whose batch dims broadcast to the GM's, in the GM's dtype.

    Returns:
        log p(x) per pixel, (..., H, W).

    Raises:
        ValueError: if ``x``, its shape or dtype is invalid.
    """
    _check_sample("x", x, gm)
    ll = _component_log_likelihoods(gm, x, None)
    return torch.logsumexp(ll, dim=-3) - 0.5 * gm.event_shape[0] * math.log(2 * math.pi)


def gm_nll(gm: GaussianMixture, target: Tensor, max_inv_std: float = 1e4) -> Tensor:
    """The training NLL of ``target`` per pixel.

    Official convention: no 2*pi constant, and 1/s clamped at ``max_inv_std`` so that a collapsing std
    cannot blow up the loss. The training loss is its mean over batch and pixels.

    Args:
        gm: the predicted mixture (..., K, C, H, W).
        target: targets (..., C, H, W) whose batch dims broadcast to the GM's, in the GM's dtype.
        max_inv_std: upper clamp of 1/s.

    Returns:
        The NLL per pixel, (..., H, W).

    Raises:
        ValueError: if ``target``, its shape or dtype is invalid.
    """
    _check_sample("target", target, gm)
    return -torch.logsumexp(_component_log_likelihoods(gm, target, max_inv_std), dim=-3)


def iso_gaussian_mul_iso_gaussian(
    g1: IsoGaussian, g2: IsoGaussian, power_1: float = 1.0, power_2: float = 1.0, eps: float = REL_EPS
) -> IsoGaussian:
    """Normalised product N1^power_1 * N2^power_2 (negative powers give a ratio of Gaussians).

    Precision = p1/v1 + p2/v2, mean = var (p1 m1/v1 + p2 m2/v2). The denominator d = p1 v2 + p2 v1 is
    floored at ``eps`` (|p1 v2| + |p2 v1|): a ratio of (nearly) equal Gaussians becomes a very wide Gaussian
    that keeps the ratio's exact linear tilt (mean / var), whatever the scale of the variances. (The
    official code floors d at an absolute 1e-6, which shrinks products of variances below ~1e-4 towards
    0; the two agree wherever d > 1e-6.) Half precision is computed in float32.

    Args:
        g1: first Gaussian: mean (..., C, H, W), var broadcastable (..., 1, H, W) or (..., 1, 1, 1).
        g2: second Gaussian, shapes as ``g1``.
        power_1: power of ``g1`` (any sign).
        power_2: power of ``g2`` (any sign).
        eps: relative floor of d.

    Returns:
        The product as an :class:`IsoGaussian`, in the dtype of ``g1``.
    """
    if power_1 == 0 and power_2 == 0:
        raise ValueError("power_1 and power_2 must not both be 0")
    if power_1 == 0:  # the product is N2^power_2 alone
        return iso_gaussian_mul_iso_gaussian(g2, g1, power_2, power_1, eps)
    dtype, (m1, v1, m2, v2) = upcast(g1.mean, g1.var, g2.mean, g2.var)
    # In units of |p1| (r = p2 / |p1|, s = sign p1): d = s v2 + r v1, mean = (s v2 m1 + r v1 m2) / d,
    # var = v1 v2 / (|p1| d); few, small kernels on the (..., 1, 1, 1) variances, as this op runs several
    # times per solver step.
    r = power_2 / abs(power_1)
    norm = torch.add(v2, v1, alpha=r) if power_1 > 0 else torch.sub(v1 * r, v2)
    floor = torch.add(v2, v1, alpha=abs(r)).mul_(eps)  # eps (|p1 v2| + |p2 v1|) / |p1| (variances are >= 0)
    inv_norm = variance_floor(norm, floor=floor).reciprocal_()
    w2 = v2 * inv_norm
    mean = torch.addcmul(m2 * (v1 * inv_norm).mul_(r), m1, w2, value=1 if power_1 > 0 else -1)
    var = v1 * w2 if abs(power_1) == 1 else (v1 * w2).div_(abs(power_1))
    return IsoGaussian.trusted(mean, var) if mean.dtype == dtype else IsoGaussian.trusted(mean.to(dtype), var.to(dtype))


def gm_mul_iso_gaussian(
    gm: GaussianMixture, gaussian: IsoGaussian, gm_power: float = 1.0, gaussian_power: float = 1.0,
    eps: float = REL_EPS
) -> GaussianMixture:
    """Normalised product GM^gm_power * N(g_mean, g_var I)^gaussian_power, which is a GM again.

    With r = gaussian_power / gm_power and n = g_var + r s^2:
    means' = (g_var mu_k + r s^2 g_mean) / n, logweights' = logsoftmax(log w_k - r |mu_k - g_mean|^2 / (2n)),
    logstd' = logstd + log(g_var)/2 - log(n)/2. n is floored at ``eps`` (|g_var| + |r s^2|) (see
    :func:`variance_floor`); half precision is computed in float32.

    Args:
        gm: the mixture (..., K, C, H, W).
        gaussian: mean (..., C, H, W) in the GM's dtype; var one value per sample (..., 1, 1, 1), so that
            the result keeps one shared std.
        gm_power: power of the GM (non-zero).
        gaussian_power: power of the Gaussian (any sign).
        eps: relative floor of n.

    Returns:
        The product GM (..., K, C, H, W), in the GM's dtype.

    Raises:
        ValueError: if ``gaussian.var`` is not one value per sample, ``gm_power`` is 0, or ``gaussian.mean``
            has the wrong trailing shape or dtype.
    """
    if gaussian.var.shape[-2:] != (1, 1):
        raise ValueError(
            f"gaussian.var must be one value per sample, shape (..., 1, 1, 1), got {tuple(gaussian.var.shape)}"
        )
    if gm_power == 0:
        raise ValueError("gm_power must be non-zero")
    check_same_trailing("gaussian.mean", gaussian.mean, gm.event_shape, "the GM's (C, H, W)")
    check_same_dtype("gaussian", gaussian.mean, gm)
    ratio = gaussian_power / gm_power
    dtype, (gm_means, gm_logweights, gm_logstds, g_mean, g_var) = upcast(
        gm.means, gm.logweights, gm.logstds, gaussian.mean.unsqueeze(-4), gaussian.var.unsqueeze(-4))
    scaled_gm_var = ratio * torch.exp(2 * gm_logstds)
    inv_norm = variance_floor(g_var + scaled_gm_var, g_var.abs() + scaled_gm_var.abs(), eps).reciprocal()  # 1/n
    keep = g_var * inv_norm  # g_var / n
    # (g_var mu + r s^2 g_mean) / n as one fused multiply-add over the big tensor
    means = torch.addcmul(g_mean * (scaled_gm_var * inv_norm), gm_means, keep)
    delta = _consume_sq_norm(gm_means - g_mean) * (inv_norm * (-0.5 * ratio))
    logweights = torch.log_softmax(gm_logweights + delta, dim=-4)
    return GaussianMixture.trusted(means.to(dtype), logweights.to(dtype),
                                   (gm_logstds + 0.5 * torch.log(keep)).to(dtype))


def gm_sample(gm: GaussianMixture, generator: Generators = None) -> Tensor:
    """One sample per GM: a component per pixel by its weight, then Gaussian noise.

    A component with zero weight (log-weight -inf) is never chosen.

    Args:
        gm: the mixture (..., K, C, H, W).
        generator: drives both draws: one ``torch.Generator``, one per sample of a (B,) batch, or None.

    Returns:
        The samples, (..., C, H, W).

    Raises:
        ValueError: if a list of generators does not have one per row of the leading batch dim.
    """
    weights = gm_weights(gm)  # (..., K, 1, H, W)
    cdf = weights.cumsum(dim=-4)
    batch = gm.batch_shape
    channels, height, width = gm.event_shape
    # Scaling by the total keeps the uniform strictly below the last CDF value despite rounding.
    u = rand((*batch, 1, 1, height, width), generator, gm.means) * cdf[..., -1:, :, :, :]
    index = (cdf <= u).sum(dim=-4, keepdim=True).clamp(max=gm.num_components - 1)
    chosen = gm.means.gather(-4, index.expand(*batch, 1, channels, height, width)).squeeze(-4)
    noise = randn((*batch, channels, height, width), generator, gm.means)
    return chosen + torch.exp(gm.logstds).squeeze(-4) * noise


def gm_temperature(gm: GaussianMixture, temperature: float) -> GaussianMixture:
    """GM at a temperature T > 0: weights^(1/T) renormalised, component variance times T (pi-Flow).

    Args:
        gm: the mixture (..., K, C, H, W).
        temperature: T, a finite number > 0.

    Returns:
        The tempered mixture, (..., K, C, H, W).

    Raises:
        ValueError: if ``temperature`` is not a finite number > 0.
    """
    temperature = check_float_in("temperature", temperature, 0.0, math.inf, low_open=True)
    logweights = torch.log_softmax(gm.logweights / temperature, dim=-4)
    return GaussianMixture.trusted(gm.means, logweights, gm.logstds + 0.5 * math.log(temperature))
