"""A readable training loop for any model, loss and data.

Reproducibility by construction: step ``i`` draws all of its randomness (data, noise levels, noise, label
dropout) from a generator seeded with (seed, i). Resuming from a checkpoint therefore continues with
exactly the batches and losses an uninterrupted run would have had; no RNG state needs saving.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..losses.flow_losses import LossOutput
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, load_optimizer_state, save_checkpoint
from .ema import EMA, karras_ema_beta, rampup_ema_beta

LossFn = Callable[[nn.Module, dict[str, Tensor], torch.Generator], LossOutput]
BatchFn = Callable[[int, torch.Generator], dict[str, Tensor]]


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss or the gradient norm became NaN or infinite."""


@dataclass
class TrainConfig:
    """Optimisation settings (defaults follow the paper's 2-D recipe where it has one).

    optimizer: "adam" or "adamw"; weight decay is not applied to biases and norm weights (1-D params).
    warmup_iters: linear learning-rate warm-up from 0.1% of ``lr``.
    grad_clip: max gradient norm (None: no clipping), applied from iteration ``grad_clip_begin``.
    ema: "none", "karras" (power schedule, ``ema_gamma``) or "rampup" (``ema_kimg``, ``ema_rampup``).
    checkpoint_every / log_every: in iterations; the last iteration always checkpoints.
    """

    iterations: int
    batch_size: int
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
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 100
    device: str = "cpu"
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.ema not in ("none", "karras", "rampup"):
            raise ValueError(f"ema must be 'none', 'karras' or 'rampup', got {self.ema!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        self.betas = tuple(self.betas)

    def ema_beta(self, step: int) -> float:
        if self.ema == "karras":
            return karras_ema_beta(step, self.ema_gamma)
        return rampup_ema_beta(step, self.batch_size, self.ema_kimg, self.ema_rampup)

    def lr_at(self, step: int) -> float:
        if self.warmup_iters <= 0:
            return self.lr
        return self.lr * (1e-3 + (1 - 1e-3) * min(1.0, step / self.warmup_iters))


@dataclass
class TrainResult:
    model: nn.Module
    ema_model: nn.Module | None
    step: int
    checkpoint: Path | None
    losses: dict[int, float] = field(default_factory=dict)  # step -> loss of the steps run in this call


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of iteration ``step``: a fixed function of (seed, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, betas=config.betas)


def _to_device(batch: dict[str, Tensor], device: str) -> dict[str, Tensor]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


class _CsvLog:
    """Scalar log in CSV; on resume, rows after the checkpoint's step are dropped (they will be rerun)."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            if rows:
                self.fields = list(rows[0])
            with open(path, "w", newline="") as f:
                if self.fields:
                    writer = csv.DictWriter(f, self.fields)
                    writer.writeheader()
                    writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(row)
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, self.fields).writeheader()
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)


def _tensorboard(out_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def train(
    model: nn.Module,
    loss_fn: LossFn,
    batch_fn: BatchFn,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = True,
    model_meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` for ``config.iterations`` iterations.

    Args:
        model: any module; ``loss_fn(model, batch, generator)`` returns a :class:`LossOutput`.
        batch_fn: ``batch_fn(step, generator) -> dict`` of CPU tensors (moved to ``config.device`` here).
        out_dir: where ``checkpoint.safetensors`` and ``log.csv`` go (None: nothing is written).
        resume: continue from ``out_dir/checkpoint.safetensors`` when it exists.
        model_meta: JSON-able description stored in the checkpoint (how to rebuild the model).

    Raises:
        NonFiniteLossError: the loss or gradient norm became NaN/inf; the last good checkpoint is kept.
    """
    device = config.device
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    ema = EMA(model) if config.ema != "none" else None
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    start = 0
    if resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, device)
        ckpt.load_into(model, "model")
        if ema is not None:
            ckpt.load_into(ema.model, "ema")
        load_optimizer_state(ckpt, optimizer)
        start = ckpt.step
    if ema is not None:
        ema.model.to(device)
    log = writer = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        log = _CsvLog(out / "log.csv", start)
        writer = _tensorboard(out, config.tensorboard)
    meta = {"model": model_meta or {"class": type(model).__name__}, "train_config": dataclasses.asdict(config)}
    result = TrainResult(model, ema.model if ema else None, start, ckpt_path if start else None)
    params = [p for p in model.parameters() if p.requires_grad]

    window: list[float] = []
    tic = time.perf_counter()
    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations, disable=not progress,
               desc="training", dynamic_ncols=True)
    for step in bar:
        generator = step_generator(config.seed, step)
        batch = _to_device(batch_fn(step, generator), device)
        lr = config.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        output = loss_fn(model, batch, generator)
        loss = output.loss
        loss_value = float(loss.detach())  # the one read-back of the loss per step
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(_stop_message("loss", loss_value, step, result.checkpoint))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = config.grad_clip if (config.grad_clip is not None and step >= config.grad_clip_begin) else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(_stop_message("gradient norm", grad_norm, step, result.checkpoint))
        optimizer.step()
        if ema is not None:
            ema.update(model, config.ema_beta(step))

        done = step + 1
        result.losses[step] = loss_value
        result.step = done
        window.append(loss_value)
        if done % config.log_every == 0 or done == config.iterations:
            row = {"step": done, "loss": sum(window) / len(window), "lr": lr, "grad_norm": grad_norm,
                   "seconds_per_iter": (time.perf_counter() - tic) / len(window),
                   **{k: float(v) for k, v in output.logs.items() if k != "loss"}}
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if log is not None:
                log.write(row)
            if writer is not None:
                for key, value in row.items():
                    if key != "step":
                        writer.add_scalar(key, value, done)
            window, tic = [], time.perf_counter()
        if ckpt_path is not None and (done % config.checkpoint_every == 0 or done == config.iterations):
            save_checkpoint(ckpt_path, model, done, ema=ema.model if ema else None, optimizer=optimizer,
                            metadata=meta)
            result.checkpoint = ckpt_path
    if writer is not None:
        writer.close()
    return result


def _stop_message(what: str, value: float, step: int, checkpoint: Path | None) -> str:
    kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
    return f"training stopped: the {what} is {value} at iteration {step}; {kept}"
