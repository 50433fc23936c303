"""Shared benchmark plumbing: interleaved timers, the mean-velocity error of a model; results are written by
gmfm.experiments.results."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gmfm.experiments.results import machine_info  # noqa: F401
from gmfm.experiments.results import write_results as _write_results
from gmfm.math import gm_mean

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_calls(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu", min_seconds: float = 0.5,
               warmup: int = 3, max_rounds: int = 200) -> dict[str, float]:
    """Median wall time (ms) of each function, measured in interleaved rounds.

    Interleaving (a, b, a, b, ...) exposes the candidates to the same machine and allocator state, which
    matters on CPU where fresh large buffers cost page faults.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start_all = time.perf_counter()
    rounds = 0
    while rounds < 5 or (time.perf_counter() - start_all < min_seconds * len(fns) and rounds < max_rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append((time.perf_counter() - start) * 1e3)
        rounds += 1
    return {name: statistics.median(ts) for name, ts in times.items()}


def time_call(fn: Callable[[], object], device: torch.device | str = "cpu", **kwargs) -> float:
    """Median wall time (ms) of one function."""
    return time_calls({"fn": fn}, device, **kwargs)["fn"]


def stop_if_interrupted(result) -> None:
    """End a driver that trains several runs in a row once one of them was stopped by SIGTERM (it has
    checkpointed): without this the loop would go on to the next run. Rerunning the command resumes."""
    if result is not None and result.stopped_early:
        raise SystemExit("stopped by SIGTERM after a checkpoint; rerun the same command to resume")


def write_results(name: str, payload: dict, markdown: str, out_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` (headed by command, machine and date) under ``out_dir``."""
    return _write_results(name, payload, markdown, out_dir)


@torch.no_grad()
def mean_velocity_error(model: Callable, x0: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor,
                        sigma: float) -> float:
    """MSE of a model's predicted mean velocity (the GM mean; K = 1 for flow matching) against u = noise - x0
    at x_t = (1 - sigma) x0 + sigma noise. x0, noise: (N, C, H, W); labels: (N,)."""
    x_t, u = (1 - sigma) * x0 + sigma * noise, noise - x0
    return (gm_mean(model(x_t, torch.full((len(x0),), sigma), labels)) - u).square().mean().item()
