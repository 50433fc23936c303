"""Embeddings, the GM output head and the 2-D MLP."""

from __future__ import annotations

import math

import pytest
import torch

from gmfm import GaussianMixture
from gmfm.models import Denoiser, GMFlowMLP2D, GMOutputHead, null_label, position_embedding, timestep_embedding


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


@pytest.mark.parametrize("logstd", ["embedding", "features", "constant"])
def test_gm_head_splits_the_raw_channels(logstd):
    head = GMOutputHead(4, 3, logstd, embed_dim=8, logstd_inner_dim=16, constant_logstd=-1.5)
    head.zero_init_()
    raw = torch.randn(2, head.raw_channels, 5, 6)
    emb = torch.randn(2, 8, requires_grad=True)
    gm = head(raw, emb)
    assert head.raw_channels == 4 * (3 + 1) + (logstd == "features")
    assert gm.means.shape == (2, 4, 3, 5, 6) and gm.logweights.shape == (2, 4, 1, 5, 6)
    torch.testing.assert_close(gm.means, raw[:, :12].reshape(2, 4, 3, 5, 6))  # component-major means
    torch.testing.assert_close(gm.logweights, torch.log_softmax(raw[:, 12:16].reshape(2, 4, 1, 5, 6), dim=1))
    expected = {"embedding": torch.zeros(2), "constant": torch.full((2,), -1.5),
                "features": raw[:, -1].mean(dim=(-2, -1))}[logstd]
    torch.testing.assert_close(gm.logstds.flatten(), expected)
    if logstd == "embedding":  # the log-std MLP sees a stop-gradient embedding (paper Fig. 4)
        gm.logstds.sum().backward()
        assert emb.grad is None
        assert [n for n, _ in head.named_parameters()] == ["logstd_layers.1.weight", "logstd_layers.1.bias",
                                                           "logstd_layers.3.weight", "logstd_layers.3.bias"]
    with pytest.raises(ValueError, match=f"raw must have {head.raw_channels} channels"):
        head(torch.randn(2, 5, 1, 1), emb)


def test_gm_head_rejects_bad_settings():
    with pytest.raises(ValueError, match="num_components and out_channels must be >= 1"):
        GMOutputHead(0, 2, "constant")
    with pytest.raises(ValueError, match="logstd must be one of"):
        GMOutputHead(2, 2, "learned")
    with pytest.raises(ValueError, match="embed_dim is required"):
        GMOutputHead(2, 2, "embedding")


def test_mlp2d_outputs_a_gm_and_validates_inputs():
    model = GMFlowMLP2D(num_components=8, hidden_dim=32, num_layers=2, num_classes=3)
    gm = model(torch.randn(5, 2, 1, 1), torch.rand(5), torch.tensor([0, 1, 2, 3, 0]))
    assert isinstance(gm, GaussianMixture) and gm.means.shape == (5, 8, 2, 1, 1)
    assert isinstance(model, Denoiser) and model.null_label == null_label(3) == 3
    torch.testing.assert_close(gm.logweights.exp(), torch.full_like(gm.logweights, 1 / 8))  # zero-init logits
    with pytest.raises(ValueError, match="labels are required"):
        model(torch.randn(5, 2, 1, 1), torch.rand(5))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        model(torch.randn(2, 2, 1, 1), torch.rand(2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 2, 1, 1\)"):
        model(torch.randn(5, 3, 1, 1), torch.rand(5), torch.zeros(5, dtype=torch.long))
    fm = GMFlowMLP2D(num_components=1, hidden_dim=32, num_layers=2)
    assert fm(torch.randn(3, 2, 1, 1), 0.5).means.shape == (3, 1, 2, 1, 1)


