"""Baseline solvers for plain flow-matching models, on the same time grid and call contract as the GM solvers.

A velocity model is ``model(x_t (B, C, H, W), sigma (B,), condition) -> u (B, C, H, W)``; a GMFlow
denoiser becomes one through :func:`mean_velocity` (its GM mean is the flow-matching velocity).

- ``euler``: the flow ODE, Euler steps (the official FlowEulerODE);
- ``ddpm_small`` / ``ddpm_large``: ancestral DDPM steps with the posterior (small) or the prior-matched
  (large) variance, as the official GMFlowSDE scheduler in ``mean`` mode;
- ``dpmpp2m``, ``dpmpp2m_sde``, ``unipc``: diffusers' DPMSolverMultistepScheduler (DPM++ 2M, DPM++ 2M SDE)
  and UniPCMultistepScheduler (bh2, order 2) with flow sigmas and ``flow_prediction``.

The multistep solvers work in log-SNR, which is -inf at sigma = 1; their first noise level is therefore
1 - 1/1000 (diffusers' own flow grid starts there too). The others start at sigma = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..guidance.base import Guidance, point_prediction_error
from ..math.containers import GaussianMixture
from ..math.flow import euler_step, sde_step, u_to_x0
from ..math.gm_ops import gm_mean
from ..math.random import Generators, check_generators, randn
from ..math.validation import check_finite, check_positive_int
from ..models.protocols import Denoiser, VelocityModel
from .gm_solver import as_images, guided_condition, working_dtype
from .timesteps import flow_sigmas

FLOW_SOLVERS = ("euler", "ddpm_small", "ddpm_large", "dpmpp2m", "dpmpp2m_sde", "unipc")
#: First noise level of the log-SNR multistep solvers.
MULTISTEP_SIGMA_MAX = 1.0 - 1.0 / 1000


@dataclass(frozen=True, eq=False)
class FlowSampleOutput:
    """sample: (B, C, H, W) at sigma = 0; x0_predictions: one (B, C, H, W) per evaluation if requested."""

    sample: Tensor
    x0_predictions: list[Tensor] | None = None


def mean_velocity(denoiser: Denoiser | VelocityModel) -> VelocityModel:
    """Wrap a denoiser as a velocity model.

    A returned u-GM becomes its mean (the flow-matching velocity, so GMFlow models run with the baseline
    solvers too); a returned tensor passes through.

    Args:
        denoiser: ``(x_t (B, C, H, W), sigma (B,), condition)`` -> u-GM (B, K, C, H, W) or u (B, C, H, W).

    Returns:
        The velocity model ``(x_t, sigma, condition) -> u (B, C, H, W)``.
    """

    def velocity(x_t: Tensor, sigma: Tensor, condition: Any = None) -> Tensor:
        out = denoiser(x_t, sigma, condition)
        return gm_mean(out) if isinstance(out, GaussianMixture) else out

    return velocity


def ddpm_large_std(sigma: float, sigma_to: float) -> float:
    """Std of the 'large variance' DDPM step in flow time (official GMFlowSDE, variance_mode="large").

    Args:
        sigma: the current noise level.
        sigma_to: the target noise level.

    Returns:
        The std.
    """
    alpha, alpha_to = 1 - sigma, 1 - sigma_to
    ratio = (sigma_to / max(sigma, 1e-6)) * (alpha / max(alpha_to, 1e-6))
    sqrt_beta = max(1 - ratio**2, 0.0) ** 0.5 * sigma
    return sqrt_beta * ((alpha_to**2 + sigma_to**2) / max(alpha**2 + sigma**2, 1e-6)) ** 0.5


def ddpm_step(x0: Tensor, x_t: Tensor, sigma: float, sigma_to: float, noise: Tensor, variance: str = "small") -> Tensor:
    """Ancestral DDPM step from sigma to sigma_to given an x0 prediction.

    The posterior mean plus ``noise`` times the posterior ("small", the GM-SDE transition) or the
    prior-matched ("large", :func:`ddpm_large_std`) std.

    Args:
        x0: the x0 prediction (B, C, H, W).
        x_t: current samples (B, C, H, W).
        sigma: noise level of ``x_t``.
        sigma_to: the target noise level, <= sigma.
        noise: standard normal noise (B, C, H, W).
        variance: "small" or "large".

    Returns:
        x_to, (B, C, H, W).

    Raises:
        ValueError: for an unknown ``variance``, sigma_to > sigma, or an invalid tensor or noise level.
    """
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    if variance == "small":
        return sde_step(x0, x_t, sigma, sigma_to, noise)
    return sde_step(x0, x_t, sigma, sigma_to, torch.zeros_like(noise)) + ddpm_large_std(sigma, sigma_to) * noise


def _diffusers_scheduler(solver: str, sigmas: Tensor):
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    common = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                  solver_order=2, final_sigmas_type="zero")
    if solver == "unipc":
        scheduler = UniPCMultistepScheduler(**common, solver_type="bh2")
    else:
        algorithm = "dpmsolver++" if solver == "dpmpp2m" else "sde-dpmsolver++"
        scheduler = DPMSolverMultistepScheduler(**common, algorithm_type=algorithm)
    steps = len(sigmas) - 1
    scheduler.set_timesteps(steps)
    # Our grid (float32, as diffusers keeps it), not diffusers' own spacing.
    sigmas = sigmas.clone()
    sigmas[0] = min(float(sigmas[0]), MULTISTEP_SIGMA_MAX)
    scheduler.sigmas = sigmas.float()
    scheduler.timesteps = sigmas[:-1].float() * 1000
    scheduler.set_begin_index(0)
    return scheduler


@torch.no_grad()
def flow_sample(
    model: VelocityModel,
    noise: Tensor,
    steps: int,
    *,
    solver: str = "euler",
    shift: float = 1.0,
    condition: Any = None,
    uncond_condition: Any = None,
    guidance: Guidance | None = None,
    generator: Generators = None,
    return_x0: bool = False,
    progress: bool = False,
) -> FlowSampleOutput:
    """Sample a plain flow model with a baseline solver from noise at sigma = 1.

    Args:
        model: ``(x_t, sigma (B',), condition) -> u``; under CFG called once per step on [cond; uncond].
        noise: (B, C, H, W), or (B, D) points (the model then sees (B, D, 1, 1)); half precision is promoted
            to float32.
        steps: network evaluations, >= 1.
        solver: one of :data:`FLOW_SOLVERS`.
        shift: time shift of the grid (as for the GM solvers).
        condition: passed to the model; under guidance it sees [condition; uncond_condition].
        uncond_condition: the unconditional condition, required under guidance.
        guidance: a guidance that acts on point predictions (``ClassifierFreeGuidance(scale)``:
            u_uncond + scale (u_cond - u_uncond)); None = unguided.
        generator: drives the noise of the stochastic solvers: one ``torch.Generator``, one per sample, or
            None.
        return_x0: whether to also return the x0 prediction of every evaluation.
        progress: whether to show a progress bar.

    Returns:
        :class:`FlowSampleOutput` with ``sample`` (B, C, H, W) ((B, D) for points) and, if ``return_x0``,
        the ``x0_predictions`` in the same shape.

    Raises:
        ValueError: for invalid or non-finite noise, ``steps`` < 1, an unknown solver, a bad generator list,
            a guidance that does not guide point predictions, a missing ``uncond_condition`` under guidance,
            or a tensor condition without one row per sample.
    """
    noise, points = as_images(noise, "noise")
    noise = noise.to(working_dtype(noise.dtype))
    check_finite("noise", noise)
    check_positive_int("steps", steps)
    if solver not in FLOW_SOLVERS:
        raise ValueError(f"solver must be one of {FLOW_SOLVERS}, got {solver!r}")
    generator = check_generators(generator, noise.shape[0])
    if guidance is not None and guidance.needs_uncond and not guidance.guides_point_predictions:
        raise ValueError(point_prediction_error(guidance))
    guidance, model_condition = guided_condition(guidance, condition, uncond_condition, noise.shape[0])

    grid = flow_sigmas(steps, shift)
    multistep = solver in ("dpmpp2m", "dpmpp2m_sde", "unipc")
    scheduler = _diffusers_scheduler(solver, grid) if multistep else None
    sigmas = scheduler.sigmas.double().tolist() if multistep else grid.tolist()
    batch = noise.shape[0]
    x = noise
    x0_predictions: list[Tensor] = []
    for i in tqdm(range(steps), disable=not progress, desc=f"flow sampling ({solver})"):
        sigma, sigma_to = sigmas[i], sigmas[i + 1]
        x_in = torch.cat([x, x]) if guidance is not None else x
        u = model(x_in, torch.full((x_in.shape[0],), sigma, dtype=x.dtype, device=x.device), model_condition)
        u = u.to(x.dtype)
        if guidance is not None:
            u = guidance.guide_prediction(u[:batch], u[batch:])
        if return_x0:
            x0_predictions.append(u_to_x0(u, x, sigma))
        if scheduler is not None:
            extra = {"variance_noise": randn(x.shape, generator, x)} if solver == "dpmpp2m_sde" else {}
            x = scheduler.step(u, scheduler.timesteps[i], x, return_dict=False, **extra)[0]
        elif solver == "euler":
            x = euler_step(u_to_x0(u, x, sigma), x, sigma, sigma_to)
        else:
            x = ddpm_step(u_to_x0(u, x, sigma), x, sigma, sigma_to, randn(x.shape, generator, x),
                          variance=solver.removeprefix("ddpm_"))
    if points:
        x, x0_predictions = x.flatten(1), [p.flatten(1) for p in x0_predictions]
    return FlowSampleOutput(x, x0_predictions if return_x0 else None)
