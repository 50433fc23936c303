"""Guidance of conditional GMs: probabilistic guidance (GMFlow) and vanilla CFG for comparison."""

from .cfg import cfg_gm, cfg_velocity
from .probabilistic import GuidanceOutput, pixel_averaged_gaussian, probabilistic_guidance, reweight_towards

__all__ = [
    "GuidanceOutput",
    "probabilistic_guidance",
    "pixel_averaged_gaussian",
    "reweight_towards",
    "cfg_gm",
    "cfg_velocity",
]
