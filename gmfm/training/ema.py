"""Exponential moving average of model weights, with the paper's two schedules."""

from __future__ import annotations

import copy

import torch
from torch import nn


def karras_ema_beta(step: int, gamma: float = 7.0) -> float:
    """Power-function EMA (Karras et al. 2024; the paper's 2-D recipe): beta = (1 - 1/t)^(gamma + 1).

    t = step + 1, so the first update copies the weights.

    Args:
        step: the 0-based training step.
        gamma: the power.

    Returns:
        beta.
    """
    t = step + 1
    return (1 - 1 / t) ** (gamma + 1)


def rampup_ema_beta(step: int, batch_size: int, ema_kimg: float, rampup: float | None = 0.05) -> float:
    """StyleGAN2-ADA EMA (the paper's ImageNet recipe): beta = 0.5^(batch_size / half-life in images).

    Args:
        step: the 0-based training step ((step + 1) batch_size images seen).
        batch_size: images per step.
        ema_kimg: the half-life in thousands of images.
        rampup: the half-life is at most ``rampup`` x the images seen so far; None disables the ramp-up.

    Returns:
        beta.
    """
    images = (step + 1) * batch_size
    half_life = ema_kimg * 1000
    if rampup is not None:
        half_life = min(half_life, images * rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


class EMA:
    """Keeps an EMA copy of a model: ``ema = beta ema + (1 - beta) model`` for parameters; buffers copied."""

    def __init__(self, model: nn.Module) -> None:
        """Start the EMA as a frozen copy (eval mode, no gradients) of ``model``."""
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        """One EMA step towards ``model``.

        Args:
            model: the trained model, with the EMA's architecture.
            beta: the decay (e.g. :func:`karras_ema_beta`); 0 copies the weights.
        """
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - beta)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
