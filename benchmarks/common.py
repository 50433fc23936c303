"""Shared benchmark plumbing: a timer, the machine description and the result writer."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

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


def machine_info(device: torch.device | str = "cpu") -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, object] = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def write_results(name: str, payload: dict, markdown: str, out_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` (markdown prefixed with command, machine and date)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": command_line(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(payload.get("device", "cpu")),
    }
    payload = {**meta, **payload}
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    machine = meta["machine"]
    header = (
        f"Command: `{meta['command']}`  \n"
        f"Date: {meta['date']}  \n"
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads)" + (f", GPU {machine['gpu']}" if "gpu" in machine else "") + "\n\n"
    )
    md_path.write_text(header + markdown)
    return json_path, md_path
