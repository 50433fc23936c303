"""Bad input gets a ValueError whose message names the argument and what was expected."""

from __future__ import annotations

import math

import pytest
import torch

from gmfm import AnalyticGMDenoiser, GaussianMixture, IsoGaussian, ProbabilisticGuidance, gmflow_sample, probabilistic_guidance
from gmfm.guidance import cfg_gm
from gmfm.math import (
    convert_denoising_gm_mean,
    euler_step,
    forward_transition,
    gm_log_prob,
    gm_mul_iso_gaussian,
    gm_nll,
    gm_temperature,
    reverse_transition,
    sde_step,
    u_to_x0,
)
from gmfm.solvers import flow_sigmas


def make_gm(b=2, k=3, c=2, h=2, w=2, dtype=torch.float32) -> GaussianMixture:
    return GaussianMixture(
        torch.randn(b, k, c, h, w, dtype=dtype),
        torch.log_softmax(torch.randn(b, k, 1, h, w, dtype=dtype), 1),
        torch.zeros(b, 1, 1, 1, 1, dtype=dtype),
    )


def oracle() -> AnalyticGMDenoiser:
    return AnalyticGMDenoiser(torch.randn(2, 3, 2, 2, 2), torch.zeros(2, 3, 1, 2, 2), -1.0)


X = torch.randn(2, 2, 2, 2)
NOISE = torch.randn(2, 2, 2, 2)
LABELS = torch.tensor([0, 1])


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: GaussianMixture(torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4), torch.zeros(2, 1, 1, 1, 1)),
         r"GaussianMixture\.logweights must have shape \(\.\.\., K, 1, H, W\)"),
        (lambda: GaussianMixture(torch.randn(2, 3, 2, 4, 4), torch.randn(2, 4, 1, 4, 4), torch.zeros(2, 1, 1, 1, 1)),
         r"GaussianMixture\.logweights"),
        (lambda: GaussianMixture(torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 1, 4, 4), torch.zeros(2, 1, 1, 4, 4)),
         r"GaussianMixture\.logstds must have shape \(\.\.\., 1, 1, 1, 1\)"),
        (lambda: GaussianMixture(torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 1, 4, 4), torch.zeros(3, 1, 1, 1, 1)),
         r"GaussianMixture\.logstds has batch shape"),
        (lambda: GaussianMixture(torch.randn(3, 2, 4), torch.randn(3, 1, 4), torch.zeros(1, 1, 1)),
         r"GaussianMixture\.means must have at least 4 dimensions"),
        (lambda: GaussianMixture(torch.ones(2, 3, 2, 4, 4, dtype=torch.long), torch.zeros(2, 3, 1, 4, 4),
                                 torch.zeros(2, 1, 1, 1, 1)), r"GaussianMixture\.means must have a floating dtype"),
        (lambda: GaussianMixture(torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 1, 4, 4).double(),
                                 torch.zeros(2, 1, 1, 1, 1)), r"GaussianMixture\.logweights has dtype"),
        (lambda: GaussianMixture(torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 1, 4, 4), 0.0),
         r"GaussianMixture\.logstds must be a torch\.Tensor"),
        (lambda: IsoGaussian(torch.randn(2, 3, 4, 4), torch.ones(2, 3, 4, 4)), r"IsoGaussian\.var must have shape"),
    ],
)
def test_container_validation(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: u_to_x0(make_gm(), X, 1.5), r"sigma must be in \[0, 1\]"),
        (lambda: u_to_x0(make_gm(), X, -0.1), r"sigma must be in \[0, 1\]"),
        (lambda: u_to_x0(make_gm(), X, torch.tensor([0.5, math.nan])), r"sigma must be in \[0, 1\]"),
        (lambda: u_to_x0(make_gm(), X, torch.tensor([0.5, 0.2, 0.1])), r"sigma has batch shape \(3,\)"),
        (lambda: u_to_x0(make_gm(), torch.randn(2, 3, 2, 2), 0.5), r"x_t must have trailing shape \(2, 2, 2\)"),
        (lambda: sde_step(X, X, 0.5, 1.2, NOISE), r"sigma_to must be in \[0, 1\]"),
        (lambda: sde_step(X, X, 0.3, 0.5, NOISE), r"sigma_low must be <= sigma_high"),
        (lambda: euler_step(torch.randn(2, 3, 2, 2), X, 0.5, 0.2), r"x0 must have trailing shape"),
        (lambda: reverse_transition(make_gm(), X, 0.5, 0.2, "eps"), r"prediction_type must be 'u' or 'x0'"),
        (lambda: reverse_transition(make_gm(), X, math.inf, 0.2), r"sigma_high must be a finite number"),
        (lambda: forward_transition(X, 0.6, 0.3, NOISE), r"sigma_high must be >= sigma_low"),
        (lambda: convert_denoising_gm_mean(make_gm(), X, 0.5, X, 2.0), r"sigma_tgt must be in \[0, 1\]"),
        (lambda: gm_nll(make_gm(), torch.randn(2, 2, 3, 3)), r"target must have trailing shape \(2, 2, 2\)"),
        (lambda: gm_log_prob(make_gm(), torch.randn(5, 2, 2, 2)), r"x has batch shape \(5,\)"),
        (lambda: gm_mul_iso_gaussian(make_gm(), IsoGaussian(X, torch.ones(2, 1, 2, 2))), r"gaussian\.var must be one"),
        (lambda: gm_temperature(make_gm(), 0.0), r"temperature must be in \(0, inf\]"),
        (lambda: probabilistic_guidance(make_gm(), make_gm(), 1.0), r"guidance_scale must be in \[0, 1\)"),
        (lambda: probabilistic_guidance(make_gm(), make_gm(), -0.2), r"guidance_scale must be in \[0, 1\)"),
        (lambda: probabilistic_guidance(make_gm(), make_gm(), 0.3, orthogonal=2.0), r"orthogonal must be in"),
        (lambda: probabilistic_guidance(make_gm(), make_gm(k=4), 0.3), r"uncond must have the same shape"),
        (lambda: cfg_gm(make_gm(), make_gm(), math.nan), r"scale must be a finite number"),
        (lambda: flow_sigmas(0), r"num_steps must be an integer >= 1"),
        (lambda: flow_sigmas(4, shift=0.0), r"shift must be in \(0, inf\]"),
    ],
)
def test_op_arguments_are_validated(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=0), r"steps must be an integer >= 1"),
        (dict(steps=2.5), r"steps must be an integer >= 1"),
        (dict(substeps=0), r"substeps must be an integer >= 1"),
        (dict(order=3), r"order must be 1 or 2"),
        (dict(method="heun"), r"method must be 'sde' or 'ode'"),
        (dict(guidance=ProbabilisticGuidance(0.3)), r"uncond_condition is required"),
        (dict(guidance=0.3, uncond_condition=LABELS), r"guidance must be a gmfm.guidance.Guidance"),
        (dict(shift=-1.0), r"shift must be in \(0, inf\]"),
        (dict(noise=torch.full((2, 2, 2, 2), math.nan)), r"noise contains non-finite values"),
        (dict(noise=torch.randn(2, 2, 2)), r"noise must have shape \(B, C, H, W\) or \(B, D\)"),
        (dict(noise=torch.randn(1, 2, 2, 2, 2)), r"noise must have shape \(B, C, H, W\) or \(B, D\)"),
        (dict(noise=torch.randn(4)), r"noise must have at least 2 dimensions"),
        (dict(condition=torch.tensor([0, 5])), r"condition holds class ids outside \[0, 2\)"),
    ],
)
def test_sampler_arguments_are_validated(kwargs, match):
    args = dict(noise=NOISE, steps=2, condition=LABELS)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        gmflow_sample(oracle(), args.pop("noise"), args.pop("steps"), **args)


def test_sampler_rejects_a_denoiser_that_returns_nan_or_the_wrong_shape():
    def nan_denoiser(x, sigma, condition):
        gm = make_gm(b=x.shape[0])
        return GaussianMixture(gm.means * math.nan, gm.logweights, gm.logstds)

    with pytest.raises(ValueError, match=r"denoiser output at step 0 \(sigma=1\)\.means contains non-finite"):
        gmflow_sample(nan_denoiser, NOISE, 2)
    with pytest.raises(ValueError, match=r"the denoiser returned a GM with means \(3, 3, 2, 2, 2\)"):
        gmflow_sample(lambda x, s, c: make_gm(b=3), NOISE, 2)
    with pytest.raises(ValueError, match=r"the denoiser must return a GaussianMixture, got Tensor"):
        gmflow_sample(lambda x, s, c: x, NOISE, 2)


# ----- the API probes of the reliability review: each names the argument --------------------------------
def test_condition_with_another_batch_size_is_named():
    with pytest.raises(ValueError, match=r"condition must have one row per sample: shape \(2, \.\.\.\), got \(3,\)"):
        gmflow_sample(oracle(), NOISE, 2, condition=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=r"uncond_condition must have one row per sample"):
        gmflow_sample(oracle(), NOISE, 2, condition=LABELS, uncond_condition=torch.tensor([1]),
                      guidance=ProbabilisticGuidance(0.3))


def test_float_labels_are_refused_not_truncated():
    from gmfm.losses import GMFlowLoss
    from gmfm.models import GMFlowMLP2D

    with pytest.raises(ValueError, match="condition must be an integer tensor of class ids"):
        gmflow_sample(oracle(), NOISE, 2, condition=torch.tensor([0.7, 1.0]))
    mlp = GMFlowMLP2D(num_components=2, hidden_dim=8, num_layers=1, num_classes=3)
    with pytest.raises(ValueError, match=r"labels must hold integer class ids, got dtype torch.float32"):
        mlp(torch.randn(2, 2, 1, 1), torch.rand(2), torch.tensor([0.7, 1.0]))
    with pytest.raises(ValueError, match=r"batch\['labels'\] must be an integer tensor"):
        GMFlowLoss()(mlp, {"x0": torch.randn(2, 2, 1, 1), "labels": torch.tensor([0.7, 1.0])})
    with pytest.raises(ValueError, match=r"batch\['labels'\] must have shape \(2,\) to match x0"):
        GMFlowLoss()(mlp, {"x0": torch.randn(2, 2, 1, 1), "labels": torch.tensor([0, 1, 2])})


def test_mixed_dtypes_name_the_sample_not_the_weights():
    gm = make_gm()
    with pytest.raises(ValueError, match=r"x_t has dtype torch.float64 but the distribution is torch.float32"):
        u_to_x0(gm, torch.randn(2, 2, 2, 2, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match=r"target has dtype torch.float64 but the distribution is torch.float32"):
        gm_nll(gm, torch.randn(2, 2, 2, 2, dtype=torch.float64))


def test_numpy_scalars_are_numbers():
    import numpy as np

    gm, x = make_gm(), torch.randn(2, 2, 2, 2)
    torch.testing.assert_close(u_to_x0(gm, x, np.float32(0.5)).means, u_to_x0(gm, x, 0.5).means)
    assert len(flow_sigmas(np.int64(4))) == 5
    assert probabilistic_guidance(gm, make_gm(), np.float64(0.3)).gm.means.shape == gm.means.shape


def test_a_mixture_needs_a_component_and_weights_are_normalised():
    with pytest.raises(ValueError, match=r"K >= 1 components"):
        GaussianMixture(torch.zeros(2, 0, 2, 1, 1), torch.zeros(2, 0, 1, 1, 1), torch.zeros(2, 1, 1, 1, 1))
    means, logits = torch.randn(2, 3, 2, 1, 1), torch.randn(2, 3, 1, 1, 1) + 5.0  # unnormalised
    x = torch.randn(2, 2, 1, 1)
    raw = GaussianMixture(means, logits, torch.zeros(2, 1, 1, 1, 1))
    torch.testing.assert_close(raw.logweights.logsumexp(dim=1), torch.zeros(2, 1, 1, 1))
    torch.testing.assert_close(gm_log_prob(raw, x), gm_log_prob(GaussianMixture.from_logits(means, logits, raw.logstds), x))


def test_points_without_image_dimensions():
    from gmfm.solvers import flow_sample, mean_velocity

    den = AnalyticGMDenoiser(torch.randn(3, 2, 1, 1), torch.zeros(3, 1, 1, 1), -1.0)
    noise = torch.randn(5, 2)
    out = gmflow_sample(den, noise, 2, method="sde", generator=torch.Generator().manual_seed(0)).sample
    assert out.shape == (5, 2)
    torch.testing.assert_close(out, gmflow_sample(den, noise[:, :, None, None], 2, method="sde",
                                                  generator=torch.Generator().manual_seed(0)).sample.flatten(1))
    assert flow_sample(mean_velocity(den), noise, 2).sample.shape == (5, 2)


def test_the_oracle_checks_the_batch_of_its_condition():
    den = AnalyticGMDenoiser(torch.randn(2, 3, 2, 1, 1), torch.zeros(2, 3, 1, 1, 1), -1.0)
    with pytest.raises(ValueError, match=r"condition must have shape \(4,\), got \(1,\)"):
        den(torch.randn(4, 2, 1, 1), 0.5, torch.tensor([1]))
    with pytest.raises(ValueError, match=r"condition must have shape \(5,\)"):
        den.sample_data(5, torch.tensor([0, 1]))


def test_batch_draws_take_open_slices_and_refuse_strided_ones():
    from gmfm.math.random import BatchDraws

    like = torch.empty(())
    whole = BatchDraws(torch.Generator().manual_seed(0), 6).randn((), like)
    tail = BatchDraws(torch.Generator().manual_seed(0), 6, slice(4, None)).randn((), like)
    assert torch.equal(whole[4:], tail)
    with pytest.raises(ValueError, match="rows must be a contiguous slice"):
        BatchDraws(None, 6, slice(0, 6, 2))
    with pytest.raises(ValueError, match=r"must lie in \[0, 6\]"):
        BatchDraws(None, 6, slice(2, 9))
