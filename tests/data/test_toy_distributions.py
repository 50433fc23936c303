"""2-D datasets and metrics."""

from __future__ import annotations

import math

import pytest
import torch

from gmfm import AnalyticGMDenoiser
from gmfm.data import TOY_DATASET_NAMES, Checkerboard, GaussianRing, make_toy_dataset
from gmfm.metrics import evaluate_toy2d, histogram2d, noise_floor, precision, sliced_wasserstein, total_variation


@pytest.mark.parametrize("name", TOY_DATASET_NAMES)
def test_cell_masses_are_a_distribution_matching_samples(name):
    data = make_toy_dataset(name)
    masses = data.cell_masses(32)
    assert masses.shape == (32, 32) and masses.min() >= 0
    assert math.isclose(float(masses.sum()), 1.0, abs_tol=1e-3)
    points = data.sample(200_000, torch.Generator().manual_seed(0))
    hist, outside = histogram2d(points, 32, data.extent)
    # a fresh sample sits at the noise floor; its TV shrinks like 1/sqrt(N)
    assert total_variation(points, data) < 0.04
    assert outside < 1e-3
    assert float((hist - masses).abs().max()) < 3e-3


def test_checkerboard_is_the_papers_board():
    board = Checkerboard()
    x = board.sample(100_000, torch.Generator().manual_seed(1))
    assert x.abs().max() <= 4.0 and precision(x, board) == 1.0
    masses = board.cell_masses(32)
    assert int((masses > 0).sum()) == 8 * 64  # 8 filled squares of 8 x 8 cells
    assert torch.allclose(masses[masses > 0], torch.full((512,), 1 / 512, dtype=torch.float64))
    # the square [0, 2] x [0, 2] is filled (i + j even), [0, 2] x [2, 4] is not
    assert bool(board.in_support(torch.tensor([[1.0, 1.0]]))) and not bool(board.in_support(torch.tensor([[1.0, 3.0]])))


def test_metrics_see_bad_samples():
    board = Checkerboard()
    g = torch.Generator().manual_seed(2)
    uniform = torch.rand(50_000, 2, generator=g) * 8 - 4
    assert 0.45 < total_variation(uniform, board) < 0.55  # half the mass lands in empty squares
    assert 0.45 < precision(uniform, board) < 0.55
    far = torch.full((1000, 2), 10.0)
    assert total_variation(far, board) == pytest.approx(1.0)  # all mass outside the square is error
    assert total_variation(torch.full((10, 2), math.nan), board) == 1.0
    x = board.sample(5000, g)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, x + 1.0) == pytest.approx(float(torch.tensor([1.0, 1.0]).norm()) * 0.637, rel=0.2)


def test_noise_floor_is_small_and_evaluation_reports_all_metrics():
    board = Checkerboard()
    floor = noise_floor(board, 20_000)
    assert floor.tv < 0.08 and floor.precision == 1.0 and floor.swd < 0.05
    metrics = evaluate_toy2d(board.sample(1000), board, board.sample(1000))
    assert set(metrics.as_dict()) == {"tv", "precision", "swd"}


def test_class_conditional_ring_and_its_exact_gm():
    ring = make_toy_dataset("ring_classes")
    assert ring.num_classes == 4
    g = torch.Generator().manual_seed(3)
    labels = torch.full((4000,), 2)
    x = ring.sample(4000, g, labels)
    # class 2 holds modes 2 and 6: opposite points of the ring
    centres = ring.centres[[2, 6]].float()
    nearest = torch.cdist(x, centres).min(1).values
    assert float(nearest.max()) < 6 * ring.std
    means, logweights, logstd = ring.gm_parameters()
    assert means.shape == (4, 2, 2, 1, 1)
    oracle = AnalyticGMDenoiser(means, logweights, logstd)
    y = oracle.sample_data(4000, labels, generator=g).reshape(-1, 2)
    assert sliced_wasserstein(x, y) < 0.1


def test_unconditional_dataset_rejects_labels_and_unknown_names():
    with pytest.raises(ValueError, match="unconditional"):
        GaussianRing().sample(3, labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="dataset must be one of"):
        make_toy_dataset("spiral")
    with pytest.raises(ValueError, match="not class-conditional"):
        Checkerboard().sample_labels(3)
