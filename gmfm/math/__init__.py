"""GM math: the containers and pure functions of GMFlow (Gaussian products, GM moments and densities,
u <-> x0, the forward / reverse transitions, re-conditioning for GM-ODE substeps, spectral sampling).

Conventions are the official GMFlow ones: noise level sigma in [0, 1] with x_t = (1 - sigma) x0 + sigma noise,
a GM over (..., C, H, W) stored as means (..., K, C, H, W), log-weights (..., K, 1, H, W) and one log-std
per sample (..., 1, 1, 1, 1).
"""

from .containers import GaussianMixture, IsoGaussian
from .flow import (
    DenoisingGMConverter,
    convert_denoising_gm,
    convert_denoising_gm_mean,
    euler_step,
    forward_diffusion,
    forward_transition,
    reverse_transition,
    sde_step,
    u_to_x0,
    x0_to_u,
)
from .gm_ops import (
    gm_log_prob,
    gm_mean,
    gm_mul_iso_gaussian,
    gm_nll,
    gm_sample,
    gm_temperature,
    gm_to_iso_gaussian,
    gm_weights,
    iso_gaussian_mul_iso_gaussian,
    official_floors,
    variance_floor,
)

__all__ = [
    "GaussianMixture",
    "IsoGaussian",
    "gm_weights",
    "gm_mean",
    "gm_to_iso_gaussian",
    "gm_log_prob",
    "gm_nll",
    "iso_gaussian_mul_iso_gaussian",
    "gm_mul_iso_gaussian",
    "gm_sample",
    "gm_temperature",
    "u_to_x0",
    "x0_to_u",
    "forward_diffusion",
    "forward_transition",
    "reverse_transition",
    "sde_step",
    "euler_step",
    "DenoisingGMConverter",
    "convert_denoising_gm",
    "convert_denoising_gm_mean",
    "official_floors",
    "variance_floor",
]
