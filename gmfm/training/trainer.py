"""A readable training loop for any model, loss and data, on one process or many (torchrun + DDP).

Reproducibility by construction: iteration ``i`` draws its randomness from generators seeded with
(seed, i): one for the data, one for the loss (noise levels, noise, label dropout). Every draw is made
for the global batch and sliced (:class:`gmfm.math.random.BatchDraws`), so

- resuming from a checkpoint continues exactly as the uninterrupted run (no RNG state is saved);
- the same config and seed give the same weights on 1 or N processes (up to float summation order).

A checkpoint at iteration S is written only once the loss of iteration S, computed with its weights, is
known to be finite: every checkpoint the loop leaves behind has been verified.
"""

from __future__ import annotations

import csv
import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data.base import TrainingData
from ..losses.flow_losses import Loss, LossOutput
from ..math.random import BatchDraws
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, load_optimizer_state, save_checkpoint
from .config import TrainConfig
from .distributed import Distributed, setup_distributed
from .ema import EMA
from .run_lock import RunLock


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss or the gradient norm became NaN or infinite."""


class SettingsChangedError(ValueError):
    """A run folder is resumed with settings that differ from the ones it was started with."""


@dataclass
class TrainResult:
    """What :func:`train` leaves: the model (and EMA copy), the step reached, the checkpoint written,
    the loss of every iteration run in this call, and whether a stop signal ended it early."""

    model: nn.Module
    ema_model: nn.Module | None
    step: int
    checkpoint: Path | None
    losses: dict[int, float] = field(default_factory=dict)
    stopped_early: bool = False
    rank: int = 0

    def __repr__(self) -> str:
        return (f"TrainResult(model={type(self.model).__name__}, step={self.step}, checkpoint={self.checkpoint}, "
                f"losses=<{len(self.losses)} iterations>, stopped_early={self.stopped_early})")


def step_generator(seed: int, step: int, stream: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of one iteration's randomness.

    Args:
        seed: the run's seed; step: the iteration; stream: 0 for the data, 1 for the loss.
        device: where the generator draws.

    Returns:
        A generator seeded with a fixed function of (seed, step, stream).
    """
    g = torch.Generator(device=device)
    return g.manual_seed((seed * 1_000_003 + step * 7_919 + stream * 104_729 + 12_345) % (2**63 - 1))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam / AdamW / 8-bit AdamW with weight decay on matrices only (not on biases and norm weights)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ValueError("optimizer 'adamw8bit' needs bitsandbytes: pip install 'gmfm[bnb]' "
                             "(or choose optimizer = 'adamw')") from err
        return bnb.optim.AdamW8bit(groups, lr=config.lr, betas=config.betas)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, betas=config.betas)


class LossModule(nn.Module):
    """The model and its loss as one module (what DistributedDataParallel wraps):
    ``forward(batch, draws) -> LossOutput``."""

    def __init__(self, model: nn.Module, loss: Loss, spectrum_net: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.spectrum_net = spectrum_net
        self.loss = loss

    def forward(self, batch: dict[str, Tensor], draws: BatchDraws) -> LossOutput:
        return self.loss(self.model, batch, draws, spectrum_net=self.spectrum_net)


class _CsvLog:
    """Scalar log in CSV; on resume, rows after the checkpoint's step are dropped (they will be rerun)."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        self.fields: list[str] | None = None
        rows: list[dict] = []
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
    except ImportError:
        print("note: tensorboard is not installed (pip install 'gmfm[tensorboard]'); logging to log.csv only",
              file=sys.stderr)
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


@contextmanager
def _stop_on_sigterm() -> Iterator[list[bool]]:
    """A flag set by SIGTERM (the main thread only): the loop checkpoints and returns at the next step."""
    flag = [False]
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: flag.__setitem__(0, True))
    except ValueError:  # not the main thread
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def settings_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences ``"table.key: old -> new"`` between two nested settings tables."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_differences(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _local_rows(config: TrainConfig, dist: Distributed) -> list[slice]:
    """This process's micro-batches as row ranges of the global batch."""
    if config.batch_size % dist.world_size:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of processes "
                         f"({dist.world_size})")
    share = config.batch_size // dist.world_size
    micro = config.micro_batch_size or share
    if share % micro:
        raise ValueError(f"micro_batch_size {micro} must divide the per-process batch {share} "
                         f"(batch_size {config.batch_size} / {dist.world_size} processes)")
    start = dist.rank * share
    return [slice(start + i, start + i + micro) for i in range(0, share, micro)]


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    found = False
    for module in model.modules():
        if getattr(module, "_supports_gradient_checkpointing", False) and hasattr(module,
                                                                                  "enable_gradient_checkpointing"):
            module.enable_gradient_checkpointing()
            found = True
    if not found:
        raise ValueError("gradient_checkpointing = true, but the model has no part that supports it")


def train(
    model: nn.Module,
    loss: Loss,
    data: TrainingData,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    spectrum_net: nn.Module | None = None,
    resume: bool = True,
    metadata: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    allow_changed_settings: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` for ``config.iterations`` iterations, under torchrun on every process.

    Args:
        model: any module; ``loss(model, batch, draws, spectrum_net=spectrum_net)`` returns a LossOutput.
        loss: see :class:`gmfm.losses.Loss`.
        data: draws each iteration's batch (:class:`gmfm.data.TrainingData`).
        config: :class:`TrainConfig`; ``batch_size`` is the global batch.
        out_dir: where ``checkpoint.safetensors`` and ``log.csv`` go (None: nothing is written). The folder
            is locked for the duration of the run.
        spectrum_net: a submodule of ``model`` that the loss trains beside it (GMFlow's SpectrumMLP).
        resume: continue from ``out_dir/checkpoint.safetensors`` when it exists.
        metadata: JSON-able description stored in the checkpoint (how to rebuild the model).
        settings: what defines the run (stored; a resume with other settings raises
            :class:`SettingsChangedError` listing the differences, unless ``allow_changed_settings``).

    Raises:
        NonFiniteLossError: the loss or gradient norm became NaN/inf; the message names the last
            checkpoint verified to be finite and loadable.
    """
    dist = setup_distributed(config.device)
    rows = _local_rows(config, dist)
    out = Path(out_dir) if out_dir is not None else None
    lock = RunLock(out) if (out is not None and dist.is_main) else None
    if out is not None and dist.is_main:
        if out.exists() and not out.is_dir():
            raise ValueError(f"the run folder {out} exists and is not a folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PermissionError(f"cannot create the run folder {out}: {err.strerror or err}") from None
    with lock if lock is not None else nullcontext():
        return _train(model, loss, data, config, out, dist, rows, spectrum_net, resume, metadata or {},
                      settings or {}, allow_changed_settings, progress)


def _train(model, loss, data, config, out, dist, rows, spectrum_net, resume, metadata, settings,
           allow_changed_settings, progress) -> TrainResult:
    device = dist.device
    model.to(device).train()
    if config.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    optimizer = make_optimizer(model, config)
    ema = EMA(model) if config.ema != "none" else None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    start, last_good = 0, None
    if resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        saved = ckpt.metadata.get("settings", {})
        changes = settings_differences(saved, settings) if saved else []
        if changes and not allow_changed_settings:
            raise SettingsChangedError(
                f"{out} holds a run with other settings: " + "; ".join(changes)
                + " (resume with the original settings, start a new --out, or allow the change explicitly)")
        ckpt.load_into(model, "model")
        if ema is not None:
            ckpt.load_into(ema.model, "ema")
        load_optimizer_state(ckpt, optimizer)
        start, last_good = ckpt.step, ckpt_path
    if ema is not None:
        ema.model.to(device)
    log = timing = writer = None
    if out is not None and dist.is_main:
        log = _CsvLog(out / "log.csv", start)  # deterministic: equal for equal runs, resumed or not
        timing = _CsvLog(out / "timing.csv", start)  # wall-clock, apart
        writer = _tensorboard(out, config.tensorboard)
    meta = {**metadata, "train_config": asdict(config), "settings": settings}
    result = TrainResult(model, ema.model if ema else None, start, last_good, rank=dist.rank)
    params = [p for p in model.parameters() if p.requires_grad]
    module: nn.Module = LossModule(model, loss, spectrum_net)
    if dist.active:
        module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if config.mixed_precision == "bf16"
                else nullcontext())

    def micro_batches(step: int, grad: bool) -> tuple[float, dict[str, float]]:
        """Forward (and backward) of this process's share of iteration ``step``; the loss averaged over
        every process, and the logs of this process."""
        total, logs = torch.zeros((), dtype=torch.float64, device=device), {}
        for i, part in enumerate(rows):
            batch = data.batch(config.batch_size, step_generator(config.seed, step, 0), part)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            draws = BatchDraws(step_generator(config.seed, step, 1), config.batch_size, part)
            last = i == len(rows) - 1
            sync = module.no_sync() if (dist.active and grad and not last) else nullcontext()
            with sync, torch.set_grad_enabled(grad):
                with autocast:
                    output = module(batch, draws)
                scaled = output.loss * (1.0 / len(rows))
                if grad:
                    scaled.backward()
            total = total + scaled.detach().double()
            logs = {k: float(v) for k, v in output.logs.items() if k != "loss"}
        return total, logs

    def finite_everywhere(total: Tensor, stop: bool) -> tuple[float, bool]:
        """The loss averaged over the processes, and whether any of them was asked to stop."""
        stats = torch.stack([total, torch.tensor(float(stop), dtype=torch.float64, device=total.device)])
        try:
            stats = dist.all_sum(stats)
        except RuntimeError as err:  # a peer died: say so in one line instead of a collective's traceback
            raise RuntimeError(f"process {dist.rank} lost the other processes of the run (one of them stopped or "
                               f"died; see its output): {str(err).splitlines()[0]}") from err
        return float(stats[0]) / dist.world_size, bool(stats[1] > 0)

    def checkpoint(step: int) -> None:
        if ckpt_path is not None and dist.is_main:
            save_checkpoint(ckpt_path, model, step, ema=ema.model if ema else None, optimizer=optimizer,
                            metadata=meta)
        dist.barrier()
        result.checkpoint = ckpt_path

    def stop_message(what: str, value: float, step: int) -> str:
        if result.checkpoint is not None:
            kept = f"the last checkpoint verified to be finite and loadable is {result.checkpoint} (iteration " \
                   f"{_step_of(result.checkpoint)})"
        else:
            kept = "no checkpoint was written yet"
        return (f"training stopped: the {what} is {value} at iteration {step}; {kept}. Lower the learning rate, "
                "clip gradients (grad_clip) or check the data")

    window: list[float] = []
    tic = time.perf_counter()
    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations,
               disable=not (progress and dist.is_main), desc="training", dynamic_ncols=True)
    with _stop_on_sigterm() as sigterm:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            total, logs = micro_batches(step, grad=True)
            loss_value, stop = finite_everywhere(total, sigterm[0])
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(stop_message("loss", loss_value, step))
            # the weights of iteration `step` gave a finite loss: they may be checkpointed
            if step > start and (step % config.checkpoint_every == 0 or stop):
                checkpoint(step)
            if stop:
                result.stopped_early = True
                break
            clip = config.grad_clip if (config.grad_clip is not None and step >= config.grad_clip_begin) else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            if not math.isfinite(grad_norm):
                raise NonFiniteLossError(stop_message("gradient norm", grad_norm, step))
            optimizer.step()
            if ema is not None:
                ema.update(model, config.ema_beta(step))

            done = step + 1
            result.losses[step] = loss_value
            result.step = done
            window.append(loss_value)
            if dist.is_main and (done % config.log_every == 0 or done == config.iterations):
                row = {"step": done, "loss": sum(window) / len(window), "lr": config.lr_at(step),
                       "grad_norm": grad_norm, **logs}
                seconds = (time.perf_counter() - tic) / len(window)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                if log is not None:
                    log.write(row)
                    timing.write({"step": done, "seconds_per_iter": seconds, "processes": dist.world_size})
                if writer is not None:
                    for key, value in {**row, "seconds_per_iter": seconds}.items():
                        if key != "step":
                            writer.add_scalar(key, value, done)
                window, tic = [], time.perf_counter()
        else:
            if result.step > start or (ckpt_path is not None and not ckpt_path.exists()):
                # verify the final weights with the next iteration's loss before the last checkpoint
                with torch.no_grad():
                    total, _ = micro_batches(config.iterations, grad=False)
                loss_value, _ = finite_everywhere(total, False)
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(stop_message("loss", loss_value, config.iterations))
                checkpoint(config.iterations)
    if writer is not None:
        writer.close()
    return result


def _step_of(path: Path) -> int | str:
    try:
        return load_checkpoint(path).step
    except (ValueError, FileNotFoundError) as err:
        return f"unreadable: {err}"
