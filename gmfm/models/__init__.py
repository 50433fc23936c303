"""Models: the contracts (:class:`Denoiser`, :class:`VelocityModel`, :class:`SpectrumModel`), the analytic
oracle denoiser, the GM output head, the 2-D MLP, GM-DiT and SpectrumMLP (GM-DiT and SpectrumMLP import
diffusers on first use)."""

from .analytic import AnalyticGMDenoiser
from .embeddings import position_embedding, timestep_embedding
from .gm_head import GMOutputHead
from .gmflow_model import GMFlowModel
from .mlp2d import GMFlowMLP2D, MLP2DConfig
from .protocols import Denoiser, SpectrumModel, VelocityModel, null_label

__all__ = [
    "Denoiser",
    "VelocityModel",
    "SpectrumModel",
    "null_label",
    "AnalyticGMDenoiser",
    "GMOutputHead",
    "GMFlowModel",
    "GMFlowMLP2D",
    "MLP2DConfig",
    "GMDiTTransformer2DModel",
    "SpectrumMLP",
    "timestep_embedding",
    "position_embedding",
]

_LAZY = {"GMDiTTransformer2DModel": ".gmdit", "SpectrumMLP": ".gmdit"}


def __getattr__(name: str):
    if name in _LAZY:  # diffusers' transformer blocks: imported only when asked for (keeps `import gmfm` light)
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
