"""The GM output head: turns any backbone's features into a u-GM (paper Sec. 3.1, Fig. 4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..math.containers import GaussianMixture


class GMOutputHead(nn.Module):
    """Predict K x C means and K logits per pixel, and one shared log-std per sample.

    Args:
        in_features: F, the backbone's feature size (per pixel for images).
        out_channels: C, channels of the modelled variable.
        num_components: K (K = 1 with an L2 loss is plain flow matching).
        logstd: where the shared log-std comes from:
            "embedding": a small MLP (SiLU, ``logstd_hidden`` wide, ``logstd_layers`` layers) on the
                stop-gradient time/condition embedding, last layer zero-initialised (paper Fig. 4);
            "features": a zero-initialised linear read-out of the (pixel-averaged) features (the official
                2-D MLP);
            a float: a constant log-std (not learned).
        embed_dim: size of the embedding (needed for "embedding").

    Means, logits (and the "features" log-std) come from ONE linear layer ``proj`` (one matrix product
    instead of three); its logit and log-std rows are zero-initialised, so training starts from equal
    component weights and log-std 0.

    Call: ``head(features, embedding)`` with features (B, F) or (B, F, H, W) and embedding (B, E) or
    None; returns the u-GM (B, K, C, 1, 1) or (B, K, C, H, W).
    """

    def __init__(
        self,
        in_features: int,
        out_channels: int,
        num_components: int,
        logstd: str | float = "embedding",
        embed_dim: int | None = None,
        logstd_hidden: int = 256,
        logstd_layers: int = 2,
    ) -> None:
        super().__init__()
        if num_components < 1 or out_channels < 1:
            raise ValueError("num_components and out_channels must be >= 1")
        self.num_components, self.out_channels = num_components, out_channels
        self.logstd_source = logstd if isinstance(logstd, str) else "constant"
        if self.logstd_source not in ("embedding", "features", "constant"):
            raise ValueError(f"logstd must be 'embedding', 'features' or a number, got {logstd!r}")
        extra = 1 if self.logstd_source == "features" else 0
        self.proj = nn.Linear(in_features, num_components * (out_channels + 1) + extra)
        if self.logstd_source == "embedding":
            if embed_dim is None:
                raise ValueError("embed_dim is required when logstd='embedding'")
            layers: list[nn.Module] = []
            width = embed_dim
            for _ in range(logstd_layers - 1):
                layers += [nn.Linear(width, logstd_hidden), nn.SiLU()]
                width = logstd_hidden
            layers.append(nn.Linear(width, 1))
            self.logstd_net = nn.Sequential(*layers)
        elif self.logstd_source == "constant":
            self.register_buffer("constant_logstd", torch.tensor(float(logstd)))
        self.zero_init_()

    @torch.no_grad()
    def zero_init_(self) -> None:
        """Zero the logit rows, the log-std read-out and the last log-std layer (call after a re-init)."""
        start = self.num_components * self.out_channels
        self.proj.weight[start:].zero_()
        self.proj.bias[start:].zero_()
        if self.logstd_source == "embedding":
            self.logstd_net[-1].weight.zero_()
            self.logstd_net[-1].bias.zero_()

    def forward(self, features: Tensor, embedding: Tensor | None = None) -> GaussianMixture:
        k, c = self.num_components, self.out_channels
        batch = features.shape[0]
        if features.dim() == 4:  # (B, F, H, W): the same linear read-out at every pixel
            height, width = features.shape[2:]
            out = self.proj(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, P, H, W)
        else:  # (B, F): one "pixel"
            height = width = 1
            out = self.proj(features)[:, :, None, None]
        means = out[:, : k * c].reshape(batch, k, c, height, width)
        logits = out[:, k * c : k * (c + 1)].reshape(batch, k, 1, height, width)
        if self.logstd_source == "embedding":
            if embedding is None:
                raise ValueError("embedding is required by a head with logstd='embedding'")
            logstds = self.logstd_net(embedding.detach())  # stop-gradient input (paper Fig. 4)
        elif self.logstd_source == "features":
            logstds = out[:, -1].mean(dim=(-2, -1))  # linear, so this is the read-out of the mean feature
        else:
            logstds = self.constant_logstd.to(means.dtype).expand(batch, 1)
        return GaussianMixture.from_logits(means, logits, logstds.reshape(batch, 1, 1, 1, 1))
