"""A trainable GMFlow image model: a u-GM network and, optionally, its SpectrumMLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..math.containers import GaussianMixture


class GMFlowModel(nn.Module):
    """Wraps a GM-DiT-like network (``net(x, timestep = 1000 sigma, labels)``) with the solver and loss
    contract ``model(x_t, sigma, labels) -> u-GM``; ``spectrum_net`` (a SpectrumMLP or None) is trained by
    :class:`gmfm.losses.GMFlowLoss` with ``spectral_weight > 0`` and used by spectral GM-SDE sampling."""

    def __init__(self, net: nn.Module, spectrum_net: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.spectrum_net = spectrum_net

    def forward(self, x_t: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> GaussianMixture:
        """x_t (B, C, H, W), sigma scalar or (B,) -> u-GM in x_t's dtype (the network runs in its own)."""
        sigma = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        dtype = next(self.net.parameters()).dtype
        return self.net(x_t.to(dtype), (sigma * 1000).to(dtype), labels).to(x_t.dtype)
