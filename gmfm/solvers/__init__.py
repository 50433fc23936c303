"""Samplers: the official time grid, GM-SDE / GM-ODE of order 1 and 2."""

from .gm_solver import Denoiser, GMFlowSampleOutput, GMFlowStep, concat_conditions, gmflow_sample
from .second_order import DEFAULT_COEFS, SecondOrderOutput, SecondOrderState, second_order_correction
from .timesteps import flow_sigmas

__all__ = [
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
