"""Training: the loop, EMA schedules and atomic safetensors checkpoints."""

from .checkpoint import Checkpoint, load_checkpoint, load_optimizer_state, load_trained_model, save_checkpoint
from .ema import EMA, karras_ema_beta, rampup_ema_beta
from .trainer import (
    CHECKPOINT_NAME,
    NonFiniteLossError,
    TrainConfig,
    TrainResult,
    make_optimizer,
    step_generator,
    train,
)

__all__ = [
    "train",
    "TrainConfig",
    "TrainResult",
    "NonFiniteLossError",
    "step_generator",
    "make_optimizer",
    "CHECKPOINT_NAME",
    "EMA",
    "karras_ema_beta",
    "rampup_ema_beta",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_optimizer_state",
    "load_trained_model",
]
