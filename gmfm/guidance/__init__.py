"""Guidance of conditional predictions: the :class:`Guidance` contract, probabilistic guidance (GMFlow)
and vanilla classifier-free guidance for comparison."""

from .base import Guidance, GuidedGM, active_guidance, pixel_averaged_gaussian, reweight_towards
from .cfg import ClassifierFreeGuidance, cfg_gm, cfg_velocity
from .probabilistic import ProbabilisticGuidance, probabilistic_guidance
from .settings import make_guidance

__all__ = [
    "Guidance",
    "GuidedGM",
    "ProbabilisticGuidance",
    "ClassifierFreeGuidance",
    "active_guidance",
    "make_guidance",
    "probabilistic_guidance",
    "cfg_gm",
    "cfg_velocity",
    "pixel_averaged_gaussian",
    "reweight_towards",
]
