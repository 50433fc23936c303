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
from collections.abc import Callable, Iterator
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

    def __init__(self, model: nn.Module, loss: Loss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: dict[str, Tensor], draws: BatchDraws) -> LossOutput:
        return self.loss(self.model, batch, draws)


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
    resume: bool = True,
    metadata: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    allow_changed_settings: bool = False,
    upgrade_settings: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` for ``config.iterations`` iterations, under torchrun on every process.

    Args:
        model: any module; ``loss(model, batch, draws)`` returns a LossOutput. Parts the loss trains beside
            the network (GMFlow's ``model.spectrum_net``) are submodules of ``model``.
        loss: see :class:`gmfm.losses.Loss`.
        data: draws each iteration's batch (:class:`gmfm.data.TrainingData`).
        config: :class:`TrainConfig`; ``batch_size`` is the global batch.
        out_dir: where ``checkpoint.safetensors``, ``log.csv`` and ``timing.csv`` go (None: nothing is
            written). The folder is locked for the duration of the run.
        resume: continue from ``out_dir/checkpoint.safetensors`` when it exists.
        metadata: JSON-able description stored in the checkpoint (how to rebuild the model).
        settings: what defines the run (stored; a resume with other settings raises
            :class:`SettingsChangedError` listing the differences, unless ``allow_changed_settings``).
        upgrade_settings: maps the settings saved by an older version to today's names before comparing.

    Returns:
        :class:`TrainResult` (on every process; ``rank`` says which).

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
        run = TrainingRun(model, loss, data, config, out, dist, rows, metadata or {}, settings or {})
        if resume:
            run.resume(allow_changed_settings, upgrade_settings)
        return run.loop(progress)


@dataclass(frozen=True)
class StepStats:
    """One iteration's figures, averaged over every process and micro-batch: ``loss`` and the loss's other
    logs (e.g. ``logstd``, ``spectral``), and whether any process was asked to stop."""

    loss: float
    logs: dict[str, float]
    stop: bool


class TrainingRun:
    """The state of one training run and its steps: :meth:`resume`, :meth:`compute` (forward and backward
    of this process's share), :meth:`update` (clip, optimizer, EMA), :meth:`log`, :meth:`checkpoint` and
    :meth:`final_check`; :meth:`loop` runs them. Every figure it logs is reduced over the processes, so
    ``log.csv`` is the same for 1 or N processes."""

    def __init__(self, model: nn.Module, loss: Loss, data: TrainingData, config: TrainConfig, out: Path | None,
                 dist: Distributed, rows: list[slice], metadata: dict[str, Any], settings: dict[str, Any]) -> None:
        self.config, self.data, self.dist, self.rows, self.settings = config, data, dist, rows, settings
        self.model = model.to(dist.device).train()
        if config.gradient_checkpointing:
            _enable_gradient_checkpointing(model)
        self.optimizer = make_optimizer(model, config)
        self.ema = EMA(model) if config.ema != "none" else None
        if self.ema is not None:
            self.ema.model.to(dist.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.module: nn.Module = LossModule(model, loss)
        if dist.active:
            self.module = torch.nn.parallel.DistributedDataParallel(
                self.module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
        self.autocast = (torch.autocast(dist.device.type, dtype=torch.bfloat16) if config.mixed_precision == "bf16"
                         else nullcontext())
        self.out = out
        self.ckpt_path = out / CHECKPOINT_NAME if out is not None else None
        self.metadata = {**metadata, "train_config": asdict(config), "settings": settings}
        self.start = 0
        self.result = TrainResult(model, self.ema.model if self.ema else None, 0, None, rank=dist.rank)
        self._logs: tuple[_CsvLog, _CsvLog] | None = None
        self._writer = None

    # ----- the steps -----------------------------------------------------------------------------------------
    def resume(self, allow_changed_settings: bool = False,
               upgrade_settings: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        """Continue from the run folder's checkpoint, if there is one (settings must match, after
        ``upgrade_settings`` of the saved ones)."""
        if self.ckpt_path is None or not self.ckpt_path.exists():
            return
        ckpt = load_checkpoint(self.ckpt_path)
        saved = ckpt.metadata.get("settings", {})
        if saved and upgrade_settings is not None:
            saved = upgrade_settings(saved)
        changes = settings_differences(saved, self.settings) if saved else []
        if changes and not allow_changed_settings:
            raise SettingsChangedError(
                f"{self.out} holds a run with other settings: " + "; ".join(changes)
                + " (resume with the original settings, start a new --out, or allow the change explicitly)")
        ckpt.load_into(self.model, "model")
        if self.ema is not None:
            ckpt.load_into(self.ema.model, "ema")
        load_optimizer_state(ckpt, self.optimizer)
        self.start = self.result.step = ckpt.step
        self.result.checkpoint = self.ckpt_path

    def compute(self, step: int, grad: bool = True, stop: bool = False) -> StepStats:
        """Forward (and backward) of this process's micro-batches of iteration ``step``; the loss and logs
        averaged over all processes (one collective), and whether any process asked to stop."""
        cfg, device = self.config, self.dist.device
        total = torch.zeros((), dtype=torch.float64, device=device)
        logs: dict[str, Tensor] = {}
        for i, part in enumerate(self.rows):
            batch = self.data.batch(cfg.batch_size, step_generator(cfg.seed, step, 0), part)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            draws = BatchDraws(step_generator(cfg.seed, step, 1), cfg.batch_size, part)
            last = i == len(self.rows) - 1
            sync = self.module.no_sync() if (self.dist.active and grad and not last) else nullcontext()
            with sync, torch.set_grad_enabled(grad):
                with self.autocast:
                    output = self.module(batch, draws)
                scaled = output.loss * (1.0 / len(self.rows))
                if grad:
                    scaled.backward()
            total = total + scaled.detach().double()
            for key, value in output.logs.items():
                if key != "loss":
                    logs[key] = logs.get(key, 0.0) + value.detach().double() / len(self.rows)
        names = sorted(logs)
        stats = torch.stack([total, torch.tensor(float(stop), dtype=torch.float64, device=device),
                             *(logs[k].to(device) for k in names)])
        try:
            stats = self.dist.all_sum(stats)
        except RuntimeError as err:  # a peer died: say so in one line instead of a collective's traceback
            raise RuntimeError(f"process {self.dist.rank} lost the other processes of the run (one of them stopped "
                               f"or died; see its output): {str(err).splitlines()[0]}") from err
        n = self.dist.world_size
        return StepStats(float(stats[0]) / n, {k: float(v) / n for k, v in zip(names, stats[2:])}, bool(stats[1] > 0))

    def update(self, step: int) -> float:
        """Clip the gradients, take the optimizer step and update the EMA; the gradient norm."""
        cfg = self.config
        clip = cfg.grad_clip if (cfg.grad_clip is not None and step >= cfg.grad_clip_begin) else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(self._stop_message("gradient norm", grad_norm, step))
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, cfg.ema_beta(step))
        return grad_norm

    def log(self, done: int, losses: list[float], grad_norm: float, logs: dict[str, float], seconds: float) -> dict:
        """Write one row of ``log.csv`` (deterministic) and ``timing.csv`` (wall clock), rank 0 only."""
        row = {"step": done, "loss": sum(losses) / len(losses), "lr": self.config.lr_at(done - 1),
               "grad_norm": grad_norm, **logs}
        if not self.dist.is_main:
            return row
        if self._logs is not None:
            self._logs[0].write(row)
            self._logs[1].write({"step": done, "seconds_per_iter": seconds, "processes": self.dist.world_size})
        if self._writer is not None:
            for key, value in {**row, "seconds_per_iter": seconds}.items():
                if key != "step":
                    self._writer.add_scalar(key, value, done)
        return row

    def checkpoint(self, step: int) -> None:
        """Save (rank 0) the weights that gave iteration ``step`` a finite loss; every process waits."""
        if self.ckpt_path is not None and self.dist.is_main:
            save_checkpoint(self.ckpt_path, self.model, step, ema=self.ema.model if self.ema else None,
                            optimizer=self.optimizer, metadata=self.metadata)
        self.dist.barrier()
        self.result.checkpoint = self.ckpt_path

    def final_check(self) -> None:
        """Verify the final weights with the next iteration's loss, then write the last checkpoint."""
        if self.result.step > self.start or (self.ckpt_path is not None and not self.ckpt_path.exists()):
            with torch.no_grad():
                stats = self.compute(self.config.iterations, grad=False)
            if not math.isfinite(stats.loss):
                raise NonFiniteLossError(self._stop_message("loss", stats.loss, self.config.iterations))
            self.checkpoint(self.config.iterations)

    # ----- the loop -------------------------------------------------------------------------------------------
    def loop(self, progress: bool = True) -> TrainResult:
        """Iterations ``start`` .. ``config.iterations`` (a checkpoint every ``checkpoint_every``, a log row
        every ``log_every``); SIGTERM checkpoints and returns at the next iteration."""
        cfg, result = self.config, self.result
        if self.out is not None and self.dist.is_main:  # rows after the checkpoint's step are dropped: rerun
            self._logs = (_CsvLog(self.out / "log.csv", self.start), _CsvLog(self.out / "timing.csv", self.start))
            self._writer = _tensorboard(self.out, cfg.tensorboard)
        window: list[float] = []
        tic = time.perf_counter()
        bar = tqdm(range(self.start, cfg.iterations), initial=self.start, total=cfg.iterations,
                   disable=not (progress and self.dist.is_main), desc="training", dynamic_ncols=True)
        try:
            with _stop_on_sigterm() as sigterm:
                for step in bar:
                    for group in self.optimizer.param_groups:
                        group["lr"] = cfg.lr_at(step)
                    self.optimizer.zero_grad(set_to_none=True)
                    stats = self.compute(step, grad=True, stop=sigterm[0])
                    if not math.isfinite(stats.loss):
                        raise NonFiniteLossError(self._stop_message("loss", stats.loss, step))
                    # the weights of iteration `step` gave a finite loss: they may be checkpointed
                    if step > self.start and (step % cfg.checkpoint_every == 0 or stats.stop):
                        self.checkpoint(step)
                    if stats.stop:
                        result.stopped_early = True
                        return result
                    grad_norm = self.update(step)
                    done = step + 1
                    result.losses[step], result.step = stats.loss, done
                    window.append(stats.loss)
                    if done % cfg.log_every == 0 or done == cfg.iterations:
                        row = self.log(done, window, grad_norm, stats.logs, (time.perf_counter() - tic) / len(window))
                        bar.set_postfix(loss=f"{row['loss']:.4f}")
                        window, tic = [], time.perf_counter()
            self.final_check()
        finally:
            if self._writer is not None:
                self._writer.close()
        return result

    def _stop_message(self, what: str, value: float, step: int) -> str:
        if self.result.checkpoint is not None:
            kept = (f"the last checkpoint verified to be finite and loadable is {self.result.checkpoint} (iteration "
                    f"{_step_of(self.result.checkpoint)})")
        else:
            kept = "no checkpoint was written yet"
        return (f"training stopped: the {what} is {value} at iteration {step}; {kept}. Lower the learning rate, "
                "clip gradients (grad_clip) or check the data")


def _step_of(path: Path) -> int | str:
    try:
        return load_checkpoint(path).step
    except (ValueError, FileNotFoundError) as err:
        return f"unreadable: {err}"
