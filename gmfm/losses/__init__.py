"""Training losses (GMFlow transition / NLL loss, flow-matching L2) and noise-level samplers."""

from .flow_losses import MIN_SIGMA, FlowMatchingLoss, GMFlowLoss, Loss, LossOutput, drop_labels
from .time_sampler import TimeSampler

__all__ = ["GMFlowLoss", "FlowMatchingLoss", "Loss", "LossOutput", "TimeSampler", "drop_labels", "MIN_SIGMA"]
