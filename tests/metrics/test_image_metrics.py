"""Image metrics on classifier features: FD, precision / recall, saturation, the feature classifier."""

from __future__ import annotations

import pytest
import torch

from gmfm.data.mnist import load_mnist_splits
from gmfm.metrics.images import classifier_outputs, frechet_distance, precision_recall, saturation, train_classifier


def test_feature_metrics():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 8, generator=g, dtype=torch.float64)
    b = torch.randn(500, 8, generator=g, dtype=torch.float64)
    assert abs(frechet_distance(a, a)) < 1e-6
    assert frechet_distance(a, b) < 0.5 < frechet_distance(a, b + 2.0)
    assert precision_recall(a, a) == (1.0, 1.0)
    assert precision_recall(a, a + 100.0) == (0.0, 0.0)
    assert saturation(torch.tensor([[-1.0, 0.99, 0.5, 0.0]])) == (0.5, pytest.approx(0.6225))


def test_classifier_learns_digits():
    digits = load_mnist_splits()
    model = train_classifier(digits.train_images, digits.train_labels, epochs=2)
    feats, preds = classifier_outputs(model, digits.test_images)
    assert feats.shape == (1000, 128)
    assert float((preds == digits.test_labels).double().mean()) > 0.8
