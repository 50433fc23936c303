"""Property tests of the GM algebra (hypothesis draws shapes, K, powers, noise levels and seeds)."""

from __future__ import annotations

import math

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gmfm import AnalyticGMDenoiser, GaussianMixture, IsoGaussian, probabilistic_guidance
from gmfm.math import (
    convert_denoising_gm,
    convert_denoising_gm_mean,
    euler_step,
    forward_diffusion,
    forward_transition,
    gm_log_prob,
    gm_mean,
    gm_mul_iso_gaussian,
    gm_nll,
    gm_sample,
    gm_temperature,
    gm_to_iso_gaussian,
    iso_gaussian_mul_iso_gaussian,
    reverse_transition,
    sde_step,
    u_to_x0,
    x0_to_u,
)

PROPERTY = settings(max_examples=40, deadline=None)
sigmas = st.floats(0.02, 0.98)


@st.composite
def gms(draw, k=None, batch=None):
    """A random GM in float64: (B, K, C, H, W) with moderate values."""
    shape = (
        batch or draw(st.integers(1, 3)),
        k or draw(st.integers(1, 5)),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 3)),
    )
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    means = torch.randn(shape, generator=g, dtype=torch.float64) * draw(st.floats(0.1, 3.0))
    logits = torch.randn(shape[0], shape[1], 1, *shape[3:], generator=g, dtype=torch.float64) * 2
    logstds = torch.empty(shape[0], 1, 1, 1, 1, dtype=torch.float64).uniform_(-2, 0.5, generator=g)
    return GaussianMixture.from_logits(means, logits, logstds)


def randn_like_event(gm: GaussianMixture, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*gm.batch_shape, *gm.event_shape, generator=g, dtype=gm.dtype)


def assert_gm_close(a: GaussianMixture, b: GaussianMixture, atol=1e-9):
    torch.testing.assert_close(a.means, b.means, rtol=1e-7, atol=atol)
    torch.testing.assert_close(a.logweights.exp(), b.logweights.exp(), rtol=1e-7, atol=atol)
    torch.testing.assert_close(a.logstds.expand_as(b.logstds), b.logstds, rtol=1e-7, atol=atol)


# ----- K = 1 reduces to Gaussian formulas ----------------------------------------------------------------
@PROPERTY
@given(gms(k=1), st.integers(0, 1000))
def test_single_component_is_a_gaussian(gm, seed):
    x = randn_like_event(gm, seed)
    mu, s = gm.means[:, 0], gm.logstds.exp()[:, 0]
    expected = torch.distributions.Normal(mu, s).log_prob(x).sum(dim=-3)
    torch.testing.assert_close(gm_log_prob(gm, x), expected)
    c = gm.event_shape[0]
    torch.testing.assert_close(gm_nll(gm, x), -expected - 0.5 * c * math.log(2 * math.pi))
    iso = gm_to_iso_gaussian(gm)
    torch.testing.assert_close(iso.mean, mu)
    torch.testing.assert_close(iso.var, s.square().expand_as(iso.var))


@PROPERTY
@given(gms(k=1), st.integers(0, 1000), st.floats(0.2, 3.0), st.sampled_from([1.0, -0.5, 2.0]))
def test_single_component_product_matches_gaussian_product(gm, seed, g_var, power):
    g = IsoGaussian(randn_like_event(gm, seed), torch.full((gm.batch_shape[0], 1, 1, 1), g_var, dtype=gm.dtype))
    as_gaussian = IsoGaussian(gm.means[:, 0], gm.logstds.exp().square()[:, 0])
    if bool(((as_gaussian.var * power + g_var) <= 0.05).any()):
        return  # a negative power larger than the GM's precision has no normalisable product
    expected = iso_gaussian_mul_iso_gaussian(as_gaussian, g, 1.0, power)
    product = gm_mul_iso_gaussian(gm, g, 1.0, power)
    torch.testing.assert_close(product.means[:, 0], expected.mean)
    torch.testing.assert_close(product.logstds.exp().square()[:, 0], expected.var)
    torch.testing.assert_close(product.logweights, torch.zeros_like(product.logweights))


# ----- products ------------------------------------------------------------------------------------------
@PROPERTY
@given(gms(), st.integers(0, 1000), st.floats(0.5, 4.0), st.floats(0.1, 1.0))
def test_multiplying_by_a_gaussian_then_by_its_inverse_power_returns_the_gm(gm, seed, g_var, power):
    g = IsoGaussian(randn_like_event(gm, seed), torch.full((gm.batch_shape[0], 1, 1, 1), g_var, dtype=gm.dtype))
    back = gm_mul_iso_gaussian(gm_mul_iso_gaussian(gm, g, 1.0, power), g, 1.0, -power)
    assert_gm_close(back, gm, atol=1e-8)


@PROPERTY
@given(gms(), st.integers(0, 1000))
def test_gaussian_product_with_inverse_is_identity(gm, seed):
    g1 = gm_to_iso_gaussian(gm)
    g2 = IsoGaussian(randn_like_event(gm, seed), g1.var * 2.0)
    back = iso_gaussian_mul_iso_gaussian(iso_gaussian_mul_iso_gaussian(g1, g2, 1, 1), g2, 1, -1)
    torch.testing.assert_close(back.mean, g1.mean)
    torch.testing.assert_close(back.var, g1.var)


# ----- guidance ------------------------------------------------------------------------------------------
@PROPERTY
@given(gms(batch=2), st.integers(0, 1000), st.floats(0.0, 1.0))
def test_guidance_with_zero_scale_returns_the_conditional_gm(gm, seed, orthogonal):
    uncond = GaussianMixture(gm.means + randn_like_event(gm, seed).unsqueeze(1), gm.logweights, gm.logstds)
    out = probabilistic_guidance(gm, uncond, 0.0, orthogonal)
    assert_gm_close(out.gm, gm, atol=0)


@PROPERTY
@given(gms(k=1, batch=2), st.integers(0, 1000), st.floats(0.01, 0.95), st.sampled_from([0.0, 0.5, 1.0]))
def test_probabilistic_guidance_keeps_the_conditional_total_variance(gm, seed, w, orthogonal):
    """E|x0 - mu_c|^2 (averaged over elements) is the same under the guided GM as under cond.

    Exact for a Gaussian conditional (K = 1), where the reweighting reaches its target exactly. With a
    bias parallel to mu_c and full orthogonal projection nothing is left to shift by, and only the
    variance shrinks (official behaviour), so that degenerate case is excluded."""
    uncond = GaussianMixture(gm.means + randn_like_event(gm, seed).unsqueeze(1), gm.logweights, gm.logstds)
    mu_c = gm_mean(gm)
    raw = mu_c - gm_mean(uncond)
    parallel = (raw * mu_c).mean(dim=(1, 2, 3), keepdim=True) / mu_c.square().mean(dim=(1, 2, 3), keepdim=True)
    assume(bool(((raw - orthogonal * parallel * mu_c).square().mean(dim=(1, 2, 3)) > 1e-4).all()))
    out = probabilistic_guidance(gm, uncond, w, orthogonal)

    def total_var(x: GaussianMixture) -> torch.Tensor:
        weights = x.logweights.exp()
        second = ((x.means - mu_c.unsqueeze(1)).square().mean(2, keepdim=True) + (2 * x.logstds).exp())
        return (weights * second).sum(1).mean(dim=(-3, -2, -1))

    torch.testing.assert_close(total_var(out.gm), total_var(gm))
    # and its mean moved by exactly the bias, of power w^2 * avg_var
    torch.testing.assert_close(gm_mean(out.gm) - mu_c, out.bias)
    torch.testing.assert_close(out.bias.square().mean(dim=(-3, -2, -1)), w * w * out.avg_var.flatten())


# ----- diffusion and transitions --------------------------------------------------------------------------
@PROPERTY
@given(st.integers(0, 1000), sigmas, sigmas)
def test_transition_after_diffusion_is_direct_diffusion(seed, a, b):
    lo, hi = min(a, b), max(a, b)
    g = torch.Generator().manual_seed(seed)
    x0, n1, n2 = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    x_high = forward_transition(forward_diffusion(x0, lo, n1), lo, hi, n2)
    # the same point by direct diffusion with the combined noise, which is standard normal
    ratio = (1 - hi) / (1 - lo)
    c1, c2 = ratio * lo, math.sqrt(max(hi * hi - (ratio * lo) ** 2, 0.0))
    assert math.isclose(c1 * c1 + c2 * c2, hi * hi, rel_tol=1e-12, abs_tol=1e-15)
    combined = (c1 * n1 + c2 * n2) / hi
    torch.testing.assert_close(x_high, forward_diffusion(x0, hi, combined))


@PROPERTY
@given(gms(), st.integers(0, 1000), sigmas, sigmas)
def test_reverse_transition_of_u_and_x0_gms_agree(gm, seed, a, b):
    lo, hi = min(a, b), max(a, b)
    assume(hi - lo > 1e-3)  # at sigma_low = sigma_high the x0 term vanishes and only eps clamps remain
    x = randn_like_event(gm, seed)
    via_u = reverse_transition(gm, x, hi, lo, "u")
    via_x0 = reverse_transition(u_to_x0(gm, x, hi), x, hi, lo, "x0")
    assert_gm_close(via_u, via_x0)


@PROPERTY
@given(gms(), st.integers(0, 1000), sigmas)
def test_u_x0_round_trip(gm, seed, sigma):
    x = randn_like_event(gm, seed)
    assert_gm_close(x0_to_u(u_to_x0(gm, x, sigma), x, sigma), gm)


@PROPERTY
@given(st.integers(0, 1000), sigmas, sigmas)
def test_point_mass_reverse_transition_is_the_sde_step_and_euler_is_exact_on_straight_paths(seed, a, b):
    lo, hi = min(a, b), max(a, b)
    g = torch.Generator().manual_seed(seed)
    x0, eps = (torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    x_hi = forward_diffusion(x0, hi, eps)
    point = GaussianMixture(x0.unsqueeze(1), torch.zeros(2, 1, 1, 2, 2, dtype=torch.float64),
                            torch.full((2, 1, 1, 1, 1), -40.0, dtype=torch.float64))
    trans = reverse_transition(point, x_hi, hi, lo, "x0")
    torch.testing.assert_close(trans.means[:, 0], sde_step(x0, x_hi, hi, lo, torch.zeros_like(x0)))
    # Euler with the true x0 stays on the straight line x_t = (1 - t) x0 + t eps
    torch.testing.assert_close(euler_step(x0, x_hi, hi, lo), forward_diffusion(x0, lo, eps))


# ----- re-conditioning an x0-GM on another (x, sigma) ------------------------------------------------------
@PROPERTY
@given(st.integers(0, 1000), sigmas, sigmas, st.integers(1, 4))
def test_converting_the_exact_posterior_gives_the_exact_posterior(seed, a, b, k):
    g = torch.Generator().manual_seed(seed)
    oracle = AnalyticGMDenoiser(torch.randn(1, k, 2, 2, 2, generator=g, dtype=torch.float64),
                                torch.randn(1, k, 1, 2, 2, generator=g, dtype=torch.float64), -1.0)
    tgt, src = min(a, b), max(a, b)
    x_src, x_tgt = (torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    post_src = oracle.x0_posterior(x_src, src)
    converted = convert_denoising_gm(post_src, x_src, src, x_tgt, tgt)
    assert_gm_close(converted, oracle.x0_posterior(x_tgt, tgt), atol=1e-8)
    torch.testing.assert_close(convert_denoising_gm_mean(post_src, x_src, src, x_tgt, tgt), gm_mean(converted))


@PROPERTY
@given(gms(), st.integers(0, 1000), sigmas)
def test_converting_to_the_same_point_is_identity(gm, seed, sigma):
    x = randn_like_event(gm, seed)
    assert_gm_close(convert_denoising_gm(gm, x, sigma, x, sigma), gm)


# ----- sampling and temperature ----------------------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(gms(batch=1), st.integers(0, 1000))
def test_samples_have_the_gm_moments(gm, seed):
    n = 20_000
    big = gm.map(lambda t: t.expand(n, *t.shape[1:]))
    x = gm_sample(big, torch.Generator().manual_seed(seed))
    w = gm.logweights.exp()[0]
    mean = (w * gm.means[0]).sum(0)
    var = (w * gm.means[0].square()).sum(0) - mean.square() + (2 * gm.logstds[0, 0]).exp()
    assert torch.all((x.mean(0) - mean).abs() < 5 * (var / n).sqrt() + 1e-12)
    # standard error of the sample variance from the empirical 4th central moment (mixtures have heavy tails)
    fourth = (x - x.mean(0)).pow(4).mean(0)
    var_se = ((fourth - x.var(0).square()).clamp(min=0) / n).sqrt()
    assert torch.all((x.var(0) - var).abs() < 5 * var_se + 1e-9)


def test_zero_weight_components_are_never_sampled_and_generator_controls_draws():
    means = torch.tensor([0.0, 100.0, 200.0]).reshape(1, 3, 1, 1, 1).expand(5000, 3, 1, 1, 1)
    logw = torch.log(torch.tensor([0.5, 0.0, 0.5])).reshape(1, 3, 1, 1, 1).expand(5000, 3, 1, 1, 1)
    gm = GaussianMixture(means, logw, torch.full((5000, 1, 1, 1, 1), -10.0))
    x = gm_sample(gm, torch.Generator().manual_seed(0))
    assert not bool(((x > 50) & (x < 150)).any())
    assert 0.45 < float((x > 150).double().mean()) < 0.55
    assert torch.equal(x, gm_sample(gm, torch.Generator().manual_seed(0)))
    assert not torch.equal(x, gm_sample(gm, torch.Generator().manual_seed(1)))


@PROPERTY
@given(gms(), st.floats(0.2, 5.0))
def test_temperature(gm, t):
    hot = gm_temperature(gm, t)
    torch.testing.assert_close((2 * hot.logstds).exp(), (2 * gm.logstds).exp() * t)
    torch.testing.assert_close(hot.logweights, torch.log_softmax(gm.logweights / t, dim=1))
    assert_gm_close(gm_temperature(gm, 1.0), gm)


def test_repr_is_short_and_names_shapes_dtype_and_device():
    gm = GaussianMixture(torch.zeros(2, 3, 1, 64, 64), torch.zeros(2, 3, 1, 64, 64), torch.zeros(2, 1, 1, 1, 1))
    text = repr(gm)
    assert text == "GaussianMixture(batch_shape=(2,), K=3, event_shape=(1, 64, 64), dtype=torch.float32, device=cpu)"
    gaussian = IsoGaussian(torch.zeros(2, 1, 64, 64), torch.ones(2, 1, 1, 1))
    assert len(repr(gaussian)) < 200 and "tensor(" not in repr(gaussian)
