"""Cached latents: a folder written by ``gmfm cache-latents`` and read, memory-mapped, by training.

    cache/
      latents.json        index: count, latent shape, classes, VAE folder, scaling factor, source
      latents.npy         (N, C, h, w) float16 or float32, already multiplied by the scaling factor
      labels.npy          (N,) int64

Training draws rows of the memory map: only the drawn latents are read from disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import Dataset

INDEX_NAME = "latents.json"


class LatentSet:
    """The training data of a latent cache: uniform draws with replacement from memory-mapped arrays."""

    def __init__(self, latents: np.ndarray, labels: np.ndarray) -> None:
        self.latents, self.labels = latents, labels

    def __len__(self) -> int:
        return self.latents.shape[0]

    def batch(self, batch_size: int, generator: torch.Generator, rows: slice) -> dict[str, Tensor]:
        index = torch.randint(0, len(self), (batch_size,), generator=generator)[rows].numpy()
        order = np.argsort(index)  # read the memory map front to back
        x = torch.from_numpy(np.ascontiguousarray(self.latents[index[order]])).float()
        y = torch.from_numpy(np.ascontiguousarray(self.labels[index[order]])).long()
        inverse = torch.from_numpy(np.argsort(order))
        return {"x0": x[inverse], "labels": y[inverse]}


def read_latent_index(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a latent cache: {path} does not exist (run gmfm cache-latents)")
    try:
        index = json.loads(path.read_text())
        shape = tuple(int(v) for v in index["latent_shape"])
        int(index["count"]), float(index["scaling_factor"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a valid latent index: {err}") from err
    if len(shape) != 3:
        raise ValueError(f"{path}: latent_shape must be (C, h, w), got {shape}")
    return index


def latent_dataset(path: str, holdout: int = 0) -> Dataset:
    """The registry entry ``latents``: a cache folder; the last ``holdout`` rows form the "test" split."""
    folder = Path(path)
    index = read_latent_index(folder)
    latents = np.load(folder / "latents.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy", mmap_mode="r")
    count = int(index["count"])
    if latents.shape != (count, *index["latent_shape"]) or labels.shape != (count,):
        raise ValueError(f"{folder}: latents.npy {latents.shape} / labels.npy {labels.shape} do not match the index "
                         f"({count} x {tuple(index['latent_shape'])})")
    if isinstance(holdout, bool) or not isinstance(holdout, int) or not 0 <= holdout < count:
        raise ValueError(f"holdout must be an integer in [0, {count - 1}], got {holdout!r}")
    train = LatentSet(latents[: count - holdout], labels[: count - holdout])
    splits: dict[str, Any] = {"train": train}
    if holdout:
        from .base import ImageSet

        splits["test"] = ImageSet(torch.from_numpy(np.array(latents[count - holdout:])).float(),
                                  torch.from_numpy(np.array(labels[count - holdout:])).long())
    extra = {"vae": index.get("vae"), "scaling_factor": float(index["scaling_factor"]), "cache": str(folder),
             "source": index.get("source")}
    return Dataset("latents", tuple(index["latent_shape"]), int(index["num_classes"]), train, splits,
                   tuple(index.get("class_names", ())), extra)
