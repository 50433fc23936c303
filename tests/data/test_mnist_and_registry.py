"""The dataset registry and the MNIST digits."""

from __future__ import annotations

import pytest
import torch

from gmfm.data import Dataset, ImageSet, dataset_names, dataset_options, make_dataset, register_dataset
from gmfm.data.mnist import load_mnist_splits


@pytest.fixture(scope="module")
def digits():
    return load_mnist_splits()


def test_mnist_splits(digits):
    assert digits.train_images.shape == (4000, 1, 32, 32) and digits.test_images.shape == (1000, 1, 32, 32)
    assert digits.train_labels.bincount().tolist() == [400] * 10 and digits.test_labels.bincount().tolist() == [100] * 10
    assert float(digits.train_images.min()) == -1.0 and float(digits.train_images.max()) == 1.0
    assert bool((digits.train_images[..., :2, :] == -1).all())  # the 2-pixel padding is background


def test_registry_builds_datasets_with_their_shapes_and_classes():
    assert {"checkerboard", "ring_classes", "mnist"} <= set(dataset_names())
    mnist = make_dataset("mnist", train_per_class=300)
    assert mnist.event_shape == (1, 32, 32) and mnist.num_classes == 10 and mnist.class_names[7] == "seven"
    assert len(mnist.split("train")) == 3000 and len(mnist.split("test")) == 2000
    ring = make_dataset("ring_classes")
    assert ring.event_shape == (2, 1, 1) and ring.num_classes == 4
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; known datasets: .*mnist"):
        make_dataset("cifar")
    with pytest.raises(ValueError, match=r"mnist: unknown option\(s\) \['size'\]; valid options: train_per_class"):
        make_dataset("mnist", size=28)
    with pytest.raises(ValueError, match=r"train_per_class must be an integer in \[1, 499\]"):
        make_dataset("mnist", train_per_class=500)
    with pytest.raises(ValueError, match="has no split 'val'"):
        mnist.split("val")
    assert dataset_options("mnist") == ("train_per_class", "val_per_class", "unconditional")
    split = make_dataset("mnist", val_per_class=50)  # choices on val, numbers on test: disjoint digits
    assert [len(split.split(s)) for s in ("train", "val", "test")] == [4000, 500, 500]
    assert split.split("val").labels.bincount().tolist() == [50] * 10
    assert not bool((split.split("val").images[:, None] == split.split("test").images[None]).flatten(2).all(-1).any())


def test_colored_mnist_is_a_fixed_function_of_its_seed_with_class_dependent_colours():
    from gmfm.data.colored_mnist import hsv_to_rgb
    from gmfm.metrics.images import hsv_saturation

    data = make_dataset("colored_mnist")
    again, other = make_dataset("colored_mnist"), make_dataset("colored_mnist", seed=1)
    train = data.split("train")
    assert data.event_shape == (3, 32, 32) and [len(data.split(s)) for s in ("train", "val", "test")] == [4000, 500, 500]
    assert torch.equal(train.images, again.split("train").images)
    assert not torch.equal(train.images, other.split("train").images)
    assert float(train.images.min()) >= -1 and float(train.images.max()) <= 1
    assert 0.2 < hsv_saturation((train.images + 1) / 2) < 0.4  # moderate: over-saturation can show
    # the stroke colour (the brightest pixels) follows the class: mean RGB per class differ
    strokes = torch.stack([train.images[train.labels == c].amax(dim=(-2, -1)).mean(0) for c in range(10)])
    assert torch.cdist(strokes, strokes).add(torch.eye(10) * 9).min() > 0.1
    rgb = hsv_to_rgb(torch.tensor([0.0, 1 / 3, 2 / 3]), torch.ones(3), torch.ones(3))
    torch.testing.assert_close(rgb, torch.eye(3))  # red, green, blue


def test_a_registered_dataset_is_found_by_name():
    images = torch.randn(10, 3, 8, 8)
    register_dataset("_test_blobs", lambda scale=1.0: Dataset("_test_blobs", (3, 8, 8), 2,
                                                             ImageSet(images * scale, torch.arange(10) % 2)))
    data = make_dataset("_test_blobs", scale=2.0)
    assert data.event_shape == (3, 8, 8) and dataset_options("_test_blobs") == ("scale", "unconditional")


def test_training_batches_do_not_depend_on_how_the_batch_is_split():
    data = make_dataset("mnist").train
    whole = data.batch(12, torch.Generator().manual_seed(3), slice(0, 12))
    parts = [data.batch(12, torch.Generator().manual_seed(3), slice(i, i + 4)) for i in (0, 4, 8)]
    assert torch.equal(torch.cat([p["x0"] for p in parts]), whole["x0"])
    assert torch.equal(torch.cat([p["labels"] for p in parts]), whole["labels"])
    toy = make_dataset("ring_classes").train
    whole = toy.batch(10, torch.Generator().manual_seed(1), slice(0, 10))
    half = toy.batch(10, torch.Generator().manual_seed(1), slice(5, 10))
    assert torch.equal(whole["x0"][5:], half["x0"]) and torch.equal(whole["labels"][5:], half["labels"])
