"""Result files of experiments and benchmarks: JSON + a markdown table, each headed by the exact
command, the machine and the date."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch


def machine_info(device: torch.device | str = "cpu") -> dict[str, object]:
    """CPU model, cores, threads, Python / torch versions, platform (and the GPU for a CUDA device)."""
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
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def command_line() -> str:
    """The command that runs this process, as a user would type it."""
    program = sys.argv[0]
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if program.endswith(("gmfm", "__main__.py")) or (spec is not None and spec.name.startswith("gmfm")):
        head = ["gmfm"]
    elif spec is not None and spec.name:  # python -m package.module
        head = ["python", "-m", spec.name]
    else:
        head = ["python", os.path.relpath(program)]
    return " ".join(shlex.quote(a) for a in [*head, *sys.argv[1:]])


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def write_results(name: str, payload: dict[str, Any], markdown: str, out_dir: str | Path,
                  command: str | None = None) -> tuple[Path, Path]:
    """Write a result pair, each headed by the command, the machine and the date.

    Args:
        name: file stem (``<name>.json``, ``<name>.md``).
        payload: JSON-able results (a "device" key selects the machine description).
        markdown: the table(s) people read.
        out_dir: the results folder.
        command: the command to record (default: this process's command line).

    Returns:
        (json path, markdown path).
    """
    out_dir = Path(out_dir)
    meta = {
        "command": command or command_line(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(payload.get("device", "cpu")),
    }
    json_path = write_json(out_dir / f"{name}.json", {**meta, **payload})
    machine = meta["machine"]
    header = (
        f"Command: `{meta['command']}`  \n"
        f"Date: {meta['date']}  \n"
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads)" + (f", GPU {machine['gpu']}" if "gpu" in machine else "") + "\n\n"
    )
    md_path = out_dir / f"{name}.md"
    md_path.write_text(header + markdown)
    return json_path, md_path


def markdown_table(rows: dict[str, dict[str, float]], keys: list[str], columns: list[str], first: str = "config",
                   digits: int = 4) -> str:
    """A markdown table.

    Args:
        rows: {row name: {column: value}}; keys: the rows to show, in order; columns: the columns.
        first: the header of the first column; digits: decimals of floats.

    Returns:
        The table as markdown text.
    """
    out = [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for key in keys:
        cells = []
        for c in columns:
            value = rows[key].get(c)
            cells.append("" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value)))
        out.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
