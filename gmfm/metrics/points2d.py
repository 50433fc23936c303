"""Sample-quality metrics for 2-D toys (paper Sec. 4.1).

- total variation between the samples' histogram and the exact cell masses on a bins x bins grid over
  [-extent, extent]^2; samples outside the square count fully as error;
- precision: the fraction of samples inside the data's support (the filled squares of the checkerboard);
- sliced Wasserstein-1 distance to fresh data samples;
- the noise floor of each metric: its value for fresh data samples of the same size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..data.toy_distributions import Toy2D


def histogram2d(points: Tensor, bins: int, extent: float) -> tuple[Tensor, float]:
    """Fractions of ``points`` per cell of a bins x bins grid over [-extent, extent]^2.

    Args:
        points: point cloud (N, 2).
        bins: cells per side.
        extent: the grid covers [-extent, extent]^2.

    Returns:
        (fractions, float64 (bins, bins) indexed [x, y]; the fraction of points outside the grid).
    """
    x = points.double().reshape(-1, 2)
    cell = torch.floor((x + extent) / (2 * extent) * bins).long()
    inside = ((cell >= 0) & (cell < bins)).all(dim=-1)
    flat = cell[inside, 0] * bins + cell[inside, 1]
    counts = torch.bincount(flat, minlength=bins * bins).double().reshape(bins, bins)
    n = max(len(x), 1)
    return counts / n, float((~inside).sum()) / n


def total_variation(points: Tensor, dataset: Toy2D, bins: int = 32) -> float:
    """TV distance 0.5 (sum_cells |p_hat - p| + outside mass) in [0, 1].

    Args:
        points: samples (N, 2); any non-finite sample makes the result 1.
        dataset: the toy dataset, giving the grid extent and the exact cell masses p.
        bins: cells per side of the grid.

    Returns:
        The distance.
    """
    if not bool(torch.isfinite(points).all()):
        return 1.0  # non-finite samples are as wrong as samples can be
    hist, outside = histogram2d(points, bins, dataset.extent)
    return 0.5 * (float((hist - dataset.cell_masses(bins)).abs().sum()) + outside)


def precision(points: Tensor, dataset: Toy2D) -> float:
    """Fraction of the samples that lie in the dataset's support region.

    Args:
        points: samples (N, 2).
        dataset: the toy dataset.

    Returns:
        The fraction.
    """
    return float(dataset.in_support(points.reshape(-1, 2)).double().mean())


def sliced_wasserstein(x: Tensor, y: Tensor, num_projections: int = 128, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between point clouds, averaged over random directions.

    Unequal sizes are compared through 1024 matching quantiles.

    Args:
        x: points (N, D).
        y: points (M, D).
        num_projections: the number of random unit directions.
        seed: seed of the directions.

    Returns:
        The distance.
    """
    x, y = x.double().flatten(1), y.double().flatten(1)
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], num_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, py = torch.sort(x @ dirs, dim=0)[0], torch.sort(y @ dirs, dim=0)[0]
    if len(px) != len(py):
        q = (torch.arange(1024, dtype=torch.float64) + 0.5) / 1024
        px, py = torch.quantile(px, q, dim=0), torch.quantile(py, q, dim=0)
    return float((px - py).abs().mean())


@dataclass(frozen=True)
class Toy2DMetrics:
    tv: float
    precision: float
    swd: float

    def as_dict(self) -> dict[str, float]:
        """The metrics by field name."""
        return asdict(self)


def evaluate_toy2d(samples: Tensor, dataset: Toy2D, reference: Tensor, bins: int = 32) -> Toy2DMetrics:
    """All three metrics of ``samples``.

    Args:
        samples: samples (N, 2).
        dataset: the toy dataset.
        reference: fresh data samples (M, 2) for the sliced Wasserstein distance, computed on the finite
            samples only (inf if there are none).
        bins: cells per side of the total-variation grid.

    Returns:
        :class:`Toy2DMetrics`.
    """
    points = samples.reshape(-1, 2)
    finite = torch.isfinite(points).all(dim=-1)
    swd = sliced_wasserstein(points[finite], reference) if bool(finite.any()) else float("inf")
    return Toy2DMetrics(total_variation(points, dataset, bins), precision(points, dataset), swd)


def noise_floor(dataset: Toy2D, num_samples: int, seed: int = 0, bins: int = 32) -> Toy2DMetrics:
    """The metrics of ``num_samples`` fresh data samples against another fresh reference set.

    Args:
        dataset: the toy dataset.
        num_samples: size of both sets.
        seed: seed of the draws.
        bins: cells per side of the total-variation grid.

    Returns:
        :class:`Toy2DMetrics`.
    """
    g = torch.Generator().manual_seed(seed)
    return evaluate_toy2d(dataset.sample(num_samples, g), dataset, dataset.sample(num_samples, g), bins)
