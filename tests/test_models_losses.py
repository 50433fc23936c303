"""The GM head, the 2-D MLP, the time samplers and the training losses."""

from __future__ import annotations

import math

import pytest
import torch

from gmfm import AnalyticGMDenoiser, GaussianMixture
from gmfm.data import as_images, make_toy_dataset
from gmfm.losses import FlowMatchingLoss, GMFlowLoss, TimeSampler, drop_labels
from gmfm.math import forward_diffusion, forward_transition, gm_mean, gm_nll, reverse_transition, u_to_x0
from gmfm.models import GMFlowMLP2D, GMOutputHead, position_embedding, timestep_embedding


def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.5, 500.0, 999.0])
    ours = timestep_embedding(t, 256)
    theirs = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=1)
    torch.testing.assert_close(ours, theirs)


def test_position_embedding_layout():
    p = torch.tensor([[0.5, -1.0]])
    emb = position_embedding(p, 8, 1e-3, 10.0)
    periods = torch.logspace(math.log(1e-3), math.log(10.0), 2, base=math.e)
    x_part = torch.cat([torch.sin(0.5 * 2 * math.pi / periods), torch.cos(0.5 * 2 * math.pi / periods)])
    torch.testing.assert_close(emb[0, :4], x_part)
    with pytest.raises(ValueError, match="divisible"):
        position_embedding(p, 6)


@pytest.mark.parametrize("logstd", ["embedding", "features", -1.5])
def test_gm_head_shapes_and_initial_state(logstd):
    head = GMOutputHead(16, 3, 4, logstd=logstd, embed_dim=8)
    feats, emb = torch.randn(2, 16, 5, 6), torch.randn(2, 8, requires_grad=True)
    gm = head(feats, emb)
    assert gm.means.shape == (2, 4, 3, 5, 6) and gm.logweights.shape == (2, 4, 1, 5, 6)
    torch.testing.assert_close(gm.logweights.exp(), torch.full_like(gm.logweights, 0.25))  # zero-init logits
    expected = -1.5 if logstd == -1.5 else 0.0
    torch.testing.assert_close(gm.logstds, torch.full((2, 1, 1, 1, 1), expected))
    if logstd == "embedding":  # the log-std MLP sees a stop-gradient embedding (paper Fig. 4)
        gm.logstds.sum().backward()
        assert emb.grad is None
    assert head(torch.randn(2, 16), emb).means.shape == (2, 4, 3, 1, 1)


def test_mlp2d_outputs_a_gm_and_validates_inputs():
    model = GMFlowMLP2D(num_components=8, hidden_dim=32, num_layers=2, num_classes=3)
    gm = model(torch.randn(5, 2, 1, 1), torch.rand(5), torch.tensor([0, 1, 2, 3, 0]))
    assert isinstance(gm, GaussianMixture) and gm.means.shape == (5, 8, 2, 1, 1)
    with pytest.raises(ValueError, match="labels are required"):
        model(torch.randn(5, 2, 1, 1), torch.rand(5))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        model(torch.randn(2, 2, 1, 1), torch.rand(2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 2, 1, 1\)"):
        model(torch.randn(5, 3, 1, 1), torch.rand(5), torch.zeros(5, dtype=torch.long))
    fm = GMFlowMLP2D(num_components=1, hidden_dim=32, num_layers=2)
    assert fm(torch.randn(3, 2, 1, 1), 0.5).means.shape == (3, 1, 2, 1, 1)


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
    # rebuild the same draws
    g = torch.Generator().manual_seed(1)
    sigma_high = TimeSampler()(64, g).clamp(min=1e-7)
    sigma_low = torch.minimum(sigma_high * 0.5, sigma_high - 1e-7)
    noise = torch.randn(128, 2, 1, 1, generator=g)
    x_low = forward_diffusion(x0, sigma_low, noise[:64])
    x_high = forward_transition(x_low, sigma_low, sigma_high, noise[64:])
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
