"""Optimisation settings of a training run, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..math.validation import check_float_in, check_positive_int
from .ema import karras_ema_beta, rampup_ema_beta

OPTIMIZERS = ("adam", "adamw", "adamw8bit")
EMA_KINDS = ("none", "karras", "rampup")
PRECISIONS = ("no", "bf16")


@dataclass
class TrainConfig:
    """Optimisation settings (defaults follow the paper's 2-D recipe where it has one).

    iterations: optimizer steps. batch_size: the GLOBAL batch (split over processes under torchrun).
    micro_batch_size: per-process micro-batch for gradient accumulation (None: the whole share at once).
    optimizer: "adam", "adamw" or "adamw8bit" (bitsandbytes); weight decay is not applied to biases and
        norm weights (1-D parameters).
    warmup_iters: linear learning-rate warm-up from 0.1% of ``lr``.
    grad_clip: max gradient norm (None: no clipping), applied from iteration ``grad_clip_begin``.
    ema: "none", "karras" (power schedule, ``ema_gamma``) or "rampup" (``ema_kimg``, ``ema_rampup``).
    mixed_precision: "no" or "bf16" (autocast of the forward pass; float32 weights and loss).
    gradient_checkpointing: recompute activations in the backward pass (models that support it).
    checkpoint_every / log_every: in iterations; the last iteration always checkpoints.
    device: "cpu", "cuda" or "auto" (CUDA when available); under torchrun each process takes its GPU.
    """

    iterations: int
    batch_size: int
    micro_batch_size: int | None = None
    lr: float = 2e-4
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_iters: int = 0
    grad_clip: float | None = None
    grad_clip_begin: int = 0
    ema: str = "none"
    ema_gamma: float = 7.0
    ema_kimg: float = 30_000.0
    ema_rampup: float | None = 0.05
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 100
    device: str = "auto"
    tensorboard: bool = False

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "checkpoint_every", "log_every"):
            check_positive_int(name, getattr(self, name))
        for name in ("warmup_iters", "grad_clip_begin", "seed"):
            check_positive_int(name, getattr(self, name), minimum=0)
        if self.micro_batch_size is not None:
            check_positive_int("micro_batch_size", self.micro_batch_size)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.ema not in EMA_KINDS:
            raise ValueError(f"ema must be one of {EMA_KINDS}, got {self.ema!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        check_float_in("lr", self.lr, 0.0, 1.0, low_open=True)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = tuple(check_float_in("betas", b, 0.0, 1.0, high_open=True) for b in self.betas)
        check_float_in("weight_decay", self.weight_decay, 0.0, 10.0)
        if self.grad_clip is not None:
            check_float_in("grad_clip", self.grad_clip, 0.0, math.inf, low_open=True)
        check_float_in("ema_gamma", self.ema_gamma, 0.0, 1e6, low_open=True)
        check_float_in("ema_kimg", self.ema_kimg, 0.0, 1e9, low_open=True)
        if self.ema_rampup is not None:
            check_float_in("ema_rampup", self.ema_rampup, 0.0, 1e3, low_open=True)
        for name in ("gradient_checkpointing", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a device name such as 'cpu' or 'cuda', got {self.device!r}")

    def ema_beta(self, step: int) -> float:
        if self.ema == "karras":
            return karras_ema_beta(step, self.ema_gamma)
        return rampup_ema_beta(step, self.batch_size, self.ema_kimg, self.ema_rampup)

    def lr_at(self, step: int) -> float:
        if self.warmup_iters <= 0:
            return self.lr
        return self.lr * (1e-3 + (1 - 1e-3) * min(1.0, step / self.warmup_iters))
