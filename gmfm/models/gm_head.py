"""The GM output head: turns a backbone's raw output channels into a u-GM (paper Sec. 3.1, Fig. 4).

Used by the 2-D MLP and by GM-DiT. Module names follow the official GM-DiT (``gm_out.logstd_layers``), so
official checkpoints load.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..math.containers import GaussianMixture

LOGSTD_SOURCES = ("embedding", "features", "constant")


class GMOutputHead(nn.Module):
    """K x C means and K logits per pixel from the backbone's channels, one shared log-std per sample.

    Args:
        num_components: K (K = 1 with an L2 loss is plain flow matching).
        out_channels: C, channels of the modelled variable.
        logstd: where the shared log-std comes from:
            "embedding": an MLP (``logstd_layers`` x [SiLU, Linear], ``logstd_inner_dim`` wide) on the
                stop-gradient condition embedding, last layer zero-initialised (paper Fig. 4, official
                GM-DiT);
            "features": one extra backbone channel, averaged over pixels (the official 2-D MLP);
            "constant": ``constant_logstd``, not learned.
        embed_dim: E, size of the condition embedding ("embedding" only).
        logstd_inner_dim, logstd_layers: the log-std MLP ("embedding" only).
        constant_logstd: the value for "constant".

    Call ``head(raw, embedding)`` with raw (B, :attr:`raw_channels`, H, W), channels ordered
    [K x C means (component-major), K logits, (1 log-std feature)], and embedding (B, E) or None; returns
    the u-GM (B, K, C, H, W).
    """

    def __init__(self, num_components: int, out_channels: int, logstd: str = "embedding", *,
                 embed_dim: int | None = None, logstd_inner_dim: int = 256, logstd_layers: int = 2,
                 constant_logstd: float = 0.0) -> None:
        super().__init__()
        if num_components < 1 or out_channels < 1:
            raise ValueError(f"num_components and out_channels must be >= 1, got {num_components} and {out_channels}")
        if logstd not in LOGSTD_SOURCES:
            raise ValueError(f"logstd must be one of {LOGSTD_SOURCES}, got {logstd!r}")
        self.num_components, self.out_channels, self.logstd_source = num_components, out_channels, logstd
        if logstd == "embedding":
            if embed_dim is None:
                raise ValueError("embed_dim is required when logstd='embedding'")
            if logstd_layers < 1:
                raise ValueError(f"logstd_layers must be >= 1, got {logstd_layers}")
            layers: list[nn.Module] = []
            width = embed_dim
            for _ in range(logstd_layers - 1):
                layers += [nn.SiLU(), nn.Linear(width, logstd_inner_dim)]
                width = logstd_inner_dim
            self.logstd_layers = nn.Sequential(*layers, nn.SiLU(), nn.Linear(width, 1))
        self.constant_logstd = float(constant_logstd)

    @property
    def raw_channels(self) -> int:
        """Channels the backbone must produce per pixel: K (C + 1), plus one for a "features" log-std."""
        return self.num_components * (self.out_channels + 1) + (self.logstd_source == "features")

    @torch.no_grad()
    def zero_init_(self) -> None:
        """Zero the last log-std layer, so that training starts at log-std 0."""
        if self.logstd_source == "embedding":
            nn.init.zeros_(self.logstd_layers[-1].weight)
            nn.init.zeros_(self.logstd_layers[-1].bias)

    def forward(self, raw: Tensor, embedding: Tensor | None = None) -> GaussianMixture:
        batch, channels, height, width = raw.shape
        if channels != self.raw_channels:
            raise ValueError(f"raw must have {self.raw_channels} channels, got {channels}")
        k, c = self.num_components, self.out_channels
        means = raw[:, : k * c].reshape(batch, k, c, height, width)
        logits = raw[:, k * c: k * (c + 1)].reshape(batch, k, 1, height, width)
        if self.logstd_source == "embedding":
            if embedding is None:
                raise ValueError("embedding is required by a head with logstd='embedding'")
            logstds = self.logstd_layers(embedding.detach())  # stop-gradient input (paper Fig. 4)
        elif self.logstd_source == "features":
            logstds = raw[:, -1].mean(dim=(-2, -1))
        else:
            logstds = raw.new_full((batch,), self.constant_logstd)
        return GaussianMixture.from_logits(means, logits, logstds.reshape(batch, 1, 1, 1, 1))
