"""Numerical safety at the edges, dtypes, batch dims, autograd and (when present) CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from gmfm import AnalyticGMDenoiser, GaussianMixture, IsoGaussian, ProbabilisticGuidance, gmflow_sample, probabilistic_guidance
from gmfm.math import (
    convert_denoising_gm,
    convert_denoising_gm_mean,
    euler_step,
    forward_transition,
    gm_log_prob,
    gm_mean,
    gm_mul_iso_gaussian,
    gm_nll,
    gm_sample,
    gm_temperature,
    gm_to_iso_gaussian,
    reverse_transition,
    sde_step,
    u_to_x0,
    x0_to_u,
)

DTYPES = [torch.float32, torch.float64]


def random_gm(b=2, k=4, c=3, h=2, w=2, dtype=torch.float64, logstd=-0.5, logit_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture.from_logits(
        torch.randn(b, k, c, h, w, generator=g, dtype=dtype),
        torch.randn(b, k, 1, h, w, generator=g, dtype=dtype) * logit_scale,
        torch.full((b, 1, 1, 1, 1), logstd, dtype=dtype),
    )


def all_outputs(gm: GaussianMixture, x: torch.Tensor, sigma_hi: float, sigma_lo: float) -> dict[str, torch.Tensor]:
    """Every op of the library on one GM at one pair of noise levels."""
    g = torch.Generator().manual_seed(1)
    iso = gm_to_iso_gaussian(gm)
    surrogate = IsoGaussian(iso.mean, iso.var.mean(dim=(-2, -1), keepdim=True))
    guided = probabilistic_guidance(gm, random_gm(*gm.means.shape, dtype=gm.dtype, seed=3).to(gm.device), 0.5).gm
    x0_gm = u_to_x0(gm, x, sigma_hi)
    out = {
        "mean": gm_mean(gm),
        "iso.mean": iso.mean,
        "iso.var": iso.var,
        "log_prob": gm_log_prob(gm, x),
        "nll": gm_nll(gm, x),
        "mul": gm_mul_iso_gaussian(gm, surrogate, 1.0, 1.0).means,
        "sample": gm_sample(gm, g),
        "temperature": gm_temperature(gm, 0.5).means,
        "x0.means": x0_gm.means,
        "x0.logstds": x0_gm.logstds,
        "u.means": x0_to_u(x0_gm, x, sigma_hi).means,
        "reverse.means": reverse_transition(gm, x, sigma_hi, sigma_lo).means,
        "reverse.logstds": reverse_transition(gm, x, sigma_hi, sigma_lo).logstds,
        "convert.means": convert_denoising_gm(x0_gm, x, sigma_hi, x * 0.9, sigma_lo).means,
        "convert.logweights": convert_denoising_gm(x0_gm, x, sigma_hi, x * 0.9, sigma_lo).logweights.exp(),
        "convert_mean": convert_denoising_gm_mean(x0_gm, x, sigma_hi, x * 0.9, sigma_lo),
        "sde": sde_step(gm_mean(x0_gm), x, sigma_hi, sigma_lo, torch.randn_like(x)),
        "euler": euler_step(gm_mean(x0_gm), x, sigma_hi, sigma_lo),
        "forward": forward_transition(x, sigma_lo, sigma_hi, torch.randn_like(x)),
        "guided.means": guided.means,
        "guided.logweights": guided.logweights.exp(),
    }
    return out


def assert_no_nan(outputs: dict[str, torch.Tensor], allow_neg_inf: tuple[str, ...] = ()) -> None:
    for name, value in outputs.items():
        assert not torch.isnan(value).any(), f"{name} has NaN"
        if name not in allow_neg_inf:
            assert torch.isfinite(value).all(), f"{name} is not finite"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sigma_hi, sigma_lo", [(1.0, 0.0), (1.0, 0.999), (1e-6, 0.0), (0.5, 0.5), (1.0, 1.0)])
def test_noise_level_edges_are_finite(dtype, sigma_hi, sigma_lo):
    gm = random_gm(dtype=dtype)
    x = torch.randn(2, 3, 2, 2, dtype=dtype)
    out = all_outputs(gm, x, sigma_hi, sigma_lo)
    assert_no_nan(out)
    for value in out.values():
        assert value.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case",
    ["tiny_std", "huge_std", "k1", "k256", "extreme_logits", "dead_components"],
)
def test_parameter_edges_are_finite(dtype, case):
    kw = dict(dtype=dtype)
    if case == "tiny_std":
        kw.update(logstd=-30.0)
    elif case == "huge_std":
        kw.update(logstd=8.0)
    elif case == "k1":
        kw.update(k=1)
    elif case == "k256":
        kw.update(k=256)
    elif case == "extreme_logits":
        kw.update(logit_scale=1e4)
    gm = random_gm(**kw)
    if case == "dead_components":
        dead = torch.zeros_like(gm.logweights, dtype=torch.bool)
        dead[:, 1:] = True
        gm = GaussianMixture.from_logits(gm.means, gm.logweights.masked_fill(dead, -math.inf), gm.logstds)
    x = torch.randn(2, 3, 2, 2, dtype=dtype) * 3
    # a far-away x under a vanishing std has log-density -inf in float32, never NaN
    assert_no_nan(all_outputs(gm, x, 0.7, 0.3), allow_neg_inf=("log_prob",))


def test_tiny_std_nll_is_clamped_not_infinite():
    gm = random_gm(logstd=-30.0, dtype=torch.float32)
    nll = gm_nll(gm, gm.means[:, 0] + 1.0)
    assert torch.isfinite(nll).all() and (nll > 0).all()


def test_any_number_of_batch_dimensions():
    gm = random_gm(b=6)
    shaped = gm.map(lambda t: t.reshape(2, 3, *t.shape[1:]))
    x = torch.randn(6, 3, 2, 2, dtype=torch.float64)
    sigma = torch.linspace(0.2, 0.9, 6, dtype=torch.float64)
    flat = u_to_x0(gm, x, sigma)
    nested = u_to_x0(shaped, x.reshape(2, 3, 3, 2, 2), sigma.reshape(2, 3))
    torch.testing.assert_close(nested.means.reshape(flat.means.shape), flat.means)
    torch.testing.assert_close(gm_mean(shaped).reshape(6, 3, 2, 2), gm_mean(gm))
    torch.testing.assert_close(gm_nll(shaped, x.reshape(2, 3, 3, 2, 2)).reshape(6, 2, 2), gm_nll(gm, x))
    sample = gm_sample(shaped, torch.Generator().manual_seed(0))
    assert sample.shape == (2, 3, 3, 2, 2)
    trans = reverse_transition(shaped, x.reshape(2, 3, 3, 2, 2), 0.8, 0.4)
    torch.testing.assert_close(trans.means.reshape(6, 4, 3, 2, 2), reverse_transition(gm, x, 0.8, 0.4).means)
    assert GaussianMixture.cat([gm[:2], gm[2:]]).means.shape == gm.means.shape


def test_shared_logstds_broadcast_over_batch():
    gm = random_gm(b=3)
    shared = GaussianMixture(gm.means, gm.logweights, gm.logstds[:1])
    torch.testing.assert_close(gm_to_iso_gaussian(shared).var, gm_to_iso_gaussian(gm).var)


def test_gradients_through_nll_and_transitions():
    gm = random_gm(b=1, k=2, c=2, h=1, w=2)
    means = gm.means.clone().requires_grad_()
    logits = gm.logweights.clone().requires_grad_()
    logstds = gm.logstds.clone().requires_grad_()
    x_low = torch.randn(1, 2, 1, 2, dtype=torch.float64)
    x_high = torch.randn(1, 2, 1, 2, dtype=torch.float64)

    def transition_nll(m, lw, ls):
        u_gm = GaussianMixture.from_logits(m, lw, ls)
        return gm_nll(reverse_transition(u_gm, x_high, 0.7, 0.3), x_low).sum()

    assert torch.autograd.gradcheck(transition_nll, (means, logits, logstds))

    def converted_mean(m, lw, ls):
        x0_gm = GaussianMixture.from_logits(m, lw, ls)
        return convert_denoising_gm_mean(x0_gm, x_high, 0.7, x_low, 0.3).sum()

    assert torch.autograd.gradcheck(converted_mean, (means, logits, logstds))


def test_float32_and_float64_samplers_agree():
    g = torch.Generator().manual_seed(0)
    oracle = AnalyticGMDenoiser(torch.randn(2, 4, 3, 4, 4, generator=g, dtype=torch.float64),
                                torch.randn(2, 4, 1, 4, 4, generator=g, dtype=torch.float64), -1.5)
    noise = torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64)
    kw = dict(steps=6, order=2, substeps=4, shift=2.0, condition=torch.tensor([0, 1, 0, 1]),
              uncond_condition=torch.tensor([1, 0, 1, 0]), guidance=ProbabilisticGuidance(0.3))
    x64 = gmflow_sample(oracle, noise, **kw).sample
    x32 = gmflow_sample(oracle.float(), noise.float(), **kw).sample
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), x64, atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    oracle = AnalyticGMDenoiser(torch.randn(2, 8, 4, 8, 8, generator=g), torch.randn(2, 8, 1, 8, 8, generator=g), -1.0)
    noise = torch.randn(4, 4, 8, 8, generator=g)
    cond, uncond = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0])
    for method in ("ode", "sde"):
        outs = []
        for device in ("cpu", "cuda"):
            outs.append(gmflow_sample(
                oracle.to(device), noise.to(device), 4, method=method, order=2, substeps=2,
                condition=cond.to(device), uncond_condition=uncond.to(device), guidance=ProbabilisticGuidance(0.4),
                generator=torch.Generator().manual_seed(1),  # a CPU generator drives CUDA sampling too
            ).sample.cpu())
        torch.testing.assert_close(outs[1], outs[0], atol=2e-4, rtol=0)
    gm = random_gm(dtype=torch.float32).to("cuda")
    x = torch.randn(2, 3, 2, 2, device="cuda")
    assert_no_nan(all_outputs(gm, x, 0.8, 0.2))
