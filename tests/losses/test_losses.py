"""Time samplers, label dropout, the GMFlow transition loss (with M draws) and the flow-matching loss."""

from __future__ import annotations

import math

import pytest
import torch

from gmfm import AnalyticGMDenoiser, GaussianMixture
from gmfm.data import as_images, make_toy_dataset
from gmfm.losses import FlowMatchingLoss, GMFlowLoss, TimeSampler, drop_labels
from gmfm.math import forward_diffusion, forward_transition, gm_mean, gm_nll, reverse_transition, u_to_x0
from gmfm.math.random import BatchDraws
from gmfm.models import GMFlowMLP2D


def test_time_samplers():
    g = torch.Generator().manual_seed(0)
    u = TimeSampler()(100_000, g)
    assert float(u.min()) > 0 and float(u.max()) <= 1 and abs(float(u.mean()) - 0.5) < 0.01
    ln = TimeSampler("logit_normal", mean=0.0, std=1.0)(100_000, g)
    logit = torch.log(ln / (1 - ln))
    assert abs(float(logit.mean())) < 0.02 and abs(float(logit.std()) - 1) < 0.02
    shifted = TimeSampler(shift=3.0)(100_000, torch.Generator().manual_seed(1))
    plain = TimeSampler()(100_000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(shifted, 3 * plain / (1 + 2 * plain))
    with pytest.raises(ValueError, match="kind must be"):
        TimeSampler("beta")


def test_label_dropout_rate_and_reproducibility():
    labels = torch.zeros(100_000, dtype=torch.long)
    dropped = drop_labels(labels, 0.1, 7, torch.Generator().manual_seed(0))
    assert abs(float((dropped == 7).double().mean()) - 0.1) < 0.005
    assert torch.equal(dropped, drop_labels(labels, 0.1, 7, torch.Generator().manual_seed(0)))
    assert drop_labels(labels, 0.0, 7, None) is labels


class Recorder(torch.nn.Module):
    """Wraps a denoiser and keeps its last inputs."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, sigma, labels=None):
        self.seen = (x, sigma, labels)
        return self.inner(x, sigma, labels)


def test_transition_loss_is_the_nll_of_the_reverse_transition():
    model = Recorder(GMFlowMLP2D(num_components=4, hidden_dim=32, num_layers=2))
    x0 = as_images(make_toy_dataset("checkerboard").sample(64, torch.Generator().manual_seed(0)))
    loss = GMFlowLoss(transition_ratio=0.5, weight=2.0)(model, {"x0": x0}, torch.Generator().manual_seed(1))
    # rebuild the same draws: noise level, then the noise of x_low, then that of x_high
    draws = BatchDraws(torch.Generator().manual_seed(1), 64)
    sigma_high = TimeSampler()(draws).clamp(min=1e-7)
    sigma_low = torch.minimum(sigma_high * 0.5, sigma_high - 1e-7)
    noise_low, noise_high = draws.randn((2, 1, 1), x0), draws.randn((2, 1, 1), x0)
    x_low = forward_diffusion(x0, sigma_low, noise_low)
    x_high = forward_transition(x_low, sigma_low, sigma_high, noise_high)
    torch.testing.assert_close(model.seen[0], x_high)
    gm = model.inner(x_high, sigma_high)
    expected = gm_nll(reverse_transition(gm, x_high, sigma_high, sigma_low), x_low).mean() * 2.0
    torch.testing.assert_close(loss.loss, expected)
    loss.loss.backward()  # differentiable
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_ratio_one_is_the_gm_nll_of_x0():
    model = Recorder(GMFlowMLP2D(num_components=4, hidden_dim=32, num_layers=2))
    x0 = as_images(make_toy_dataset("rings").sample(64, torch.Generator().manual_seed(0)))
    loss = GMFlowLoss(transition_ratio=1.0)(model, {"x0": x0}, torch.Generator().manual_seed(2)).loss
    x_high, sigma, _ = model.seen
    x0_gm = u_to_x0(model.inner(x_high, sigma), x_high, sigma)
    # the reverse transition to sigma = 0 is the x0-GM, its variance floored at 1e-6 (official clamp)
    floored = GaussianMixture(x0_gm.means, x0_gm.logweights, 0.5 * torch.logaddexp(2 * x0_gm.logstds,
                                                                                 torch.tensor(math.log(1e-6))))
    torch.testing.assert_close(loss, gm_nll(floored, x0).mean(), rtol=1e-5, atol=1e-5)


def test_exact_denoiser_has_a_lower_transition_loss_than_a_perturbed_one():
    ring = make_toy_dataset("gaussian_ring")
    means, logweights, logstd = ring.gm_parameters()
    exact = AnalyticGMDenoiser(means.float(), logweights.float(), logstd)
    wrong = AnalyticGMDenoiser(means.float() * 1.1, logweights.float(), logstd)
    batch = {"x0": as_images(ring.sample(50_000, torch.Generator().manual_seed(0)))}
    loss = GMFlowLoss(transition_ratio=0.9)
    assert loss(exact, batch, torch.Generator().manual_seed(1)).loss < loss(wrong, batch, torch.Generator().manual_seed(1)).loss


def test_flow_matching_loss_is_the_l2_to_noise_minus_data():
    model = Recorder(GMFlowMLP2D(num_components=1, hidden_dim=32, num_layers=2))
    x0 = torch.randn(32, 2, 1, 1)
    out = FlowMatchingLoss(weight=3.0)(model, {"x0": x0}, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    sigma = TimeSampler()(32, g)
    noise = torch.randn(32, 2, 1, 1, generator=g)
    x_t, s, _ = model.seen
    torch.testing.assert_close(x_t, forward_diffusion(x0, sigma, noise))
    expected = (gm_mean(model.inner(x_t, s)) - (noise - x0)).square().mean() * 3.0
    torch.testing.assert_close(out.loss, expected)


def test_gmflow_loss_rejects_a_non_gm_model_and_bad_settings():
    with pytest.raises(ValueError, match="returns a GaussianMixture"):
        GMFlowLoss()(lambda x, s, c: x, {"x0": torch.randn(4, 2, 1, 1)}, None)
    with pytest.raises(ValueError, match=r"transition_ratio must be in \(0, 1\]"):
        GMFlowLoss(transition_ratio=0.0)


def _ring_batch(n: int = 256, seed: int = 0) -> dict:
    return {"x0": as_images(make_toy_dataset("gaussian_ring").sample(n, torch.Generator().manual_seed(seed)))}


def test_multi_draw_loss_averages_the_nll_of_bridge_draws():
    model = Recorder(GMFlowMLP2D(num_components=4, hidden_dim=32, num_layers=2))
    x0 = _ring_batch(32)["x0"]
    out = GMFlowLoss(transition_ratio=0.5, transition_draws=3)(model, {"x0": x0}, torch.Generator().manual_seed(4))
    draws = BatchDraws(torch.Generator().manual_seed(4), 32)
    sigma_high = TimeSampler()(draws).clamp(min=1e-7)
    sigma_low = torch.minimum(sigma_high * 0.5, sigma_high - 1e-7)
    x_low = forward_diffusion(x0, sigma_low, draws.randn((2, 1, 1), x0))
    x_high = forward_transition(x_low, sigma_low, sigma_high, draws.randn((2, 1, 1), x0))
    extra = draws.randn((2, 2, 1, 1), x0)
    trans = reverse_transition(model.inner(x_high, sigma_high), x_high, sigma_high, sigma_low)
    # the bridge p(x_low | x0, x_high) = N(c1 x_high + c2 x0, c3): the GM-SDE step of x0
    from gmfm.math import sde_step

    lows = [x_low] + [sde_step(x0, x_high, sigma_high, sigma_low, extra[:, m]) for m in range(2)]
    expected = torch.stack([gm_nll(trans, x) for x in lows]).mean(0).mean()
    torch.testing.assert_close(out.loss, expected)


def test_one_draw_is_the_official_loss_and_more_draws_keep_its_expectation():
    torch.manual_seed(0)
    model = GMFlowMLP2D(num_components=4, hidden_dim=32, num_layers=2)
    batch = _ring_batch()
    one, many = GMFlowLoss(transition_ratio=0.5), GMFlowLoss(transition_ratio=0.5, transition_draws=64)
    assert one == GMFlowLoss(transition_ratio=0.5, transition_draws=1)
    with torch.no_grad():
        diffs = torch.tensor([float(one(model, batch, torch.Generator().manual_seed(s)).loss)
                              - float(many(model, batch, torch.Generator().manual_seed(s)).loss) for s in range(100)])
    # paired over the same (sigma, x_high): the mean difference is zero within its Monte Carlo error
    assert abs(float(diffs.mean())) < 4 * float(diffs.std()) / math.sqrt(len(diffs))
    assert float(diffs.std()) > 0  # the draws do differ


def test_more_draws_lower_the_gradient_variance():
    torch.manual_seed(0)
    model = GMFlowMLP2D(num_components=4, hidden_dim=32, num_layers=2)
    batch = _ring_batch(64)

    def gradient_variance(draws: int) -> float:
        # a fixed noise level (sigma ~ 0.88), so that the bridge is a visible share of the randomness
        loss = GMFlowLoss(transition_ratio=0.5, transition_draws=draws, time_sampler=TimeSampler("logit_normal", 2.0, 1e-3))
        grads = []
        for s in range(60):
            model.zero_grad()
            loss(model, batch, torch.Generator().manual_seed(s)).loss.backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        return float(torch.stack(grads).var(dim=0).sum())

    assert gradient_variance(8) < 0.8 * gradient_variance(1)  # measured: 3.34 vs 4.58
    with pytest.raises(ValueError, match="transition_draws must be an integer >= 1"):
        GMFlowLoss(transition_draws=0)
