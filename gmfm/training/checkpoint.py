"""Training checkpoints in safetensors, written atomically, verified on load.

One file holds the model (``model/...``), its EMA (``ema/...``), the optimizer state
(``optimizer/<param index>/<key>``) and JSON metadata (step, optimizer hyper-parameters, the run's
settings, a CRC-32 checksum of every tensor's bytes). A save writes a temporary file next to the target
and renames it, so a crash mid-save never destroys the previous checkpoint; temporary files left by a
killed save are removed by the next save. Loading checks the format, the metadata and the checksums and
names the file in every error.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

FORMAT = "gmfm-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.safetensors"  # the trainer's file in its output folder


def _tensor_crc(t: Tensor) -> int:
    data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return zlib.crc32(memoryview(data))


def tensors_checksum(tensors: dict[str, Tensor]) -> str:
    """CRC-32 over every tensor's name, dtype, shape and bytes, in name order.

    Args:
        tensors: tensors by name.

    Returns:
        The checksum as 8 hex digits.
    """
    crc = 0
    for name in sorted(tensors):
        t = tensors[name]
        crc = zlib.crc32(f"{name}|{t.dtype}|{tuple(t.shape)}".encode(), crc)
        crc = zlib.crc32(_tensor_crc(t).to_bytes(4, "little"), crc)
    return f"{crc:08x}"


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded checkpoint: ``tensors`` by name and decoded ``metadata`` (step, model, settings...)."""

    path: Path
    tensors: dict[str, Tensor]
    metadata: dict[str, Any]

    @property
    def step(self) -> int:
        """The training step saved in the metadata."""
        return int(self.metadata["step"])

    def state_dict(self, prefix: str) -> dict[str, Tensor]:
        """The tensors under ``prefix/`` with the prefix removed.

        Args:
            prefix: e.g. "model", "ema".

        Returns:
            The tensors by name (empty if there are none).
        """
        start = prefix + "/"
        return {k[len(start):]: v for k, v in self.tensors.items() if k.startswith(start)}

    def load_into(self, module: nn.Module, prefix: str = "model") -> None:
        """Load ``prefix/`` weights into ``module``.

        Args:
            module: the module to load into.
            prefix: "model" or "ema".

        Raises:
            ValueError: naming the file and every mismatch, if there are no such weights or their names or
                shapes do not match ``module``'s state dict.
        """
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

    def check_finite(self, prefix: str | None = None) -> None:
        """Check that no floating-point tensor (under ``prefix/``) holds NaN or inf.

        Args:
            prefix: only check tensors under ``prefix/``; None checks all.

        Raises:
            ValueError: naming the first tensor holding NaN or inf.
        """
        for name, t in self.tensors.items():
            if (prefix is None or name.startswith(prefix + "/")) and t.is_floating_point() and \
                    not bool(torch.isfinite(t).all()):
                raise ValueError(f"checkpoint {self.path}: tensor {name} holds NaN or inf values")


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer/{index}/{key}"] = value if isinstance(value, Tensor) else torch.tensor(value)
    return tensors, state["param_groups"]


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of earlier saves of ``path`` whose writer process is gone.

    Args:
        path: the checkpoint file; its temporaries are ``.<name>.tmp-<pid>`` in the same folder.
    """
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except ValueError:
            pid = 0  # not a name our saves write: stale
        if pid == os.getpid():
            continue
        if pid > 0:  # (the run folder's lock keeps writers of other hosts out)
            try:
                os.kill(pid, 0)
                continue  # its writer still runs
            except (ProcessLookupError, OverflowError):
                pass
            except PermissionError:
                continue
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: str | Path, model: nn.Module, step: int, *, ema: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, metadata: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, fsync, then rename).

    Args:
        path: the checkpoint file; missing parent folders are created.
        model: its state dict is saved under ``model/``.
        step: the training step.
        ema: if given, its state dict is saved under ``ema/``.
        optimizer: if given, its state is saved under ``optimizer/`` and its param groups in the metadata.
        metadata: extra JSON-serialisable metadata (e.g. ``model``, ``settings``).

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: (nothing written) if a model or EMA weight is NaN or inf.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema/{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"refusing to save {path}: weight {name} holds NaN or inf values")
    meta: dict[str, Any] = {**(metadata or {}), "format": FORMAT, "step": step}
    if optimizer is not None:
        opt_tensors, param_groups = _optimizer_tensors(optimizer)
        tensors.update({k: v.detach().cpu().contiguous() for k, v in opt_tensors.items()})
        meta["optimizer_param_groups"] = param_groups
    meta["checksum"] = tensors_checksum(tensors)
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


def _check_metadata(path: Path, metadata: dict[str, Any]) -> None:
    if metadata.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not a gmfm checkpoint (format {metadata.get('format')!r}, "
                         f"expected {FORMAT!r})")
    step = metadata.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint {path} has an invalid step {step!r} in its metadata (expected an integer >= 0)")
    for key in ("model", "settings"):
        if key in metadata and not isinstance(metadata[key], dict):
            raise ValueError(f"checkpoint {path} has invalid '{key}' metadata (expected a table)")


def _read_file(path: Path, tensors: bool) -> tuple[dict[str, str], dict[str, Tensor]]:
    """The raw metadata (and the tensors, if asked) of a safetensors file, with one-line errors."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = list(f.keys()) if tensors else []
            return f.metadata() or {}, {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path} is truncated or corrupt: {err}") from err


def _decode_metadata(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    try:
        metadata = {k: json.loads(v) for k, v in raw.items()}
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint {path} has unreadable metadata: {err}") from err
    _check_metadata(path, metadata)
    return metadata


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """A checkpoint's metadata (``step``, ``settings``, ``model``, ...), checked as :func:`load_checkpoint`
    checks it, without reading a tensor: cheap enough to ask a run folder's step many times.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: naming the file, if it is not a readable gmfm checkpoint or its metadata is invalid.
    """
    path = Path(path)
    return _decode_metadata(path, _read_file(path, tensors=False)[0])


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint (format, metadata, checksum).

    Args:
        path: the checkpoint file.
        device: where to put the tensors.

    Returns:
        The :class:`Checkpoint`.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: naming the file and what is wrong, if it is truncated or corrupt, not a gmfm checkpoint,
            has invalid metadata, or does not match its checksum.
    """
    path = Path(path)
    raw, tensors = _read_file(path, tensors=True)
    metadata = _decode_metadata(path, raw)
    expected = metadata.get("checksum")
    if expected is not None and tensors_checksum(tensors) != expected:
        raise ValueError(f"checkpoint {path} is damaged: its tensor data does not match the checksum in its "
                         "metadata")
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return Checkpoint(path, tensors, metadata)


def load_optimizer_state(checkpoint: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    """Restore the optimizer state saved by :func:`save_checkpoint`.

    Args:
        checkpoint: the loaded checkpoint.
        optimizer: the optimizer to restore, with the same parameter groups.

    Raises:
        ValueError: if the checkpoint has no optimizer state or its parameter groups have other sizes.
    """
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


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file of a path that is a checkpoint file or a run folder.

    Args:
        path: a checkpoint file, or the run folder holding ``checkpoint.safetensors``.

    Returns:
        The file path (not checked to exist).
    """
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load_trained_model(path: str | Path, build: Callable[[Checkpoint], nn.Module], use_ema: bool = True,
                       device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Rebuild a trained model from a checkpoint.

    ``build(checkpoint)`` makes the module from the checkpoint's metadata, then the EMA weights (when
    present and ``use_ema``) or the raw weights are checked to be finite and loaded.

    Args:
        path: a checkpoint file or a run folder (:func:`resolve_checkpoint`).
        build: makes the untrained module from the checkpoint.
        use_ema: whether to prefer the EMA weights.
        device: where to put the model.

    Returns:
        (model in eval mode on ``device``, the checkpoint).

    Raises:
        FileNotFoundError: if the checkpoint does not exist.
        ValueError: if the checkpoint is invalid, its weights are not finite or do not match the model.
    """
    ckpt = load_checkpoint(resolve_checkpoint(path))
    model = build(ckpt)
    prefix = "ema" if use_ema and ckpt.state_dict("ema") else "model"
    ckpt.check_finite(prefix)
    ckpt.load_into(model, prefix)
    return model.to(device).eval(), ckpt


def slim_checkpoint(path: str | Path, out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the inference-only part of a checkpoint: its EMA weights (its raw weights if it has none), step
    and metadata, without the raw weights and the optimizer state, optionally cast to ``dtype``.

    A third to a quarter of the size (float32), or half that again in float16: what a run is shared or
    archived as once it has finished training. :func:`load_trained_model` loads it as it loads the full file
    (into the model's own dtype); the trainer cannot resume from it.

    Args:
        path: a checkpoint file or a run folder (:func:`resolve_checkpoint`).
        out: the file to write (atomically); may be ``path`` itself.
        dtype: a floating dtype for the floating-point weights (None: keep theirs).

    Returns:
        ``out`` as a Path.
    """
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    ckpt = load_checkpoint(resolve_checkpoint(path))
    prefix = "ema" if ckpt.state_dict("ema") else "model"
    tensors = {}
    for name, t in ckpt.state_dict(prefix).items():
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[f"{prefix}/{name}"] = t.contiguous()
    meta = {k: v for k, v in ckpt.metadata.items() if k not in ("checksum", "optimizer_param_groups")}
    meta["checksum"] = tensors_checksum(tensors)
    if dtype is not None:
        meta["weights_dtype"] = str(dtype).removeprefix("torch.")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def weights_relative_difference(a: str | Path, b: str | Path, prefixes: tuple[str, ...] = ("model", "ema")) -> float:
    """Relative L2 distance ||w_a - w_b|| / ||w_a|| of two checkpoints' weights, all tensors together.

    One global norm, not a per-tensor maximum: a tensor whose gradient is zero in exact arithmetic (e.g.
    attention key biases) holds only rounding noise, which Adam turns into full-size steps, so its own
    relative difference says nothing about the run. (Used to check that N processes give the weights of
    one.)

    Args:
        a, b: checkpoint files or run folders (:func:`resolve_checkpoint`) of the same model.
        prefixes: which weight groups to compare ("model", "ema").

    Returns:
        The relative distance (0 for equal weights).

    Raises:
        ValueError: if the two checkpoints do not hold the same tensors.
    """
    wa, wb = (load_checkpoint(resolve_checkpoint(p)) for p in (a, b))
    names = sorted(k for k in wa.tensors if k.split("/", 1)[0] in prefixes)
    if names != sorted(k for k in wb.tensors if k.split("/", 1)[0] in prefixes):
        raise ValueError(f"{wa.path} and {wb.path} do not hold the same weights")
    diff = sum(float((wa.tensors[k].double() - wb.tensors[k].double()).square().sum()) for k in names)
    norm = sum(float(wa.tensors[k].double().square().sum()) for k in names)
    return math.sqrt(diff / norm) if norm > 0 else math.sqrt(diff)
