"""Samplers: the official time grid, GM-SDE / GM-ODE of order 1 and 2, and baseline flow solvers."""

from .by_name import GM_SOLVERS, SOLVER_NAMES, default_substeps, sample_with
from .flow_solvers import FLOW_SOLVERS, FlowSampleOutput, flow_sample, mean_velocity
from .gm_solver import Denoiser, GMFlowSampleOutput, GMFlowStep, concat_conditions, gmflow_sample
from .second_order import DEFAULT_COEFS, SecondOrderOutput, SecondOrderState, second_order_correction
from .timesteps import flow_sigmas

__all__ = [
    "sample_with",
    "SOLVER_NAMES",
    "GM_SOLVERS",
    "FLOW_SOLVERS",
    "default_substeps",
    "flow_sample",
    "FlowSampleOutput",
    "mean_velocity",
    "Denoiser",
    "gmflow_sample",
    "GMFlowSampleOutput",
    "GMFlowStep",
    "concat_conditions",
    "second_order_correction",
    "SecondOrderState",
    "SecondOrderOutput",
    "DEFAULT_COEFS",
    "flow_sigmas",
]


def __getattr__(name: str):
    # the diffusers-style schedulers import diffusers: only when asked for
    if name in ("FlowEulerODEScheduler", "GMFlowSDEScheduler"):
        from . import schedulers

        return getattr(schedulers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
