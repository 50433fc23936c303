"""GM-UNet: the DDPM CIFAR-10 U-Net with the GM head, unconditional or class-conditional."""

from __future__ import annotations

import pytest
import torch

from gmfm.math.containers import GaussianMixture
from gmfm.models.unet import GMUNet2DModel

TINY = dict(block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4,
            logstd_inner_dim=8, sample_size=8, in_channels=3)


def test_the_default_is_the_ddpm_cifar10_unet():
    model = GMUNet2DModel()  # K = 2: only conv_out grows (8 channels) beside the log-std MLP
    assert sum(p.numel() for p in model.unet.parameters()) == 35_752_072
    assert 35.7e6 < sum(p.numel() for p in model.parameters()) < 36.0e6
    assert model.unet.config.dropout == 0.1 and model.num_classes == 0


def test_the_gm_contract_with_and_without_classes():
    torch.manual_seed(0)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([900.0, 10.0])
    plain = GMUNet2DModel(num_gaussians=3, **TINY).eval()
    gm = plain(x, t)
    assert isinstance(gm, GaussianMixture) and gm.means.shape == (2, 3, 3, 8, 8) and gm.logstds.shape == (2, 1, 1, 1, 1)
    assert torch.allclose(gm.logstds, torch.zeros(()))  # the log-std head starts at 0
    with pytest.raises(ValueError, match="unconditional: class_labels must be None"):
        plain(x, t, torch.tensor([0, 1]))
    conditional = GMUNet2DModel(num_gaussians=3, num_classes=4, **TINY).eval()
    a, b = conditional(x, t, torch.tensor([0, 4])), conditional(x, t, torch.tensor([1, 4]))  # 4: the null class
    assert not torch.allclose(a.means[0], b.means[0]) and torch.allclose(a.means[1], b.means[1])
    with pytest.raises(ValueError, match="class_labels are required"):
        conditional(x, t)
