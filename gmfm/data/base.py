"""What training reads: a :class:`TrainingData` draws the batch of a training step, and a
:class:`Dataset` describes a named dataset (shape, classes) and holds its splits.

A training step draws its *global* batch with the step's generator and keeps the rows of its process
(``rows``): the batch a sample belongs to, and its content, do not depend on the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class ImageSource(Protocol):
    """Indexed images with classes (what ``gmfm cache-latents`` encodes): ``item(i)`` = (image (C, H, W)
    float32 in [-1, 1], class id)."""

    def __len__(self) -> int: ...

    def item(self, index: int) -> tuple[Tensor, int]: ...


@runtime_checkable
class TrainingData(Protocol):
    def batch(self, batch_size: int, generator: torch.Generator, rows: slice) -> dict[str, Tensor]:
        """Rows ``rows`` of a global batch of ``batch_size`` samples: ``x0`` (b, C, H, W) float32 and, for
        class-conditional data, ``labels`` (b,) int64, on the CPU."""


@dataclass(frozen=True, eq=False)
class ImageSet(TrainingData):
    """A finite set of samples ``x0`` (N, C, H, W) with optional ``labels`` (N,), drawn uniformly with
    replacement (``images`` may be a memory-mapped tensor: only the drawn rows are read)."""

    images: Tensor
    labels: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels is not None and self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}")
        if len(self.images) == 0:
            raise ValueError("the image set is empty")

    def __len__(self) -> int:
        return self.images.shape[0]

    def item(self, index: int) -> tuple[Tensor, int]:
        """One sample (C, H, W) and its class (-1 without labels): the image-source contract."""
        return self.images[index].float(), int(self.labels[index]) if self.labels is not None else -1

    def batch(self, batch_size: int, generator: torch.Generator, rows: slice) -> dict[str, Tensor]:
        index = torch.randint(0, len(self), (batch_size,), generator=generator)[rows]
        out = {"x0": self.images[index].float()}
        if self.labels is not None:
            out["labels"] = self.labels[index].long()
        return out


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named dataset as experiments see it.

    Attributes:
        name: the registry name.
        event_shape: (C, H, W) of one sample (2-D points: (2, 1, 1)).
        num_classes: 0 for unconditional data.
        train: what training draws from.
        splits: named finite sets for evaluation (e.g. "test"), :class:`ImageSet`.
        class_names: one word per class (labels of a pipeline), or empty.
        extra: dataset-specific objects: "toy" (the distribution, for exact metrics), "source" (an
            :class:`ImageSource` to cache latents from), "vae" / "scaling_factor" (cached latents).
    """

    name: str
    event_shape: tuple[int, int, int]
    num_classes: int
    train: TrainingData
    splits: dict[str, ImageSet] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> ImageSet:
        if name not in self.splits:
            raise ValueError(f"dataset {self.name!r} has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]
