"""Numerics at small scales: data with a tiny spread, half-precision inputs, near-identical points.

The official code floors variance-like denominators at an absolute 1e-6; below a variance of ~1e-4 that
shrank samples towards 0. gmfm's floors follow the operands' scale (see gmfm.math.variance_floor).
"""

from __future__ import annotations

import math

import pytest
import torch

from gmfm import AnalyticGMDenoiser, GaussianMixture, IsoGaussian, ProbabilisticGuidance, gmflow_sample
from gmfm.guidance import reweight_towards
from gmfm.math import convert_denoising_gm_mean, gm_mean, gm_mul_iso_gaussian, iso_gaussian_mul_iso_gaussian
from gmfm.solvers import sample_with

MEANS = torch.tensor([[[2.0, 1.0], [-1.0, 0.5], [0.5, -2.0], [-2.0, -1.5]],
                      [[1.0, 1.0], [-1.5, -1.0], [1.5, -1.0], [0.0, 2.0]]]).reshape(2, 4, 2, 1, 1)


@pytest.mark.parametrize("std", [1e-2, 1e-3, 1e-4])
@pytest.mark.parametrize("solver", ["gmsde", "gmsde2", "gmode", "gmode2"])
@pytest.mark.parametrize("w", [0.0, 0.5])
def test_exact_denoiser_lands_on_data_with_a_tiny_spread(std, solver, w):
    """Class 0 is 4 points with std ``std``; every sample must end within 5 std of one of them (guidance
    only reweights the components, so it must too)."""
    n = 2000
    oracle = AnalyticGMDenoiser(MEANS, torch.zeros(2, 4, 1, 1, 1), math.log(std))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 2, 1, 1, generator=g)
    x = sample_with(solver, oracle, noise, 8, condition=torch.zeros(n, dtype=torch.long),
                    uncond_condition=torch.ones(n, dtype=torch.long),
                    guidance=ProbabilisticGuidance(w) if w else None, generator=g)
    assert x.dtype == torch.float32
    distance = (x.reshape(n, 1, 2) - MEANS[0].reshape(1, 4, 2)).norm(dim=-1).min(dim=1).values
    assert int((distance > 5 * std * math.sqrt(2)).sum()) == 0, float(distance.max())


def test_identity_reweighting_keeps_a_tiny_gaussian():
    """target = surrogate: the reweighting is the identity, at any scale (the probe: mean [2, 1] with std
    1e-3 came back as [1.0, 0.5])."""
    for std in (1.0, 1e-3, 1e-5):
        gm = GaussianMixture(torch.tensor([2.0, 1.0]).reshape(1, 1, 2, 1, 1), torch.zeros(1, 1, 1, 1, 1),
                             torch.full((1, 1, 1, 1, 1), math.log(std)))
        gaussian = IsoGaussian(torch.tensor([2.0, 1.0]).reshape(1, 2, 1, 1), torch.full((1, 1, 1, 1), std**2))
        out = reweight_towards(gm, gaussian, gaussian)
        torch.testing.assert_close(out.means, gm.means)
        torch.testing.assert_close(out.logstds, gm.logstds, atol=1e-5, rtol=0)


def test_ratio_of_gaussians_at_any_scale():
    for scale in (1.0, 1e-4, 1e-8):
        g1 = IsoGaussian(torch.tensor([[[[0.3]]]]), torch.tensor([[[[0.5 * scale]]]]))
        g2 = IsoGaussian(torch.tensor([[[[0.1]]]]), torch.tensor([[[[1.0 * scale]]]]))
        out = iso_gaussian_mul_iso_gaussian(g1, g2, 1.0, -1.0)
        # precision 1/v1 - 1/v2 = 1 / scale; mean = v (m1/v1 - m2/v2) = 0.6 - 0.1
        torch.testing.assert_close(out.var, torch.tensor([[[[scale]]]]))
        torch.testing.assert_close(out.mean, torch.tensor([[[[0.5]]]]))


def test_converting_to_the_same_point_is_the_identity_in_float32():
    g = torch.Generator().manual_seed(0)
    gm = GaussianMixture.from_logits(torch.randn(4, 3, 2, 4, 4, generator=g), torch.randn(4, 3, 1, 4, 4, generator=g),
                                     torch.full((4, 1, 1, 1, 1), -3.0))
    x = torch.randn(4, 2, 4, 4, generator=g)
    for sigma in (1e-3, torch.full((4,), 1e-3), 0.5):
        torch.testing.assert_close(convert_denoising_gm_mean(gm, x, sigma, x, sigma), gm_mean(gm))
    # and converting to a nearby point agrees with float64
    near, s_near = x + 1e-4, 0.999e-3
    ours = convert_denoising_gm_mean(gm, x, 1e-3, near, s_near)
    exact = convert_denoising_gm_mean(gm.to(torch.float64), x.double(), 1e-3, near.double(), s_near)
    torch.testing.assert_close(ours.double(), exact, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    g = torch.Generator().manual_seed(1)
    oracle = AnalyticGMDenoiser(torch.randn(2, 4, 3, 4, 4, generator=g, dtype=torch.float64),
                                torch.randn(2, 4, 1, 4, 4, generator=g, dtype=torch.float64), -1.5)
    noise = torch.randn(4, 3, 4, 4, generator=g).to(dtype)  # values exactly representable in both
    kw = dict(method="ode", order=2, substeps=4, condition=torch.tensor([0, 1, 0, 1]),
              uncond_condition=torch.tensor([1, 0, 1, 0]), guidance=ProbabilisticGuidance(0.3))
    single = oracle.float()
    half_noise = gmflow_sample(single, noise, 6, **kw).sample
    assert half_noise.dtype == torch.float32
    torch.testing.assert_close(half_noise, gmflow_sample(single, noise.float(), 6, **kw).sample, atol=0, rtol=0)

    def half_network(x, sigma, condition):  # a network that returns its GM in half precision
        return single(x, sigma, condition).to(dtype)

    out = gmflow_sample(half_network, noise, 6, **kw).sample
    exact = gmflow_sample(oracle, noise.double(), 6, **kw).sample
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    # only the rounding of the network's outputs remains (the probe: up to 2 with bfloat16 before)
    assert float((out.double() - exact).abs().max()) < (0.05 if dtype == torch.bfloat16 else 0.01)


def test_half_precision_products_are_computed_in_float32():
    g = torch.Generator().manual_seed(2)
    gm = GaussianMixture.from_logits(torch.randn(2, 3, 2, 2, 2, generator=g), torch.randn(2, 3, 1, 2, 2, generator=g),
                                     torch.full((2, 1, 1, 1, 1), -4.0))
    gaussian = IsoGaussian(torch.randn(2, 2, 2, 2, generator=g), torch.full((2, 1, 1, 1), 1e-5))
    half = gm_mul_iso_gaussian(gm.to(torch.float16), IsoGaussian(gaussian.mean.half(), gaussian.var.half()))
    single = gm_mul_iso_gaussian(gm.to(torch.float16).to(torch.float32),
                                 IsoGaussian(gaussian.mean.half().float(), gaussian.var.half().float()))
    assert half.dtype == torch.float16 and bool(torch.isfinite(half.means).all())
    torch.testing.assert_close(half.means.float(), single.means, atol=2e-3, rtol=1e-3)
