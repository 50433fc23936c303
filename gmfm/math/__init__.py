"""GM math: the containers and pure functions of GMFlow (see SPEC.md, "Operations")."""

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
]
