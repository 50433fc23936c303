"""Vanilla classifier-free guidance, kept for comparison with probabilistic guidance.

``scale`` follows the usual CFG convention: 1 is the conditional prediction, 0 the unconditional one,
larger values extrapolate (and, on images, over-saturate).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..math.containers import GaussianMixture
from ..math.gm_ops import gm_mean
from ..math.validation import check_float_in
from .base import Guidance, GuidedGM


def cfg_velocity(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """The usual CFG on a plain flow model's prediction (velocity or x0): uncond + scale (cond - uncond).

    Args:
        cond: the conditional prediction (..., C, H, W).
        uncond: the unconditional prediction, same shape.
        scale: the guidance scale, a finite number >= 0.

    Returns:
        The guided prediction, (..., C, H, W).

    Raises:
        ValueError: if ``scale`` is invalid or the shapes differ.
    """
    scale = check_float_in("cfg_scale", scale, 0.0, float("inf"))
    if cond.shape != uncond.shape:
        raise ValueError(f"uncond must have the shape of cond {tuple(cond.shape)}, got {tuple(uncond.shape)}")
    return uncond + scale * (cond - uncond)


def cfg_gm(cond: GaussianMixture, uncond: GaussianMixture, scale: float) -> GaussianMixture:
    """CFG applied to a GM as in the paper's ablation: shift every component by (scale - 1) (mean(cond) - mean(uncond)).

    Weights and std are unchanged, so the GM's mean is the CFG-extrapolated mean.

    Args:
        cond: the conditional x0-GM (..., K, C, H, W).
        uncond: the unconditional x0-GM, same shapes.
        scale: the guidance scale, a finite number >= 0.

    Returns:
        The shifted ``cond``, (..., K, C, H, W).

    Raises:
        ValueError: if ``scale`` is invalid or the means' shapes differ.
    """
    scale = check_float_in("cfg_scale", scale, 0.0, float("inf"))
    if cond.means.shape != uncond.means.shape:
        raise ValueError(
            f"uncond must have the shape of cond: {tuple(cond.means.shape)} vs {tuple(uncond.means.shape)}"
        )
    shift = (scale - 1.0) * (gm_mean(cond) - gm_mean(uncond))
    return GaussianMixture.trusted(cond.means + shift.unsqueeze(-4), cond.logweights, cond.logstds)


@dataclass(frozen=True)
class ClassifierFreeGuidance(Guidance):
    """Vanilla CFG with ``scale`` >= 0 (1 = conditional only, no unconditional pass). On a GM solver it
    shifts the components (:func:`cfg_gm`); on a flow solver it extrapolates the velocity."""

    scale: float
    guides_point_predictions = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", check_float_in("cfg_scale", self.scale, 0.0, float("inf")))

    @property
    def needs_uncond(self) -> bool:
        """False at scale 1 (the conditional prediction), True otherwise."""
        return self.scale != 1.0

    def guide_gm(self, cond: GaussianMixture, uncond: GaussianMixture) -> GuidedGM:
        """:func:`cfg_gm` of the x0-GMs (..., K, C, H, W), wrapped by :meth:`GuidedGM.unguided` (no bias)."""
        return GuidedGM.unguided(cfg_gm(cond, uncond, self.scale))

    def guide_prediction(self, cond: Tensor, uncond: Tensor) -> Tensor:
        """:func:`cfg_velocity` of the point predictions (..., C, H, W)."""
        return cfg_velocity(cond, uncond, self.scale)
