"""Sinusoidal embeddings of noise levels and 2-D positions (as in the official GMFlow 2-D model)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def timestep_embedding(
    timesteps: Tensor, dim: int, flip_sin_to_cos: bool = True, downscale_freq_shift: float = 1.0,
    max_period: float = 10000.0,
) -> Tensor:
    """Sinusoidal embedding of timesteps, the DDPM/diffusers convention.

    Frequencies exp(-log(max_period) i / (dim/2 - downscale_freq_shift)), i = 0 .. dim // 2 - 1.

    Args:
        timesteps: (B,) timesteps (= 1000 sigma).
        dim: the embedding size (odd sizes get one zero column at the end).
        flip_sin_to_cos: [cos, sin] if True, else [sin, cos].
        downscale_freq_shift: the shift in the frequency denominator.
        max_period: the longest period.

    Returns:
        The embedding, float32 (B, dim).
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    angles = timesteps.float()[:, None] * torch.exp(exponent / (half - downscale_freq_shift))[None, :]
    emb = torch.cat([angles.cos(), angles.sin()] if flip_sin_to_cos else [angles.sin(), angles.cos()], dim=-1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


def position_embedding(points: Tensor, dim: int, min_period: float = 5e-3, max_period: float = 50.0) -> Tensor:
    """Sinusoidal embedding of points: dim/D channels per coordinate, [sin, cos] at log-spaced periods.

    Args:
        points: (B, D).
        dim: the embedding size, divisible by 2 D.
        min_period: the shortest period.
        max_period: the longest period (dim / (2 D) periods, log-spaced in [min_period, max_period]).

    Returns:
        The embedding (B, dim) in the dtype of ``points``: per coordinate, its sines then its cosines.

    Raises:
        ValueError: if ``dim`` is not divisible by 2 D.
    """
    batch, coords = points.shape
    if dim % (2 * coords):
        raise ValueError(f"dim must be divisible by 2 x {coords} (the point dimension), got {dim}")
    half = dim // (2 * coords)
    periods = torch.logspace(math.log(min_period), math.log(max_period), half, base=math.e,
                             dtype=points.dtype, device=points.device)
    angles = points.reshape(-1, 1) * (2 * math.pi / periods)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(batch, dim)
