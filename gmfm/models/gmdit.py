"""GM-DiT (paper Sec. 3.1, App. A.4) and SpectrumMLP, as diffusers models.

Config keys and state-dict names match the official checkpoints (e.g. Lakonik/gmflow_imagenet_k8_ema),
so ``GMDiTTransformer2DModel.from_pretrained(folder)`` loads them unchanged:

- a DiT (patch embedding, adaLN-Zero blocks, final adaptive norm) whose output layer predicts, per pixel,
  K x C means and K logits (``proj_out_2`` has patch^2 x K (C + 1) outputs);
- the shared log-std from a small MLP (``gm_out.logstd_layers``) on the detached condition embedding;
- the timestep embedding of the original DiT (``downscale_freq_shift = 0``) and a label table with one
  extra row, the null class (id = number of classes).

Label dropout for classifier-free training is done by the loss (with a generator), not in the model;
``class_dropout_prob`` is kept for config compatibility and must be 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import Attention, FeedForward
from diffusers.models.embeddings import PatchEmbed, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormZero
from torch import Tensor, nn

from ..math.containers import GaussianMixture, IsoGaussian
from .gm_head import GMOutputHead
from .protocols import check_class_labels, null_label


class _ConditionEmbedding(nn.Module):
    """Timestep (DiT's sinusoid, no frequency shift) + class embedding, with a row for the null class."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=dim)
        self.class_embedder = nn.Module()
        self.class_embedder.embedding_table = nn.Embedding(null_label(num_classes) + 1, dim)

    def forward(self, timestep: Tensor, class_labels: Tensor, dtype: torch.dtype) -> Tensor:
        t_emb = self.timestep_embedder(self.time_proj(timestep).to(dtype))
        return t_emb + self.class_embedder.embedding_table(class_labels)


class _DiTBlock(nn.Module):
    """adaLN-Zero transformer block; the condition embedding is shared by all blocks (original DiT)."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float, activation_fn: str, bias: bool,
                 upcast_attention: bool, elementwise_affine: bool, eps: float) -> None:
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim, None)
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=head_dim, dropout=dropout, bias=bias,
                               upcast_attention=upcast_attention, out_bias=True)
        self.norm3 = nn.LayerNorm(dim, eps, elementwise_affine)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, bias=True)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, emb=emb)
        x = x + gate_msa.unsqueeze(1) * self.attn1(h)
        h = self.norm3(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp.unsqueeze(1) * self.ff(h)


class GMDiTTransformer2DModel(ModelMixin, ConfigMixin):
    """Class-conditional GM-DiT predicting a u-GM.

    ``model(hidden_states (B, C, H, W), timestep (B,) = 1000 sigma, class_labels (B,))`` returns a
    :class:`GaussianMixture` (B, K, C, H, W). ``num_embeds_ada_norm`` is the number of classes; label
    ``num_embeds_ada_norm`` is the null (unconditional) class. Defaults: GM-DiT-XL/2, K = 16 (the paper's
    ImageNet model uses K = 8).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_gaussians: int = 16,
        constant_logstd: float | None = None,
        logstd_inner_dim: int = 1024,
        gm_num_logstd_layers: int = 2,
        class_dropout_prob: float = 0.0,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        in_channels: int = 4,
        out_channels: int | None = None,
        num_layers: int = 28,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        attention_bias: bool = True,
        sample_size: int = 32,
        patch_size: int = 2,
        activation_fn: str = "gelu-approximate",
        num_embeds_ada_norm: int | None = 1000,
        upcast_attention: bool = False,
        norm_type: str = "ada_norm_zero",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if norm_type != "ada_norm_zero":
            raise ValueError(f"norm_type must be 'ada_norm_zero' (GM-DiT), got {norm_type!r}")
        if num_embeds_ada_norm is None:
            raise ValueError("num_embeds_ada_norm (the number of classes) is required")
        if class_dropout_prob:
            raise ValueError("class_dropout_prob must be 0: label dropout is done by the loss, with a generator")
        if sample_size % patch_size:
            raise ValueError(f"sample_size ({sample_size}) must be divisible by patch_size ({patch_size})")
        dim = num_attention_heads * attention_head_dim
        self.out_channels = in_channels if out_channels is None else out_channels
        if constant_logstd is None:
            self.gm_out = GMOutputHead(num_gaussians, self.out_channels, "embedding", embed_dim=dim,
                                       logstd_inner_dim=logstd_inner_dim, logstd_layers=gm_num_logstd_layers)
        else:
            self.gm_out = GMOutputHead(num_gaussians, self.out_channels, "constant", constant_logstd=constant_logstd)
        self.gm_channels = self.gm_out.raw_channels
        self.gradient_checkpointing = False
        self.pos_embed = PatchEmbed(height=sample_size, width=sample_size, patch_size=patch_size,
                                    in_channels=in_channels, embed_dim=dim)
        self.emb = _ConditionEmbedding(num_embeds_ada_norm, dim)
        self.transformer_blocks = nn.ModuleList([
            _DiTBlock(dim, num_attention_heads, attention_head_dim, dropout, activation_fn, attention_bias,
                      upcast_attention, norm_elementwise_affine, norm_eps)
            for _ in range(num_layers)
        ])
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj_out_1 = nn.Linear(dim, 2 * dim)
        self.proj_out_2 = nn.Linear(dim, patch_size * patch_size * self.gm_channels)
        self.init_weights()

    @property
    def num_classes(self) -> int:
        return self.config.num_embeds_ada_norm

    @property
    def null_label(self) -> int:
        """The unconditional class id (one extra row of the label table)."""
        return null_label(self.config.num_embeds_ada_norm)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The DiT initialisation: Xavier linears, N(0, 0.02) embeddings, zero adaLN and output modulation,
        zero last log-std layer (so training starts at log-std 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        w = self.pos_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.pos_embed.proj.bias)
        for block in self.transformer_blocks:
            nn.init.zeros_(block.norm1.linear.weight)
            nn.init.zeros_(block.norm1.linear.bias)
        nn.init.zeros_(self.proj_out_1.weight)
        nn.init.zeros_(self.proj_out_1.bias)
        self.gm_out.zero_init_()

    def forward(self, hidden_states: Tensor, timestep: Tensor, class_labels: Tensor) -> GaussianMixture:
        batch, channels, height, width = hidden_states.shape
        p = self.config.patch_size
        if channels != self.config.in_channels:
            raise ValueError(f"hidden_states must have {self.config.in_channels} channels, got {channels}")
        if height % p or width % p:
            raise ValueError(f"latent size {height} x {width} is not divisible by the patch size {p}")
        class_labels = check_class_labels("class_labels", class_labels, batch, self.num_classes)
        timestep = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(batch)
        x = self.pos_embed(hidden_states)
        emb = self.emb(timestep, class_labels, hidden_states.dtype)
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, emb)
            else:
                x = block(x, emb)
        shift, scale = self.proj_out_1(F.silu(emb)).chunk(2, dim=1)
        x = self.norm_out(x) * (1 + scale[:, None]) + shift[:, None]
        h, w = height // p, width // p
        x = self.proj_out_2(x).reshape(batch, h, w, p, p, self.gm_channels)
        x = x.permute(0, 5, 1, 3, 2, 4).reshape(batch, self.gm_channels, height, width)
        return self.gm_out(x, emb)


class SpectrumMLP(ModelMixin, ConfigMixin):
    """Predicts the log power spectrum of the whitened GM-SDE noise (paper Sec. 3.4, App. A.3).

    Input: the step's moment-matched Gaussian N(mean (B, C, H, W), var (B, 1, h, w)); the MLP sees
    (mean of var, mean over channels of the spatial variance of mean) and outputs C x base_h x base_w
    values, cropped (low and high frequencies kept) to H x W, log-softmaxed over frequencies + log(H W),
    so each channel's power spectrum averages 1. Output: log-variance (B, C, H, W).
    """

    @register_to_config
    def __init__(self, base_size: Sequence[int] = (4, 32, 32), layers: Sequence[int] = (64, 8)) -> None:
        super().__init__()
        if len(base_size) != 3:
            raise ValueError(f"base_size must be (C, H, W), got {base_size}")
        modules: list[nn.Module] = []
        width = 2
        for out in layers:
            modules += [nn.Linear(width, out), nn.SiLU()]
            width = out
        modules.append(nn.Linear(width, math.prod(base_size)))
        self.mlp = nn.Sequential(*modules)
        with torch.no_grad():
            for m in self.mlp:
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
            nn.init.zeros_(self.mlp[-1].weight)  # a flat (white) spectrum at initialisation

    def forward(self, gaussian: IsoGaussian) -> Tensor:
        mean, var = gaussian.mean, gaussian.var
        stats = torch.stack([var.mean(dim=(-3, -2, -1)), mean.var(dim=(-2, -1)).mean(dim=-1)], dim=-1)
        c, base_h, base_w = self.config.base_size
        h, w = mean.shape[-2:]
        if mean.shape[-3] != c:
            raise ValueError(f"the Gaussian has {mean.shape[-3]} channels, the SpectrumMLP {c}")
        if h > base_h or w > base_w:
            raise ValueError(f"latent size {h} x {w} exceeds the SpectrumMLP base size {base_h} x {base_w}")
        batch_shape = stats.shape[:-1]
        spectrum = self.mlp(stats.reshape(-1, 2).to(self.dtype)).reshape(-1, c, base_h, base_w)
        if (h, w) != (base_h, base_w):  # keep the lowest positive and negative frequencies
            h1, w1 = (h + 1) // 2, (w + 1) // 2
            h2, w2 = h - h1, w - w1
            top = torch.cat([spectrum[..., :h1, :w1], spectrum[..., :h1, base_w - w2:]], dim=-1)
            bottom = torch.cat([spectrum[..., base_h - h2:, :w1], spectrum[..., base_h - h2:, base_w - w2:]], dim=-1)
            spectrum = torch.cat([top, bottom], dim=-2)
        log_var = spectrum.flatten(-2).log_softmax(dim=-1) + math.log(h * w)
        return log_var.reshape(*batch_shape, c, h, w).to(mean.dtype)
