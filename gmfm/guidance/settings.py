"""A guidance value from the three numbers users set (command line, recipes, benchmarks)."""

from __future__ import annotations

from .base import Guidance
from .cfg import ClassifierFreeGuidance
from .probabilistic import ProbabilisticGuidance


def make_guidance(guidance_scale: float = 0.0, orthogonal_guidance: float = 1.0,
                  cfg_scale: float = 1.0) -> Guidance | None:
    """The guidance that the sampling settings describe.

    Args:
        guidance_scale: probabilistic guidance w in [0, 1) (0: off).
        orthogonal_guidance: its projection weight in [0, 1].
        cfg_scale: vanilla CFG scale >= 0 (1: off).

    Returns:
        :class:`~gmfm.guidance.ProbabilisticGuidance`, :class:`~gmfm.guidance.ClassifierFreeGuidance` or
        None when neither is on.

    Raises:
        ValueError: both are on, or a value is out of range.
    """
    pg = ProbabilisticGuidance(guidance_scale, orthogonal_guidance)
    cfg = ClassifierFreeGuidance(cfg_scale)
    if pg.needs_uncond and cfg.needs_uncond:
        raise ValueError("use either guidance_scale (probabilistic guidance) or cfg_scale (vanilla CFG), not both")
    return pg if pg.needs_uncond else (cfg if cfg.needs_uncond else None)
