"""Samplers in plain PyTorch: the official time grid, GM-SDE / GM-ODE of order 1 and 2, baseline flow
solvers, and the catalogue of named solvers. (The diffusers schedulers live in :mod:`gmfm.pipelines`.)"""

from .catalog import (
    GM_SOLVERS,
    IMAGE_MAX_SUBSTEPS,
    POLICY_SOLVERS,
    SOLVER_NAMES,
    default_substeps,
    is_gm_solver,
    sample_with,
)
from .piflow import GMPolicy, piflow_sample
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
    "POLICY_SOLVERS",
    "GMPolicy",
    "piflow_sample",
    "GM_SOLVERS",
    "FLOW_SOLVERS",
    "DEFAULT_COEFS",
    "IMAGE_MAX_SUBSTEPS",
]
