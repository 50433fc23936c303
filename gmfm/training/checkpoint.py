"""Training checkpoints in safetensors, written atomically, with clear errors on bad files.

One file holds the model (``model/...``), its EMA (``ema/...``), the optimizer state
(``optimizer/<param index>/<key>``) and JSON metadata (step, optimizer hyper-parameters, how to rebuild the
model, the training configuration). A save writes a temporary file next to the target and renames it,
so a crash mid-save never destroys the previous checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

FORMAT = "gmfm-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.safetensors"  # the trainer's file in its output folder


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded checkpoint: ``tensors`` by name and decoded ``metadata`` (step, model, config...)."""

    path: Path
    tensors: dict[str, Tensor]
    metadata: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.metadata["step"])

    def state_dict(self, prefix: str) -> dict[str, Tensor]:
        """The tensors under ``prefix/`` (e.g. "model", "ema") with the prefix removed."""
        start = prefix + "/"
        return {k[len(start):]: v for k, v in self.tensors.items() if k.startswith(start)}

    def load_into(self, module: nn.Module, prefix: str = "model") -> None:
        """Load ``prefix/`` weights into ``module``; a ValueError names the file and every mismatch."""
        state = self.state_dict(prefix)
        if not state:
            raise ValueError(f"checkpoint {self.path} has no '{prefix}' weights")
        expected = module.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
        if missing or unexpected or shapes:
            problems = []
            if missing:
                problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            if unexpected:
                problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
            if shapes:
                problems.append("shape mismatch " + "; ".join(shapes[:5]))
            raise ValueError(f"checkpoint {self.path} does not match the {type(module).__name__} ({prefix}): "
                             + ", ".join(problems))
        module.load_state_dict(state)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer/{index}/{key}"] = value if isinstance(value, Tensor) else torch.tensor(value)
    return tensors, state["param_groups"]


def save_checkpoint(path: str | Path, model: nn.Module, step: int, *, ema: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, metadata: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema/{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    meta: dict[str, Any] = {**(metadata or {}), "format": FORMAT, "step": step}
    if optimizer is not None:
        opt_tensors, param_groups = _optimizer_tensors(optimizer)
        tensors.update({k: v.detach().cpu().contiguous() for k, v in opt_tensors.items()})
        meta["optimizer_param_groups"] = param_groups
    encoded = {k: json.dumps(v) for k, v in meta.items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=encoded)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint; FileNotFoundError / ValueError name the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            raw = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"checkpoint {path} is truncated or corrupt: {err}") from err
    try:
        metadata = {k: json.loads(v) for k, v in raw.items()}
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint {path} has unreadable metadata: {err}") from err
    if metadata.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not a gmfm checkpoint (format {metadata.get('format')!r}, "
                         f"expected {FORMAT!r})")
    return Checkpoint(path, tensors, metadata)


def load_optimizer_state(checkpoint: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    """Restore the optimizer state saved by :func:`save_checkpoint`."""
    groups = checkpoint.metadata.get("optimizer_param_groups")
    if groups is None:
        raise ValueError(f"checkpoint {checkpoint.path} has no optimizer state")
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in checkpoint.tensors.items():
        if name.startswith("optimizer/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = value
    current = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise ValueError(f"checkpoint {checkpoint.path}: optimizer parameter groups do not match the model")
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def load_trained_model(path: str | Path, expected_class: str, build: Callable[[dict[str, Any]], nn.Module],
                       use_ema: bool = True, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from a trainer checkpoint (a file, or the folder holding
    ``checkpoint.safetensors``): ``build(model_metadata)`` makes the module, then the EMA weights (when
    present and ``use_ema``) or the raw weights are loaded. Returns (model in eval mode, model metadata)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    ckpt = load_checkpoint(path, device)
    meta = ckpt.metadata.get("model", {})
    if meta.get("class") != expected_class:
        raise ValueError(f"checkpoint {path} holds a {meta.get('class')!r} model, expected {expected_class!r}")
    model = build(meta)
    ckpt.load_into(model, "ema" if use_ema and ckpt.state_dict("ema") else "model")
    return model.to(device).eval(), meta
