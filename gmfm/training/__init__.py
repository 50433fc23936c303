"""Training: the loop (one process or torchrun + DDP), its settings, EMA schedules, atomic verified
checkpoints and the run-folder lock."""

from .checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    load_checkpoint,
    load_optimizer_state,
    load_trained_model,
    read_checkpoint_metadata,
    resolve_checkpoint,
    save_checkpoint,
    slim_checkpoint,
    weights_relative_difference,
)
from .config import TrainConfig
from .distributed import Distributed, setup_distributed, teardown_distributed
from .ema import EMA, karras_ema_beta, rampup_ema_beta
from .run_lock import RunFolderBusyError, RunLock
from .trainer import (
    LossModule,
    NonFiniteLossError,
    SettingsChangedError,
    TrainResult,
    make_optimizer,
    step_generator,
    train,
)

__all__ = [
    "train",
    "TrainConfig",
    "TrainResult",
    "LossModule",
    "NonFiniteLossError",
    "SettingsChangedError",
    "RunFolderBusyError",
    "RunLock",
    "Distributed",
    "setup_distributed",
    "teardown_distributed",
    "step_generator",
    "make_optimizer",
    "EMA",
    "karras_ema_beta",
    "rampup_ema_beta",
    "CHECKPOINT_NAME",
    "Checkpoint",
    "save_checkpoint",
    "slim_checkpoint",
    "load_checkpoint",
    "read_checkpoint_metadata",
    "load_optimizer_state",
    "load_trained_model",
    "resolve_checkpoint",
    "weights_relative_difference",
]
