"""The paper's 2-D denoiser: an MLP on sinusoidal time and position embeddings with a GM head."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..math.containers import GaussianMixture
from ..math.validation import as_sigma, check_float_in, check_positive_int
from .embeddings import position_embedding, timestep_embedding
from .gm_head import GMOutputHead
from .protocols import check_class_labels, null_label


@dataclass(frozen=True)
class MLP2DConfig:
    """Architecture of :class:`GMFlowMLP2D` (defaults: the paper's 5 x 512 MLP, K = 64)."""

    num_components: int = 64
    hidden_dim: int = 512
    num_layers: int = 5
    embed_dim: int = 256
    num_classes: int = 0  # > 0: class-conditional, with the null (unconditional) class null_label(num_classes)
    pos_min_period: float = 5e-3
    pos_max_period: float = 50.0
    constant_logstd: float | None = None

    def __post_init__(self) -> None:
        for name in ("num_components", "hidden_dim", "num_layers", "embed_dim"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("num_classes", self.num_classes, minimum=0)
        check_float_in("pos_min_period", self.pos_min_period, 0.0, math.inf, low_open=True)
        check_float_in("pos_max_period", self.pos_max_period, self.pos_min_period, math.inf, low_open=True)
        if self.constant_logstd is not None:
            check_float_in("constant_logstd", self.constant_logstd, -50.0, 50.0)

    def as_dict(self) -> dict:
        return asdict(self)


class GMFlowMLP2D(nn.Module):
    """u-GM denoiser for 2-D points: ``model(x_t (B, 2, 1, 1), sigma (B,), labels (B,) or None)``.

    Inputs are embedded (time: 256-d sinusoidal of 1000 sigma; position: 256-d sinusoidal), concatenated
    (plus a class embedding when conditional), passed through ``num_layers`` Linear + SiLU layers, and
    projected to the raw GM channels and turned into a GM with K components by :class:`GMOutputHead`
    (logit and log-std rows zero-initialised, log-std from the features as in the official model). With
    K = 1 and an L2 loss on the mean it is the plain flow-matching baseline. Returns the u-GM
    (B, K, 2, 1, 1).
    """

    def __init__(self, config: MLP2DConfig | None = None, **overrides) -> None:
        super().__init__()
        config = MLP2DConfig(**{**(config.as_dict() if config else {}), **overrides})
        self.config = config
        in_dim = 2 * config.embed_dim
        if config.num_classes:
            self.class_embedding = nn.Embedding(config.num_classes + 1, config.embed_dim)
            in_dim += config.embed_dim
        layers: list[nn.Module] = []
        for _ in range(config.num_layers):
            layers += [nn.Linear(in_dim, config.hidden_dim), nn.SiLU()]
            in_dim = config.hidden_dim
        self.net = nn.Sequential(*layers)
        if config.constant_logstd is None:
            self.head = GMOutputHead(config.num_components, 2, "features")
        else:
            self.head = GMOutputHead(config.num_components, 2, "constant", constant_logstd=config.constant_logstd)
        self.proj = nn.Linear(config.hidden_dim, self.head.raw_channels)  # one matrix product for the GM
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        # logit and log-std rows start at zero: equal component weights and log-std 0
        means_end = self.config.num_components * 2
        self.proj.weight[means_end:].zero_()

    @property
    def null_label(self) -> int:
        return null_label(self.config.num_classes)

    def forward(self, x_t: Tensor, sigma: object, labels: Tensor | None = None) -> GaussianMixture:
        if x_t.dim() != 4 or x_t.shape[1:] != (2, 1, 1):
            raise ValueError(f"x_t must have shape (B, 2, 1, 1), got {tuple(x_t.shape)}")
        batch = x_t.shape[0]
        sigma = as_sigma("sigma", sigma, (batch,), x_t)
        parts = [
            timestep_embedding(sigma * 1000, self.config.embed_dim).to(x_t.dtype),
            position_embedding(x_t.reshape(batch, 2), self.config.embed_dim, self.config.pos_min_period,
                               self.config.pos_max_period),
        ]
        if self.config.num_classes:
            if labels is None:
                raise ValueError(f"labels are required by a class-conditional model (use {self.null_label} for "
                                 "the null class)")
            parts.append(self.class_embedding(check_class_labels("labels", labels, batch, self.config.num_classes)))
        return self.head(self.proj(self.net(torch.cat(parts, dim=-1)))[:, :, None, None])
