"""GM-UNet: diffusers' ``UNet2DModel`` with the GM output head (paper App. B.3: GMFlow on the DDPM U-Net).

The U-Net's last convolution predicts, per pixel, K x C means and K logits (:class:`GMOutputHead`); the
shared log-std comes from the head's MLP on the detached time (+ class) embedding, as in GM-DiT. The
defaults are the DDPM CIFAR-10 U-Net (Ho et al. 2020; diffusers' ``google/ddpm-cifar10-32``): base width
128, multipliers (1, 2, 2, 2), 2 residual blocks per level, self-attention at 16 x 16, dropout 0.1, 32
group-norm groups, sinusoidal time embedding; about 35.7 M parameters. The class embedding is optional:
``num_classes = 0`` (the default) makes an unconditional model.

``model(hidden_states (B, C, H, W), timestep (B,) = 1000 sigma, class_labels (B,) or None)`` returns a
:class:`GaussianMixture` (B, K, C, H, W), the same contract as :class:`GMDiTTransformer2DModel`, so
:class:`gmfm.models.GMFlowModel` wraps either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models import UNet2DModel
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor

from ..math.containers import GaussianMixture
from .gm_head import GMOutputHead
from .protocols import check_class_labels, null_label

#: The DDPM CIFAR-10 U-Net (diffusers ``google/ddpm-cifar10-32``).
DDPM_CIFAR10 = dict(block_out_channels=(128, 256, 256, 256),
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


class GMUNet2DModel(ModelMixin, ConfigMixin):
    """A U-Net predicting a u-GM; see the module docstring.

    Args:
        num_gaussians: K (K = 1 with ``constant_logstd = 0`` and the L2 loss is the flow-matching twin).
        constant_logstd: a fixed log-std instead of the learned one (None: learned).
        logstd_inner_dim, gm_num_logstd_layers: the log-std MLP on the time (+ class) embedding.
        in_channels, sample_size: the data's channels and (square) size.
        block_out_channels, down_block_types, up_block_types, layers_per_block, dropout, attention_head_dim,
        norm_num_groups, norm_eps, freq_shift, flip_sin_to_cos, downsample_padding: as in
            :class:`diffusers.UNet2DModel` (defaults: the DDPM CIFAR-10 U-Net).
        num_classes: 0 for an unconditional model; else a class-embedding table with one extra row, the
            null class (id = num_classes).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_gaussians: int = 2,
        constant_logstd: float | None = None,
        logstd_inner_dim: int = 256,
        gm_num_logstd_layers: int = 2,
        in_channels: int = 3,
        sample_size: int = 32,
        block_out_channels: Sequence[int] = DDPM_CIFAR10["block_out_channels"],
        down_block_types: Sequence[str] = DDPM_CIFAR10["down_block_types"],
        up_block_types: Sequence[str] = DDPM_CIFAR10["up_block_types"],
        layers_per_block: int = 2,
        dropout: float = 0.1,
        attention_head_dim: int | None = None,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        freq_shift: int = 1,
        flip_sin_to_cos: bool = False,
        downsample_padding: int = 0,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if len(down_block_types) != len(block_out_channels) or len(up_block_types) != len(block_out_channels):
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        embed_dim = block_out_channels[0] * 4
        if constant_logstd is None:
            self.gm_out = GMOutputHead(num_gaussians, in_channels, "embedding", embed_dim=embed_dim,
                                       logstd_inner_dim=logstd_inner_dim, logstd_layers=gm_num_logstd_layers)
        else:
            self.gm_out = GMOutputHead(num_gaussians, in_channels, "constant", constant_logstd=constant_logstd)
        self.unet = UNet2DModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=self.gm_out.raw_channels,
            block_out_channels=tuple(block_out_channels), down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types), layers_per_block=layers_per_block, dropout=dropout,
            attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups, norm_eps=norm_eps,
            freq_shift=freq_shift, flip_sin_to_cos=flip_sin_to_cos, downsample_padding=downsample_padding,
            num_class_embeds=null_label(num_classes) + 1 if num_classes else None)
        self.gm_out.zero_init_()

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def null_label(self) -> int:
        """The unconditional class id of a class-conditional model."""
        return null_label(self.config.num_classes)

    def _embedding(self, timestep: Tensor, class_labels: Tensor | None, dtype: torch.dtype) -> Tensor:
        """The U-Net's time (+ class) embedding (B, 4 x base width), for the log-std head."""
        emb = self.unet.time_embedding(self.unet.time_proj(timestep).to(dtype))
        if class_labels is not None and self.unet.class_embedding is not None:
            emb = emb + self.unet.class_embedding(class_labels).to(dtype)
        return emb

    def forward(self, hidden_states: Tensor, timestep: Tensor, class_labels: Tensor | None = None) -> GaussianMixture:
        batch, channels = hidden_states.shape[:2]
        if channels != self.config.in_channels:
            raise ValueError(f"hidden_states must have {self.config.in_channels} channels, got {channels}")
        if self.num_classes:
            if class_labels is None:
                raise ValueError("class_labels are required by a class-conditional GM-UNet (use the null label "
                                 f"{self.null_label} for no class)")
            class_labels = check_class_labels("class_labels", class_labels, batch, self.num_classes)
        elif class_labels is not None:
            raise ValueError("this GM-UNet is unconditional: class_labels must be None")
        timestep = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(batch)
        raw = self.unet(hidden_states, timestep, class_labels=class_labels).sample
        embedding = self._embedding(timestep, class_labels, hidden_states.dtype) \
            if self.gm_out.logstd_source == "embedding" else None
        return self.gm_out(raw, embedding)
