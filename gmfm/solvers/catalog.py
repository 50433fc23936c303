"""Every solver under one name, for the command line, experiments and benchmarks.

GM solvers (need a GMFlow model): ``gmsde``, ``gmsde2`` (GM-SDE, order 1/2), ``gmode``, ``gmode2`` (GM-ODE,
order 1/2, with substeps). The policy solver ``piflow`` samples a pi-Flow student (:mod:`gmfm.distill`): one
call per step, its GM policy integrated densely. Flow solvers (any model, GM models through their mean): see
:data:`gmfm.solvers.flow_solvers.FLOW_SOLVERS`. ``nfe`` counts network evaluations (one per step; a
guided step batches its two evaluations in one call).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ..guidance.base import Guidance
from ..math.random import Generators
from ..models.protocols import Denoiser, SpectrumModel, VelocityModel
from .flow_solvers import FLOW_SOLVERS, flow_sample, mean_velocity
from .gm_solver import gmflow_sample
from .second_order import DEFAULT_COEFS

GM_SOLVERS = ("gmsde", "gmsde2", "gmode", "gmode2")
POLICY_SOLVERS = ("piflow",)
SOLVER_NAMES = GM_SOLVERS + POLICY_SOLVERS + FLOW_SOLVERS
#: Total GM-ODE substeps the paper spreads over a run (2-D: ceil(128 / NFE) per step).
SUBSTEP_BUDGET = 128
#: Most GM-ODE substeps per step on images (the paper: 16 at NFE 8, 4 at NFE 32).
IMAGE_MAX_SUBSTEPS = 16


def default_substeps(nfe: int, max_substeps: int | None = None) -> int:
    """GM-ODE substeps per step: ceil(128 / nfe), at most ``max_substeps`` (images:
    :data:`IMAGE_MAX_SUBSTEPS`; 2-D: no cap)."""
    n = max(1, math.ceil(SUBSTEP_BUDGET / nfe))
    return n if max_substeps is None else min(n, max_substeps)


def is_gm_solver(solver: str) -> bool:
    return solver in GM_SOLVERS


def sample_with(
    solver: str,
    model: Denoiser | VelocityModel,
    noise: Tensor,
    nfe: int,
    *,
    shift: float = 1.0,
    substeps: int | None = None,
    condition: Any = None,
    uncond_condition: Any = None,
    guidance: Guidance | None = None,
    spectrum: SpectrumModel | None = None,
    second_order_coefs: tuple[float, float] = DEFAULT_COEFS,
    generator: Generators = None,
    progress: bool = False,
    policy_options: dict[str, Any] | None = None,
) -> Tensor:
    """Sample (B, C, H, W) from ``noise`` (B, C, H, W) with the named solver.

    Args:
        solver: one of :data:`SOLVER_NAMES`.
        model: a denoiser (GM solvers; flow solvers use its mean) or a velocity model (flow solvers).
        nfe: network evaluations.
        substeps: GM-ODE substeps per step; default :func:`default_substeps` for GM-ODE, 1 for GM-SDE.
        guidance: any :class:`gmfm.guidance.Guidance` (flow solvers accept those that guide point
            predictions, i.e. CFG); ``uncond_condition`` is then required.
        spectrum: turns on spectral sampling for the GM-SDE solvers (ignored by the others).
        second_order_coefs: (ca, cb) damping of the 2nd-order GM solvers (see
            :func:`gmfm.solvers.second_order_correction`).
        generator: drives every random draw.
        policy_options: ``piflow`` only: ``total_substeps``, ``final_step_size_scale``, ``temperature`` (see
            :func:`gmfm.solvers.piflow.piflow_sample`).
    """
    if solver not in SOLVER_NAMES:
        raise ValueError(f"solver must be one of {SOLVER_NAMES}, got {solver!r}")
    if solver in POLICY_SOLVERS:
        from .piflow import piflow_sample

        if guidance is not None and guidance.needs_uncond:
            raise ValueError("piflow samples a distilled student, whose teacher's guidance is built in: no guidance")
        return piflow_sample(model, noise, nfe, shift=shift, condition=condition, progress=progress,
                             **(policy_options or {}))
    if is_gm_solver(solver):
        method = "sde" if solver.startswith("gmsde") else "ode"
        if substeps is None:
            substeps = default_substeps(nfe) if method == "ode" else 1
        return gmflow_sample(
            model, noise, nfe, method=method, order=2 if solver.endswith("2") else 1, substeps=substeps,
            shift=shift, condition=condition, uncond_condition=uncond_condition, guidance=guidance,
            second_order_coefs=second_order_coefs, spectrum=spectrum if method == "sde" else None,
            generator=generator, progress=progress,
        ).sample
    return flow_sample(
        mean_velocity(model), noise, nfe, solver=solver, shift=shift, condition=condition,
        uncond_condition=uncond_condition, guidance=guidance, generator=generator, progress=progress,
    ).sample
