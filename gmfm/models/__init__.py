"""Denoisers that return a u-GM: the analytic oracle, the GM output head and the 2-D MLP."""

from .analytic import AnalyticGMDenoiser
from .embeddings import position_embedding, timestep_embedding
from .gm_head import GMOutputHead
from .mlp2d import GMFlowMLP2D, MLP2DConfig

__all__ = [
    "AnalyticGMDenoiser",
    "GMOutputHead",
    "GMFlowMLP2D",
    "MLP2DConfig",
    "timestep_embedding",
    "position_embedding",
]
