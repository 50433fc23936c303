"""The guidance contract: values, when the unconditional pass runs, and a new guidance plugged in."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from gmfm import AnalyticGMDenoiser, GaussianMixture, gmflow_sample
from gmfm.experiments import make_guidance
from gmfm.guidance import (
    ClassifierFreeGuidance,
    Guidance,
    GuidedGM,
    ProbabilisticGuidance,
    cfg_gm,
    pixel_averaged_gaussian,
    probabilistic_guidance,
)
from gmfm.math import gm_mean
from gmfm.solvers import flow_sample, mean_velocity, sample_with


def oracle() -> AnalyticGMDenoiser:
    g = torch.Generator().manual_seed(0)
    return AnalyticGMDenoiser(torch.randn(2, 3, 2, 2, 2, generator=g, dtype=torch.float64),
                              torch.randn(2, 3, 1, 2, 2, generator=g, dtype=torch.float64), math.log(0.3))


class CountingDenoiser(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.batches = inner, []

    def forward(self, x, sigma, condition=None):
        self.batches.append(x.shape[0])
        return self.inner(x, sigma, condition)


def test_values_validate_and_say_when_the_unconditional_pass_runs():
    assert not ProbabilisticGuidance(0.0).needs_uncond and ProbabilisticGuidance(0.3).needs_uncond
    assert not ClassifierFreeGuidance(1.0).needs_uncond and ClassifierFreeGuidance(2.5).needs_uncond
    with pytest.raises(ValueError, match=r"guidance_scale must be in \[0, 1\)"):
        ProbabilisticGuidance(1.0)
    with pytest.raises(ValueError, match=r"guidance_scale must be in \[0, 1\)"):
        ProbabilisticGuidance(-0.2)
    with pytest.raises(ValueError, match=r"orthogonal_guidance must be in \[0, 1\]"):
        ProbabilisticGuidance(0.3, 1.5)
    with pytest.raises(ValueError, match="per_pixel_variance must be a bool"):
        ProbabilisticGuidance(0.3, per_pixel_variance="yes")
    with pytest.raises(ValueError, match=r"cfg_scale must be in \[0, inf\]"):
        ClassifierFreeGuidance(-1.0)
    with pytest.raises(ValueError, match="either guidance_scale .* or cfg_scale"):
        make_guidance(0.3, cfg_scale=2.0)
    assert make_guidance() is None and make_guidance(cfg_scale=1.0) is None
    assert make_guidance(0.2, 0.5) == ProbabilisticGuidance(0.2, 0.5)


@pytest.mark.parametrize("guidance", [None, ProbabilisticGuidance(0.0), ClassifierFreeGuidance(1.0)])
def test_neutral_guidance_runs_one_plain_batch(guidance):
    counting = CountingDenoiser(oracle())
    noise = torch.randn(4, 2, 2, 2, dtype=torch.float64)
    out = gmflow_sample(counting, noise, 3, order=2, condition=torch.zeros(4, dtype=torch.long), guidance=guidance)
    assert counting.batches == [4, 4, 4]
    plain = gmflow_sample(oracle(), noise, 3, order=2, condition=torch.zeros(4, dtype=torch.long)).sample
    assert torch.equal(out.sample, plain)


def test_active_guidance_doubles_the_batch_once_per_step():
    counting = CountingDenoiser(oracle())
    noise = torch.randn(4, 2, 2, 2, dtype=torch.float64)
    gmflow_sample(counting, noise, 3, condition=torch.zeros(4, dtype=torch.long),
                  uncond_condition=torch.ones(4, dtype=torch.long), guidance=ProbabilisticGuidance(0.4))
    assert counting.batches == [8, 8, 8]


def test_probabilistic_guidance_value_is_the_function():
    den = oracle()
    x, sigma = torch.randn(3, 2, 2, 2, dtype=torch.float64), torch.full((3,), 0.6, dtype=torch.float64)
    cond = den.x0_posterior(x, sigma, torch.zeros(3, dtype=torch.long))
    uncond = den.x0_posterior(x, sigma, torch.ones(3, dtype=torch.long))
    guided = ProbabilisticGuidance(0.4, 0.5).guide_gm(cond, uncond)
    direct = probabilistic_guidance(cond, uncond, 0.4, 0.5)
    assert torch.equal(guided.gm.means, direct.gm.means) and guided.base is cond
    assert guided.damping_scale == 0.4 and guided.bias is not None
    torch.testing.assert_close(guided.mean, gm_mean(guided.gm))


def test_cfg_value_shifts_the_gm_and_the_velocity():
    den = oracle()
    x, sigma = torch.randn(3, 2, 2, 2, dtype=torch.float64), torch.full((3,), 0.6, dtype=torch.float64)
    cond = den.x0_posterior(x, sigma, torch.zeros(3, dtype=torch.long))
    uncond = den.x0_posterior(x, sigma, torch.ones(3, dtype=torch.long))
    guided = ClassifierFreeGuidance(2.0).guide_gm(cond, uncond)
    assert torch.equal(guided.gm.means, cfg_gm(cond, uncond, 2.0).means) and guided.bias is None
    assert guided.base is guided.gm and guided.damping_scale == 0.0
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(ClassifierFreeGuidance(2.0).guide_prediction(a, b), b + 2.0 * (a - b))


def test_unguided_value_is_its_own_surrogate():
    gm = oracle().x0_posterior(torch.randn(2, 2, 2, 2, dtype=torch.float64), 0.5, torch.zeros(2, dtype=torch.long))
    value = GuidedGM.unguided(gm)
    assert value.gm is gm and value.base is gm and value.bias is None and value.target is None
    torch.testing.assert_close(value.mean, gm_mean(gm))
    torch.testing.assert_close(value.surrogate.var, pixel_averaged_gaussian(gm).var)
    assert value.avg_var.shape == (2, 1, 1, 1)


@dataclass(frozen=True)
class MeanShiftGuidance(Guidance):
    """A new guidance in a few lines: move every component by ``scale`` times the cond - uncond mean gap
    (the same as CFG with scale + 1), to show that adding a method needs no solver change."""

    scale: float

    @property
    def needs_uncond(self) -> bool:
        return self.scale != 0

    def guide_gm(self, cond: GaussianMixture, uncond: GaussianMixture) -> GuidedGM:
        shift = self.scale * (gm_mean(cond) - gm_mean(uncond))
        return GuidedGM.unguided(GaussianMixture(cond.means + shift.unsqueeze(-4), cond.logweights, cond.logstds))


@pytest.mark.parametrize("solver", ["gmsde", "gmsde2", "gmode", "gmode2"])
def test_a_new_guidance_plugs_into_every_gm_solver(solver):
    den = oracle()
    noise = torch.randn(6, 2, 2, 2, dtype=torch.float64)
    kw = dict(condition=torch.zeros(6, dtype=torch.long), uncond_condition=torch.ones(6, dtype=torch.long))
    ours = sample_with(solver, den, noise, 3, guidance=MeanShiftGuidance(1.5), substeps=2,
                       generator=torch.Generator().manual_seed(0), **kw)
    cfg = sample_with(solver, den, noise, 3, guidance=ClassifierFreeGuidance(2.5), substeps=2,
                      generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(ours, cfg)


def test_gm_only_guidance_is_refused_by_flow_solvers():
    noise = torch.randn(2, 2, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="MeanShiftGuidance guides Gaussian mixtures only"):
        flow_sample(mean_velocity(oracle()), noise, 2, condition=torch.zeros(2, dtype=torch.long),
                    uncond_condition=torch.ones(2, dtype=torch.long), guidance=MeanShiftGuidance(1.0))


def test_per_pixel_variance_moves_each_pixel_mean_by_the_bias():
    # One channel, three far-apart components per pixel: the pixels' own variances differ from their average.
    g = torch.Generator().manual_seed(3)
    cond = GaussianMixture.from_logits(3.0 * torch.randn(2, 3, 1, 4, 4, generator=g, dtype=torch.float64),
                                       2.0 * torch.randn(2, 3, 1, 4, 4, generator=g, dtype=torch.float64),
                                       torch.full((2, 1, 1, 1, 1), math.log(0.2), dtype=torch.float64))
    uncond = GaussianMixture.from_logits(torch.randn(2, 3, 1, 4, 4, generator=g, dtype=torch.float64),
                                         torch.zeros(2, 3, 1, 4, 4, dtype=torch.float64), cond.logstds)
    w = 1e-3
    paper = probabilistic_guidance(cond, uncond, w)
    shaped = ProbabilisticGuidance(w, per_pixel_variance=True).guide_gm(cond, uncond)
    assert torch.equal(shaped.gm.logstds, paper.gm.logstds)  # one shared std, as the container requires
    design, scale = paper.bias, paper.bias.abs().max()
    # First order in w: the error is 1.3% of the largest bias at w = 1e-3 (7.7% at 1e-2; below 1e-4 the
    # factor's huge variance v (1 - w^2) / w^2 costs float64 digits).
    moved = gm_mean(shaped.gm) - gm_mean(cond)
    assert (moved - design).abs().max() <= 0.05 * scale
    # The paper's PG moves each pixel in proportion to its own variance instead: 3.9 times the largest bias off.
    paper_moved = gm_mean(paper.gm) - gm_mean(cond)
    assert (paper_moved - design).abs().max() >= 1.0 * scale


def test_per_pixel_variance_is_the_paper_pg_with_one_component():
    den = AnalyticGMDenoiser(torch.randn(2, 1, 2, 3, 3, dtype=torch.float64),
                             torch.zeros(2, 1, 1, 3, 3, dtype=torch.float64), math.log(0.3))
    x, sigma = torch.randn(3, 2, 3, 3, dtype=torch.float64), torch.full((3,), 0.6, dtype=torch.float64)
    cond = den.x0_posterior(x, sigma, torch.zeros(3, dtype=torch.long))
    uncond = den.x0_posterior(x, sigma, torch.ones(3, dtype=torch.long))
    for w in (0.1, 0.6):
        paper = probabilistic_guidance(cond, uncond, w)
        shaped = probabilistic_guidance(cond, uncond, w, per_pixel_variance=True)
        torch.testing.assert_close(shaped.bias, paper.bias)
        torch.testing.assert_close(shaped.gm.means, paper.gm.means)
