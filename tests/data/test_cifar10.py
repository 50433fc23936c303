"""CIFAR-10 from a cifar-10-batches-py folder: a tiny fake folder stands in for the download."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from gmfm.data import make_dataset
from gmfm.data.cifar10 import TEST_BATCH, TRAIN_BATCHES


def fake_cifar(folder, per_batch: int = 4):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, per_batch))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def test_the_batches_load_as_images_and_labels(tmp_path):
    folder = fake_cifar(tmp_path / "cifar-10-batches-py")
    data = make_dataset("cifar10", root=str(folder), flip=False)
    train, test = data.split("train"), data.split("test")
    assert data.event_shape == (3, 32, 32) and data.num_classes == 10 and len(train) == 20 and len(test) == 4
    with open(folder / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    first = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)).float() / 127.5 - 1
    torch.testing.assert_close(train.images[0], first)  # planes are R, G, B
    assert train.labels[:4].tolist() == [int(v) for v in raw[b"labels"]]
    flipped = make_dataset("cifar10", root=str(folder))
    assert len(flipped.split("train")) == 40 and torch.equal(flipped.split("train").images[20], first.flip(-1))
    plain = make_dataset("cifar10", root=str(folder), unconditional=True)
    assert plain.num_classes == 0 and plain.split("train").labels is None
    assert "labels" not in plain.train.batch(4, torch.Generator().manual_seed(0), slice(0, 4))


def test_a_missing_partial_or_corrupt_folder_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-10 folder .* does not exist"):
        make_dataset("cifar10", root=str(tmp_path / "nowhere"))
    folder = fake_cifar(tmp_path / "partial")
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="not a complete cifar-10-batches-py folder: data_batch_3 is missing"):
        make_dataset("cifar10", root=str(folder))
    folder = fake_cifar(tmp_path / "corrupt")
    (folder / TEST_BATCH).write_bytes(b"\x80\x04 not a pickle")
    with pytest.raises(ValueError, match="test_batch is not a CIFAR-10 batch"):
        make_dataset("cifar10", root=str(folder))
