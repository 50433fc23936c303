"""gmfm: Gaussian Mixture Flow Matching (GMFlow, Chen et al., ICML 2025) in PyTorch.

Subpackages, bottom up: ``math`` (GM containers and operations), ``models`` (model contracts, denoisers,
GM-DiT), ``losses``, ``guidance``, ``data``, ``solvers`` (GM-SDE / GM-ODE, baselines, schedulers),
``training``, ``metrics``, ``pipelines`` (diffusers), ``experiments`` (recipes, runs), ``cli``.
"""

__version__ = "0.2.0"

__all__ = [
    "GaussianMixture",
    "IsoGaussian",
    "AnalyticGMDenoiser",
    "gmflow_sample",
    "flow_sigmas",
    "ProbabilisticGuidance",
    "ClassifierFreeGuidance",
    "probabilistic_guidance",
    "__version__",
]

_LAZY = {
    "GaussianMixture": ".math",
    "IsoGaussian": ".math",
    "AnalyticGMDenoiser": ".models",
    "gmflow_sample": ".solvers",
    "flow_sigmas": ".solvers",
    "ProbabilisticGuidance": ".guidance",
    "ClassifierFreeGuidance": ".guidance",
    "probabilistic_guidance": ".guidance",
}


def __getattr__(name: str):
    if name in _LAZY:  # importing gmfm stays cheap; the parts load on first use
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
