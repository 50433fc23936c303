"""Every solver under one name, for the command line and benchmarks.

GM solvers (need a GMFlow model): ``gmsde``, ``gmsde2`` (GM-SDE, order 1/2), ``gmode``, ``gmode2`` (GM-ODE,
order 1/2, with substeps). Flow solvers (any model, GM models through their mean): see
:data:`gmfm.solvers.flow_solvers.FLOW_SOLVERS`. ``nfe`` counts network evaluations (one per step; a
guided step batches its two evaluations in one call).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .flow_solvers import FLOW_SOLVERS, flow_sample, mean_velocity
from .gm_solver import gmflow_sample

GM_SOLVERS = ("gmsde", "gmsde2", "gmode", "gmode2")
SOLVER_NAMES = GM_SOLVERS + FLOW_SOLVERS


def default_substeps(nfe: int, budget: int = 128) -> int:
    """GM-ODE substeps per step: ceil(budget / nfe) (the paper's 2-D choice, budget 128)."""
    return max(1, math.ceil(budget / nfe))


def sample_with(
    solver: str,
    model: Any,
    noise: Tensor,
    nfe: int,
    *,
    shift: float = 1.0,
    substeps: int | None = None,
    condition: Any = None,
    uncond_condition: Any = None,
    guidance_scale: float = 0.0,
    orthogonal_guidance: float = 1.0,
    cfg_scale: float = 1.0,
    spectrum: Any = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Sample (B, C, H, W) with the named solver. ``substeps`` defaults to :func:`default_substeps` for
    GM-ODE and 1 for GM-SDE; ``guidance_scale`` is probabilistic guidance (GM solvers; ``orthogonal_guidance``
    its projection weight), ``cfg_scale`` is
    vanilla CFG (GM solvers: on the GM mean; flow solvers: on the velocity); ``spectrum`` turns on spectral
    sampling for the GM-SDE solvers."""
    if solver not in SOLVER_NAMES:
        raise ValueError(f"solver must be one of {SOLVER_NAMES}, got {solver!r}")
    if solver in GM_SOLVERS:
        method = "sde" if solver.startswith("gmsde") else "ode"
        if substeps is None:
            substeps = default_substeps(nfe) if method == "ode" else 1
        return gmflow_sample(
            model, noise, nfe, method=method, order=2 if solver.endswith("2") else 1, substeps=substeps,
            shift=shift, condition=condition, uncond_condition=uncond_condition, guidance_scale=guidance_scale,
            orthogonal_guidance=orthogonal_guidance, cfg_scale=None if cfg_scale == 1.0 else cfg_scale, spectrum=spectrum if method == "sde" else None,
            generator=generator, progress=progress,
        ).sample
    if guidance_scale:
        raise ValueError("guidance_scale (probabilistic guidance) needs a GM solver; use cfg_scale")
    return flow_sample(
        mean_velocity(model), noise, nfe, solver=solver, shift=shift, condition=condition,
        uncond_condition=uncond_condition, cfg_scale=cfg_scale, generator=generator, progress=progress,
    ).sample
