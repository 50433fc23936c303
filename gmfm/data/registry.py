"""Datasets by name: ``make_dataset("mnist")``, ``make_dataset("checkerboard")``, ...

A recipe's ``[data]`` table names a dataset and gives its options; the factory's keyword arguments are
the valid options (an unknown one is an error listing them). A new dataset is a factory returning a
:class:`~gmfm.data.base.Dataset`, registered with :func:`register_dataset`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from .base import Dataset
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
    """The options the dataset ``name`` accepts (its factory's keyword arguments)."""
    _check_name(name)
    return tuple(inspect.signature(_REGISTRY[name]).parameters)


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
    return _REGISTRY[name](**options)


for _toy in TOY_DATASET_NAMES:
    register_dataset(_toy, functools.partial(toy_dataset, _toy))
register_dataset("mnist", mnist_dataset)
register_dataset("colored_mnist", colored_mnist_dataset)
register_dataset("image_folder", image_folder_dataset)
register_dataset("latents", latent_dataset)
