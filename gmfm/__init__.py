"""gmfm: Gaussian Mixture Flow Matching (GMFlow, Chen et al., ICML 2025) in PyTorch.

Folders: ``math`` (GM containers and operations), ``models`` (denoisers), ``guidance``
(probabilistic guidance, CFG), ``solvers`` (GM-SDE / GM-ODE).
"""

from .guidance import cfg_gm, cfg_velocity, probabilistic_guidance
from .math import GaussianMixture, IsoGaussian
from .models import AnalyticGMDenoiser
from .solvers import flow_sigmas, gmflow_sample

__version__ = "0.1.0"

__all__ = [
    "GaussianMixture",
    "IsoGaussian",
    "AnalyticGMDenoiser",
    "gmflow_sample",
    "flow_sigmas",
    "probabilistic_guidance",
    "cfg_gm",
    "cfg_velocity",
    "__version__",
]
