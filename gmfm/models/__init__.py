"""Denoisers that return a u-GM: the analytic oracle, the GM output head, the 2-D MLP, GM-DiT (+ SpectrumMLP)."""

from .analytic import AnalyticGMDenoiser
from .embeddings import position_embedding, timestep_embedding
from .gm_head import GMOutputHead
from .gmflow_model import GMFlowModel
from .mlp2d import GMFlowMLP2D, MLP2DConfig

__all__ = [
    "AnalyticGMDenoiser",
    "GMOutputHead",
    "GMFlowModel",
    "GMDiTTransformer2DModel",
    "SpectrumMLP",
    "GMFlowMLP2D",
    "MLP2DConfig",
    "timestep_embedding",
    "position_embedding",
]


def __getattr__(name: str):
    # GM-DiT needs diffusers' transformer blocks: import them only when asked for (keeps `import gmfm` light)
    if name in ("GMDiTTransformer2DModel", "SpectrumMLP"):
        from . import gmdit

        return getattr(gmdit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
