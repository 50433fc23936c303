"""CIFAR-10 from the ``cifar-10-batches-py`` folder users download (nothing is fetched at run time).

The folder (the "CIFAR-10 python version" of https://www.cs.toronto.edu/~kriz/cifar.html) holds the pickled
batches ``data_batch_1`` .. ``data_batch_5`` (training, 10,000 images each) and ``test_batch``; each is a
dict with ``data`` (N, 3072) uint8 (the red, green, blue planes of a 32 x 32 image) and ``labels`` (N,).
Images are scaled to [-1, 1]; ``flip = true`` adds the horizontal mirror of every training image (the DDPM
recipe's random flips, made deterministic). An image folder (``image_folder`` dataset) works as well.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .base import Dataset, ImageSet

CIFAR10_WORDS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} is not a complete cifar-10-batches-py folder: {path.name} is missing "
                                "(download and unpack cifar-10-python.tar.gz)")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path} is not a CIFAR-10 batch (corrupt or truncated): {type(err).__name__}: {err}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],) or \
            (labels.size and not 0 <= labels.min() <= labels.max() <= 9):
        raise ValueError(f"{path} is not a CIFAR-10 batch: data {data.shape}, labels {labels.shape} (expected "
                         "(N, 3072) and N class ids in [0, 9])")
    return data, labels


def load_cifar10(root: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train", "test"}: (images (N, 3, 32, 32) float32 in [-1, 1], labels (N,) int64) of the folder ``root``.

    Raises:
        FileNotFoundError: the folder or one of its batches is missing.
        ValueError: a batch is corrupt.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder {folder} does not exist (download cifar-10-python.tar.gz and unpack "
                                "it: root = the cifar-10-batches-py folder)")
    out = {}
    for split, names in (("train", TRAIN_BATCHES), ("test", (TEST_BATCH,))):
        parts = [_read_batch(folder / name) for name in names]
        data = np.concatenate([d for d, _ in parts])
        labels = np.concatenate([y for _, y in parts])
        images = torch.from_numpy(data.reshape(-1, 3, 32, 32)).float() / 127.5 - 1.0
        out[split] = (images, torch.from_numpy(labels))
    return out


def cifar10_dataset(root: str = "data/cifar-10-batches-py", flip: bool = True) -> Dataset:
    """The registry entry ``cifar10``: 10 classes of 3 x 32 x 32 images, splits "train" (50,000; 100,000 with
    the mirrored copies of ``flip``) and "test" (10,000). ``unconditional = true`` drops the labels."""
    if not isinstance(flip, bool):
        raise ValueError(f"flip must be true or false, got {flip!r}")
    data = load_cifar10(root)
    images, labels = data["train"]
    if flip:
        images, labels = torch.cat([images, images.flip(-1)]), torch.cat([labels, labels])
    train = ImageSet(images, labels)
    test = ImageSet(*data["test"])
    return Dataset("cifar10", (3, 32, 32), 10, train, {"train": train, "test": test}, CIFAR10_WORDS,
                   {"source": ImageSet(*data["train"])})
