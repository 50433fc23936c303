"""Spectral sampling (paper Sec. 3.4, App. A.3): correlated GM samples through a Knothe-Rosenblatt map.

The per-pixel GM of an image has independent pixels; a learned power spectrum correlates them:

1. draw Gaussian noise whose (real + imaginary part of the orthonormal 2-D FFT) has per-frequency
   log-variance ``log_power`` (:func:`spectral_noise`);
2. push every pixel's noise vector through the Knothe-Rosenblatt (KR) map of that pixel's GM
   (:func:`gaussian_to_gm_kr`): in a per-sample rotated channel basis (the eigenvectors of the
   pixel-averaged channel covariance), channel by channel, each coordinate is the 1-D inverse CDF of its
   conditional GM at the normal CDF of the noise.

:func:`gm_to_gaussian_kr` is the inverse map (used by the spectral loss). The 1-D inverse CDF is a
safeguarded Newton iteration in plain PyTorch (the official code has a CUDA kernel): Newton steps that
would leave the current bracket are replaced by false-position / bisection steps, so it converges for any
mixture.

Shapes: GM (B, K, C, H, W); samples and noise (B, C, H, W); ``log_power`` (B, C, H, W).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .containers import GaussianMixture
from .gm_ops import gm_weights
from .random import Generators, randn
from .validation import check_same_trailing, check_tensor

_SQRT2 = math.sqrt(2.0)


def gm1d_cdf_pdf(means: Tensor, logstds: Tensor, logweights: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """CDF and density of 1-D mixtures at ``x``.

    Args:
        means: component means (..., K, H, W).
        logstds: component log-stds, broadcastable to ``means``.
        logweights: log-weights (..., K, H, W), normalised over K.
        x: the points (..., H, W).

    Returns:
        (cdf in [0, 1], pdf), each (..., H, W).
    """
    return _mixture_cdf_pdf(means, torch.exp(-logstds), torch.exp(logweights), x, dim=-3)


def _mixture_cdf_pdf(means: Tensor, inv_stds: Tensor, weights: Tensor, x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """:func:`gm1d_cdf_pdf` with the components along ``dim`` and weights / inverse stds already
    exponentiated (the Newton loop reuses them)."""
    z = (x.unsqueeze(dim) - means) * inv_stds
    cdf = 0.5 * (1 + (weights * torch.erf(z / _SQRT2)).sum(dim=dim))
    pdf = (weights * inv_stds * torch.exp(-0.5 * z.square())).sum(dim=dim) / math.sqrt(2 * math.pi)
    return cdf.clamp(0.0, 1.0), pdf


def gm1d_inverse_cdf(means: Tensor, logstds: Tensor, logweights: Tensor, u: Tensor, steps: int = 32) -> Tensor:
    """Solve F(x) = u for 1-D mixtures.

    Starts from the moment-matched Gaussian's quantile; every mixture component's CDF lies below u at
    min_k mu_k + s Phi^-1(u) and above it at max_k mu_k + s Phi^-1(u), which brackets the root. Each
    iteration takes a Newton step or, when that would leave the bracket (flat CDF between modes), a
    false-position step kept at least 1/8 of the bracket from its ends (plain bisection until both ends have
    been evaluated), so the bracket always shrinks. An element stops when its step is below 100 machine
    epsilons of the component std (or after ``steps`` iterations); only the elements still moving are
    evaluated, since most converge in a few steps and a few need many. A converged element keeps its value,
    so each result depends on its own mixture only (not on the batch).

    Args:
        means: component means (..., K, H, W).
        logstds: component log-stds, broadcastable to ``means``; the start, bracket and tolerance use the
            first component's std (the components share one std s).
        logweights: log-weights (..., K, H, W), normalised over K.
        u: the target CDF values in (0, 1), broadcastable to (..., H, W).
        steps: the maximum number of iterations.

    Returns:
        x, (..., H, W).
    """
    logstds = logstds.expand_as(means)
    std = torch.exp(logstds[..., :1, :, :]).squeeze(-3)
    weights = torch.exp(logweights)
    z = _SQRT2 * torch.erfinv((2 * u - 1).clamp(-1 + 1e-7, 1 - 1e-7))
    lo = means.amin(dim=-3) + std * z
    hi = means.amax(dim=-3) + std * z
    mean = (weights * means).sum(dim=-3)
    var = (weights * (means - mean.unsqueeze(-3)).square()).sum(dim=-3) + std.square()
    x = torch.minimum(torch.maximum(mean + var.sqrt() * z, lo), hi)
    tol = 100 * torch.finfo(x.dtype).eps * std

    # Flatten to (N, K) rows, one per mixture, so that converged rows can be dropped.
    def rows(t: Tensor) -> Tensor:
        return t.movedim(-3, -1).reshape(-1, t.shape[-3])

    shape = x.shape
    out = x.reshape(-1).clone()
    # State of the mixtures still moving, compacted whenever a quarter of them has converged.
    idx = torch.arange(out.numel(), device=x.device)
    m, inv_s, w = rows(means), rows(torch.exp(-logstds)), rows(weights)
    xa, lo, hi, u, tol = (t.reshape(-1) for t in (x, lo, hi, u.expand(shape), tol.expand(shape)))
    f_lo = torch.full_like(xa, float("nan"))  # F - u at the bracket ends, once evaluated there
    f_hi = f_lo
    # An element that has converged keeps its value while the others go on: every element's result is
    # then a function of its own mixture only, not of the batch it is solved in.
    active = torch.ones_like(xa, dtype=torch.bool)
    for _ in range(steps):
        cdf, pdf = _mixture_cdf_pdf(m, inv_s, w, xa, dim=-1)  # rows: reducing the last dim is fast
        f = cdf - u
        below = f < 0
        lo, f_lo = torch.where(below, xa, lo), torch.where(below, f, f_lo)
        hi, f_hi = torch.where(below, hi, xa), torch.where(below, f_hi, f)
        newton = xa - f / pdf.clamp(min=1e-30)
        inside = (newton > lo) & (newton < hi) & torch.isfinite(newton)
        width = hi - lo
        secant = lo + width * (-f_lo / (f_hi - f_lo)).clamp(0.125, 0.875)
        x_next = torch.where(inside, newton, torch.where(torch.isfinite(secant), secant, lo + 0.5 * width))
        moving = (x_next - xa).abs() > tol
        xa = torch.where(active, x_next, xa)
        active = active & moving
        n_moving = int(active.sum())
        if n_moving == 0:
            break
        if n_moving < 0.75 * xa.numel():
            out[idx[~active]] = xa[~active]
            keep = active.nonzero().squeeze(-1)
            idx, m, inv_s, w, xa, lo, hi, u, tol, f_lo, f_hi, active = (
                t[keep] for t in (idx, m, inv_s, w, xa, lo, hi, u, tol, f_lo, f_hi, active))
    out[idx] = xa
    return out.reshape(shape)


def _rotation(gm: GaussianMixture) -> Tensor:
    """(..., C, C) orthonormal channel basis per sample: eigenvectors (largest eigenvalue first) of the
    channel covariance of the per-pixel moment-matched Gaussians, averaged over pixels (official
    "axis-aligned" KR)."""
    with torch.no_grad():
        w = gm_weights(gm)  # (..., K, 1, H, W)
        mean = (w * gm.means).sum(dim=-4, keepdim=True)
        d = gm.means - mean  # (..., K, C, H, W)
        cov = torch.einsum("...kchw,...kdhw->...cd", w * d, d) / (d.shape[-1] * d.shape[-2])
        channels = gm.means.shape[-3]
        cov = cov + torch.exp(2 * gm.logstds).reshape(*gm.batch_shape, 1, 1) * torch.eye(
            channels, dtype=cov.dtype, device=cov.device)
        _, vecs = torch.linalg.eigh(cov.double())
        return vecs.flip(-1).to(gm.dtype)


def _rotate_means(gm: GaussianMixture, rotation: Tensor) -> Tensor:
    return torch.einsum("...kchw,...cd->...kdhw", gm.means, rotation)


def _conditional_logweights(gm: GaussianMixture, means_rot: Tensor, y_prev: Tensor | None, axis: int,
                            accumulated: Tensor | None) -> tuple[Tensor, Tensor]:
    """Log-weights (..., K, H, W) of the components given coordinates y_0 .. y_{axis-1}: ``accumulated``
    holds the log-likelihood terms of y_0 .. y_{axis-2}, ``y_prev`` (..., H, W) is y_{axis-1}."""
    logw = gm.logweights.squeeze(-3)
    if axis == 0:
        return logw, torch.zeros_like(logw)
    z = (y_prev.unsqueeze(-3) - means_rot[..., axis - 1, :, :]) * torch.exp(-gm.logstds.squeeze(-3))
    accumulated = accumulated - 0.5 * z.square()
    return torch.log_softmax(logw + accumulated, dim=-3), accumulated


def gaussian_to_gm_kr(gm: GaussianMixture, noise: Tensor, steps: int = 32) -> Tensor:
    """Map standard-normal noise (in the KR basis) to samples of the per-pixel GM (Knothe-Rosenblatt map).

    Args:
        gm: the mixture (..., K, C, H, W).
        noise: standard normal noise (..., C, H, W).
        steps: the maximum number of iterations of each 1-D inverse CDF (:func:`gm1d_inverse_cdf`).

    Returns:
        The samples, (..., C, H, W).

    Raises:
        ValueError: if ``noise`` is not a floating tensor with the GM's trailing shape (C, H, W).
    """
    check_tensor("noise", noise, min_dim=3)
    check_same_trailing("noise", noise, gm.event_shape, "the GM's (C, H, W)")
    rotation = _rotation(gm)
    means_rot = _rotate_means(gm, rotation)
    u = 0.5 * (1 + torch.erf(noise / _SQRT2))
    ys: list[Tensor] = []
    accumulated = None
    for axis in range(gm.event_shape[0]):
        logw, accumulated = _conditional_logweights(gm, means_rot, ys[-1] if ys else None, axis, accumulated)
        ys.append(gm1d_inverse_cdf(means_rot[..., axis, :, :], gm.logstds.squeeze(-3), logw, u[..., axis, :, :],
                                   steps))
    y = torch.stack(ys, dim=-3)
    return torch.einsum("...dhw,...cd->...chw", y, rotation)


def gm_to_gaussian_kr(gm: GaussianMixture, samples: Tensor, eps: float = 1e-6) -> Tensor:
    """The inverse map: samples of the per-pixel GM -> standard normal (KR basis).

    Args:
        gm: the mixture (..., K, C, H, W).
        samples: samples of the GM, (..., C, H, W).
        eps: the per-channel CDFs are clamped to [eps / 2, 1 - eps / 2] before the normal quantile.

    Returns:
        The noise, (..., C, H, W).

    Raises:
        ValueError: if ``samples`` is not a floating tensor with the GM's trailing shape (C, H, W).
    """
    check_tensor("samples", samples, min_dim=3)
    check_same_trailing("samples", samples, gm.event_shape, "the GM's (C, H, W)")
    rotation = _rotation(gm)
    means_rot = _rotate_means(gm, rotation)
    y = torch.einsum("...chw,...cd->...dhw", samples, rotation)
    zs = []
    accumulated = None
    for axis in range(gm.event_shape[0]):
        y_prev = y[..., axis - 1, :, :] if axis > 0 else None
        logw, accumulated = _conditional_logweights(gm, means_rot, y_prev, axis, accumulated)
        cdf, _ = gm1d_cdf_pdf(means_rot[..., axis, :, :], gm.logstds.squeeze(-3), logw, y[..., axis, :, :])
        zs.append(_SQRT2 * torch.erfinv((2 * cdf - 1).clamp(-1 + eps, 1 - eps)))
    return torch.stack(zs, dim=-3)


def spectral_coefficients(x: Tensor) -> Tensor:
    """Real + imaginary part of the orthonormal 2-D FFT over (H, W): a real, orthonormal transform.

    Args:
        x: real tensor (..., H, W).

    Returns:
        The coefficients, (..., H, W).
    """
    f = torch.fft.fft2(x, norm="ortho")
    return f.real + f.imag


def spectral_noise(log_power: Tensor, generator: Generators = None) -> Tensor:
    """Gaussian noise whose :func:`spectral_coefficients` are independent with log-variance ``log_power``.

    With log_power = 0 it is white standard-normal noise.

    Args:
        log_power: per-frequency log-variance (..., C, H, W).
        generator: one ``torch.Generator``, one per row of the leading dim, or None.

    Returns:
        The noise, (..., C, H, W), in the dtype and on the device of ``log_power``.

    Raises:
        ValueError: if ``log_power`` is not a floating tensor with at least 2 dims, or a list of generators
            does not have one per row.
    """
    check_tensor("log_power", log_power, min_dim=2)
    s = randn(log_power.shape, generator, log_power) * torch.exp(0.5 * log_power)
    # F(k) = (S(k) + S(-k))/2 + i (S(k) - S(-k))/2 is Hermitian, so its inverse FFT is real, and
    # Re F + Im F = S: the inverse of spectral_coefficients.
    s_neg = torch.roll(torch.flip(s, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    return torch.fft.ifft2(torch.complex(0.5 * (s + s_neg), 0.5 * (s - s_neg)), norm="ortho").real


def spectral_gm_sample(gm: GaussianMixture, log_power: Tensor, generator: Generators = None) -> Tensor:
    """One GM sample whose pixels are correlated by the power spectrum ``log_power``.

    The marginal of every pixel is still that pixel's GM.

    Args:
        gm: the mixture (..., K, C, H, W).
        log_power: per-frequency log-variance (..., C, H, W) of the noise (:func:`spectral_noise`).
        generator: one ``torch.Generator``, one per row of the leading dim, or None.

    Returns:
        The sample, (..., C, H, W).

    Raises:
        ValueError: if ``log_power`` is invalid, or a list of generators does not have one per row.
    """
    return gaussian_to_gm_kr(gm, spectral_noise(log_power, generator))


def spectral_loss(u_gm: GaussianMixture, u_target: Tensor, log_power: Tensor, weight: float = 1.0) -> Tensor:
    """Spectral NLL of the target velocity's KR-whitened noise under the predicted spectrum (official loss).

    Mean of 0.5 z^2 (exp(-log_power) - 1) + 0.5 log_power, times C and ``weight``, where z are the
    :func:`spectral_coefficients` of :func:`gm_to_gaussian_kr` (``u_gm``, ``u_target``). No gradient flows
    through the KR map (only into ``log_power``).

    Args:
        u_gm: the predicted u-GM (..., K, C, H, W).
        u_target: the target velocity (..., C, H, W).
        log_power: the predicted per-frequency log-variance (..., C, H, W).
        weight: the loss weight.

    Returns:
        The loss, a 0-d tensor.

    Raises:
        ValueError: if ``u_target`` is not a floating tensor with the GM's trailing shape (C, H, W).
    """
    with torch.no_grad():
        z = spectral_coefficients(gm_to_gaussian_kr(u_gm.detach(), u_target.detach()))
    loss = z.square() * (torch.exp(-log_power) - 1) + log_power
    return loss.mean() * (0.5 * u_target.shape[-3] * weight)
