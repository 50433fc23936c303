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
    """The training data of a latent cache: uniform draws with replacement from the memory-mapped rows
    ``rows`` (all rows when None)."""

    def __init__(self, latents: np.ndarray, labels: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.latents, self.labels = latents, labels
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else self.latents.shape[0]

    def batch(self, batch_size: int, generator: torch.Generator, rows: slice) -> dict[str, Tensor]:
        index = torch.randint(0, len(self), (batch_size,), generator=generator)[rows].numpy()
        if self.rows is not None:
            index = self.rows[index]
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


def stratified_holdout(labels: np.ndarray, holdout: int, seed: int = 0) -> np.ndarray:
    """``holdout`` row indices (sorted) drawn per class in proportion to the class sizes, seeded.

    Caches are written class by class (image folders are sorted by class), so the last rows would hold
    only the last classes; each class gives round(holdout * its share) rows (largest remainders first, so
    the total is exact), chosen by a seeded permutation of its rows.

    Args:
        labels: (N,) class ids.
        holdout: the number of rows to hold out, in [0, N).
        seed: seed of the draw.

    Returns:
        The held-out row indices, int64 (holdout,), sorted.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    exact = holdout * counts / counts.sum()
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: holdout - int(take.sum())]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.empty(0, dtype=np.int64)


def latent_dataset(path: str, holdout: int = 0, seed: int = 0) -> Dataset:
    """The registry entry ``latents``: a cache folder; ``holdout`` rows, drawn per class with ``seed``
    (:func:`stratified_holdout`), form the "test" split, which training never sees."""
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
    test_rows = stratified_holdout(np.asarray(labels), holdout, seed)
    train_rows = np.setdiff1d(np.arange(count), test_rows) if holdout else None
    train = LatentSet(latents, labels, train_rows)
    splits: dict[str, Any] = {"train": train}
    extra = {"vae": index.get("vae"), "scaling_factor": float(index["scaling_factor"]), "cache": str(folder),
             "source": index.get("source")}
    if holdout:
        from .base import ImageSet

        splits["test"] = ImageSet(torch.from_numpy(np.array(latents[test_rows])).float(),
                                  torch.from_numpy(np.array(labels[test_rows])).long())
        copies = 2 if index.get("flip") == "both" else 1  # cache row k encodes source image k // copies
        extra["source_rows"] = {"test": (test_rows // copies).tolist()}
    source = index.get("source") or {}
    if isinstance(source, dict) and "options" in source:
        extra["source_dataset"] = {"name": source["dataset"], "options": source["options"]}
    return Dataset("latents", tuple(index["latent_shape"]), int(index["num_classes"]), train, splits,
                   tuple(index.get("class_names", ())), extra)
