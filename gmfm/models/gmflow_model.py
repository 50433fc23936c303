"""A trainable GMFlow image model: a u-GM network and, optionally, its SpectrumMLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..math.containers import GaussianMixture


class GMFlowModel(nn.Module):
    """The :class:`~gmfm.models.Denoiser` adapter of a GM-DiT-like network.

    ``net(x, timestep = 1000 sigma, labels)`` returns a u-GM; ``model(x_t, sigma, labels)`` calls it with
    the official conventions (float32 timesteps whatever the network's dtype, as the official pipeline).
    ``spectrum_net`` (a SpectrumMLP or None) is trained by :class:`gmfm.losses.GMFlowLoss` and used by
    spectral GM-SDE sampling; keeping both in one module gives one set of weights to train and save.
    """

    def __init__(self, net: nn.Module, spectrum_net: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.spectrum_net = spectrum_net

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    @property
    def null_label(self) -> int:
        return self.net.null_label

    def forward(self, x_t: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> GaussianMixture:
        """x_t (B, C, H, W), sigma a number or (B,) -> u-GM (B, K, C, H, W) in x_t's dtype (the network
        runs in its own dtype)."""
        timestep = torch.as_tensor(sigma, device=x_t.device).float().reshape(-1).expand(x_t.shape[0]) * 1000
        dtype = next(self.net.parameters()).dtype
        return self.net(x_t.to(dtype), timestep, labels).to(x_t.dtype)
