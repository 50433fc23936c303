"""Spectral sampling: the KR map, the 1-D inverse CDF, spectral noise and the spectral loss."""

from __future__ import annotations

import math

import pytest
import torch

from gmfm import GaussianMixture
from gmfm.math import gm_sample
from gmfm.math.spectral import (
    gaussian_to_gm_kr,
    gm1d_cdf_pdf,
    gm1d_inverse_cdf,
    gm_to_gaussian_kr,
    spectral_coefficients,
    spectral_gm_sample,
    spectral_loss,
    spectral_noise,
)
from stats import ks_pvalue


def random_gm(b=2, k=4, c=3, h=4, w=4, logstd=-1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture.from_logits(torch.randn(b, k, c, h, w, generator=g, dtype=dtype) * 2,
                                       torch.randn(b, k, 1, h, w, generator=g, dtype=dtype),
                                       torch.full((b, 1, 1, 1, 1), logstd, dtype=dtype))


def test_inverse_cdf_solves_the_cdf_even_for_hard_mixtures():
    means = torch.tensor([[-50.0, 0.0, 0.001, 80.0]], dtype=torch.float64).reshape(1, 4, 1, 1).expand(7, 4, 1, 1)
    logw = torch.log_softmax(torch.tensor([0.0, -30.0, 2.0, 1.0], dtype=torch.float64), 0).reshape(1, 4, 1, 1)
    logw = logw.expand(7, 4, 1, 1)
    logstd = torch.full((7, 1, 1, 1), math.log(1e-3), dtype=torch.float64)
    u = torch.tensor([1e-6, 0.01, 0.3, 0.5, 0.7, 0.99, 1 - 1e-6], dtype=torch.float64).reshape(7, 1, 1)
    x = gm1d_inverse_cdf(means, logstd, logw, u, steps=100)
    cdf, _ = gm1d_cdf_pdf(means, logstd, logw, x)
    torch.testing.assert_close(cdf, u, atol=1e-7, rtol=0)


def test_kr_map_round_trips():
    gm = random_gm()
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = gaussian_to_gm_kr(gm, z)
    torch.testing.assert_close(gm_to_gaussian_kr(gm, x), z, atol=1e-6, rtol=0)
    x2 = gm_sample(gm, torch.Generator().manual_seed(2))
    torch.testing.assert_close(gaussian_to_gm_kr(gm, gm_to_gaussian_kr(gm, x2)), x2, atol=1e-6, rtol=0)


def test_white_spectral_noise_is_standard_normal_and_inverts_the_coefficients():
    s = spectral_noise(torch.zeros(4000, 2, 8, 8, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert abs(float(s.var()) - 1) < 0.02
    corr = float((s[..., 1:] * s[..., :-1]).mean())
    assert abs(corr) < 0.02
    x = torch.randn(3, 2, 8, 6, dtype=torch.float64)
    # spectral_noise is built as the inverse of spectral_coefficients (an orthonormal real transform)
    assert torch.allclose(spectral_coefficients(x).square().sum(), x.square().sum())


def spectrum_case(n, seed=0):
    gm1 = random_gm(b=1, k=3, c=2, h=6, w=6, logstd=-0.7, seed=seed)
    gm = gm1.map(lambda t: t.expand(n, *t.shape[1:]))
    g = torch.Generator().manual_seed(seed + 1)
    raw = torch.randn(1, 2, 6, 6, generator=g, dtype=torch.float64) * 1.5
    log_power = (torch.log_softmax(raw.flatten(-2), -1) + math.log(36)).reshape(1, 2, 6, 6).expand(n, 2, 6, 6)
    return gm, log_power, g


def test_spectral_samples_keep_the_per_pixel_marginals():
    gm, log_power, g = spectrum_case(4000)
    x = spectral_gm_sample(gm, log_power, g)
    direct = gm_sample(gm, g)
    pvalues = [ks_pvalue(x[:, c, i, j], direct[:, c, i, j]) for c in range(2) for i, j in ((0, 0), (2, 3), (5, 1))]
    assert min(pvalues) * len(pvalues) > 1e-3


def test_whitened_spectral_samples_have_the_predicted_power_spectrum():
    gm, log_power, g = spectrum_case(6000, seed=3)
    z = spectral_coefficients(gm_to_gaussian_kr(gm, spectral_gm_sample(gm, log_power, g)))
    empirical = z.square().mean(0)
    expected = log_power[0].exp()
    # each frequency's power is a mean of 6000 squared normals: relative error ~ sqrt(2 / 6000) = 1.8%
    assert float(((empirical - expected) / expected).abs().max()) < 0.1
    assert float(((empirical - expected) / expected).abs().mean()) < 0.03


def test_spectral_loss_is_minimised_by_the_true_spectrum():
    gm, log_power, g = spectrum_case(3000, seed=5)
    u = spectral_gm_sample(gm, log_power, g)
    true = spectral_loss(gm, u, log_power)
    flat = spectral_loss(gm, u, torch.zeros_like(log_power))
    assert true < flat
    learned = torch.zeros_like(log_power, requires_grad=True)
    spectral_loss(gm, u, learned).backward()
    assert learned.grad is not None and bool(torch.isfinite(learned.grad).all())


def test_spectral_inputs_are_checked():
    gm = random_gm()
    with pytest.raises(ValueError, match=r"noise must have trailing shape \(3, 4, 4\)"):
        gaussian_to_gm_kr(gm, torch.randn(2, 3, 4, 5, dtype=torch.float64))
