"""Training losses and noise-level samplers."""

from .flow_losses import MIN_SIGMA, FlowMatchingLoss, GMFlowLoss, LossOutput, drop_labels
from .time_sampler import TimeSampler

__all__ = ["GMFlowLoss", "FlowMatchingLoss", "LossOutput", "TimeSampler", "drop_labels", "MIN_SIGMA"]
