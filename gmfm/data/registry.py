"""Datasets by name: ``make_dataset("mnist")``, ``make_dataset("checkerboard")``, ...

A recipe's ``[data]`` table names a dataset and gives its options; the factory's keyword arguments are
the valid options (an unknown one is an error listing them), plus ``unconditional = true``, which every
dataset takes: its labels are dropped (0 classes: an unconditional model). A new dataset is a factory
returning a :class:`~gmfm.data.base.Dataset`, registered with :func:`register_dataset`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .base import Dataset, ImageSet, TrainingData
from .cifar10 import cifar10_dataset
from .colored_mnist import colored_mnist_dataset
from .image_folder import image_folder_dataset
from .latents import latent_dataset
from .mnist import mnist_dataset
from .toy_distributions import TOY_DATASET_NAMES, toy_dataset

_REGISTRY: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str, factory: Callable[..., Dataset]) -> None:
    """Make ``factory(**options) -> Dataset`` available as ``name``."""
    _REGISTRY[name] = factory


def dataset_names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def dataset_options(name: str) -> tuple[str, ...]:
    """The options the dataset ``name`` accepts (its factory's keyword arguments, and ``unconditional``)."""
    _check_name(name)
    return (*inspect.signature(_REGISTRY[name]).parameters, "unconditional")


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")


def make_dataset(name: str, **options: Any) -> Dataset:
    """Build the dataset ``name`` with ``options`` (see :func:`dataset_options`)."""
    _check_name(name)
    unknown = sorted(set(options) - set(dataset_options(name)))
    if unknown:
        valid = ", ".join(dataset_options(name)) or "none"
        raise ValueError(f"[data] {name}: unknown option(s) {unknown}; valid options: {valid}")
    unconditional = options.pop("unconditional", False)
    if not isinstance(unconditional, bool):
        raise ValueError(f"[data] unconditional must be true or false, got {unconditional!r}")
    dataset = _REGISTRY[name](**options)
    return without_labels(dataset) if unconditional else dataset


class _Unlabelled:
    """Training data with the labels of every batch dropped."""

    def __init__(self, data: TrainingData) -> None:
        self.data = data

    def batch(self, batch_size: int, generator: torch.Generator, rows: slice) -> dict[str, Tensor]:
        return {k: v for k, v in self.data.batch(batch_size, generator, rows).items() if k != "labels"}


def without_labels(dataset: Dataset) -> Dataset:
    """``dataset`` as unconditional data: 0 classes, no labels in its batches and splits."""
    splits = {name: ImageSet(split.images) for name, split in dataset.splits.items()}
    extra = dict(dataset.extra)
    if isinstance(extra.get("source"), ImageSet):
        extra["source"] = ImageSet(extra["source"].images)
    return dataclasses.replace(dataset, num_classes=0, train=_Unlabelled(dataset.train), splits=splits,
                               class_names=(), extra=extra)


for _toy in TOY_DATASET_NAMES:
    register_dataset(_toy, functools.partial(toy_dataset, _toy))
register_dataset("mnist", mnist_dataset)
register_dataset("colored_mnist", colored_mnist_dataset)
register_dataset("cifar10", cifar10_dataset)
register_dataset("image_folder", image_folder_dataset)
register_dataset("latents", latent_dataset)
