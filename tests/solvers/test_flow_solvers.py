"""Baseline flow solvers: exact velocities reproduce the data; contracts shared with the GM solvers."""

from __future__ import annotations

import pytest
import torch

from gmfm import AnalyticGMDenoiser, ClassifierFreeGuidance, ProbabilisticGuidance
from gmfm.data import make_toy_dataset
from gmfm.metrics import noise_floor, total_variation
from gmfm.solvers import FLOW_SOLVERS, SOLVER_NAMES, default_substeps, flow_sample, mean_velocity, sample_with

RING = make_toy_dataset("gaussian_ring")


def exact_velocity():
    means, logweights, logstd = RING.gm_parameters()
    return mean_velocity(AnalyticGMDenoiser(means, logweights, logstd))


@pytest.mark.parametrize("solver", FLOW_SOLVERS)
def test_exact_velocity_reproduces_the_data_at_high_nfe(solver):
    n = 20_000
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 2, 1, 1, generator=g, dtype=torch.float64)
    x = flow_sample(exact_velocity(), noise, 48, solver=solver, generator=g).sample
    tv = total_variation(x.reshape(-1, 2), RING)
    assert tv < noise_floor(RING, n).tv + 0.03, tv


def test_few_steps_are_worse_than_many():
    noise = torch.randn(20_000, 2, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    coarse = flow_sample(exact_velocity(), noise, 2, solver="euler").sample
    fine = flow_sample(exact_velocity(), noise, 48, solver="euler").sample
    assert total_variation(coarse.reshape(-1, 2), RING) > total_variation(fine.reshape(-1, 2), RING) + 0.2


@pytest.mark.parametrize("solver", ["ddpm_small", "ddpm_large", "dpmpp2m_sde"])
def test_stochastic_solvers_follow_the_generator(solver):
    noise = torch.randn(64, 2, 1, 1, dtype=torch.float64)

    def run(seed):
        return flow_sample(exact_velocity(), noise, 4, solver=solver,
                           generator=torch.Generator().manual_seed(seed)).sample

    assert torch.equal(run(3), run(3)) and not torch.allclose(run(3), run(4))


def test_cfg_on_the_velocity():
    means, logweights, logstd = make_toy_dataset("ring_classes").gm_parameters()
    velocity = mean_velocity(AnalyticGMDenoiser(means, logweights, logstd))
    noise = torch.randn(8, 2, 1, 1, dtype=torch.float64)
    cond, uncond = torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)
    plain = flow_sample(velocity, noise, 3, condition=cond).sample
    assert torch.equal(plain, flow_sample(velocity, noise, 3, condition=cond, uncond_condition=uncond,
                                          guidance=ClassifierFreeGuidance(1.0)).sample)
    # one Euler step from sigma = 1 lands on the x0 prediction: the CFG-extrapolated data mean
    out = flow_sample(velocity, noise, 1, condition=cond, uncond_condition=uncond,
                      guidance=ClassifierFreeGuidance(2.0)).sample
    mean_c, mean_u = means[0].mean(0).flatten(), means[1].mean(0).flatten()
    torch.testing.assert_close(out.reshape(8, 2), (mean_u + 2.0 * (mean_c - mean_u)).expand(8, 2))


def test_named_solvers_and_validation():
    means, logweights, logstd = RING.gm_parameters()
    oracle = AnalyticGMDenoiser(means, logweights, logstd)
    noise = torch.randn(16, 2, 1, 1, dtype=torch.float64)
    for name in SOLVER_NAMES:
        x = sample_with(name, oracle, noise, 2, generator=torch.Generator().manual_seed(0))
        assert x.shape == noise.shape and bool(torch.isfinite(x).all()), name
    assert default_substeps(1) == 128 and default_substeps(3) == 43 and default_substeps(256) == 1
    with pytest.raises(ValueError, match="solver must be one of"):
        sample_with("heun", oracle, noise, 2)
    with pytest.raises(ValueError, match="ProbabilisticGuidance guides Gaussian mixtures only: use a GM solver"):
        sample_with("euler", oracle, noise, 2, guidance=ProbabilisticGuidance(0.3), uncond_condition=torch.zeros(16))
    with pytest.raises(ValueError, match="solver must be one of"):
        flow_sample(mean_velocity(oracle), noise, 2, solver="gmsde")
    with pytest.raises(ValueError, match="uncond_condition is required"):
        flow_sample(mean_velocity(oracle), noise, 2, guidance=ClassifierFreeGuidance(3.0))
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        flow_sample(mean_velocity(oracle), noise, 0)
