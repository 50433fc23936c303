"""Samplers: the official time grid, GM-SDE / GM-ODE of order 1 and 2, baseline flow solvers, and the
diffusers-style schedulers (imported on first use)."""

from .by_name import GM_SOLVERS, IMAGE_MAX_SUBSTEPS, SOLVER_NAMES, default_substeps, is_gm_solver, sample_with
from .flow_solvers import FLOW_SOLVERS, FlowSampleOutput, flow_sample, mean_velocity
from .gm_solver import GMFlowSampleOutput, GMFlowStep, concat_conditions, gmflow_sample
from .second_order import DEFAULT_COEFS, SecondOrderOutput, SecondOrderState, second_order_correction
from .timesteps import flow_sigmas

__all__ = [
    "gmflow_sample",
    "flow_sample",
    "sample_with",
    "flow_sigmas",
    "mean_velocity",
    "default_substeps",
    "is_gm_solver",
    "second_order_correction",
    "concat_conditions",
    "GMFlowSampleOutput",
    "GMFlowStep",
    "FlowSampleOutput",
    "SecondOrderState",
    "SecondOrderOutput",
    "SOLVER_NAMES",
    "GM_SOLVERS",
    "FLOW_SOLVERS",
    "DEFAULT_COEFS",
    "IMAGE_MAX_SUBSTEPS",
    "FlowEulerODEScheduler",
    "GMFlowSDEScheduler",
]

_LAZY = {"FlowEulerODEScheduler": ".schedulers", "GMFlowSDEScheduler": ".schedulers"}


def __getattr__(name: str):
    # the diffusers-style schedulers import diffusers: only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
