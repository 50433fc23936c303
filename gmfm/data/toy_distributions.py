"""2-D toy distributions with known densities (paper Sec. 4.1), for training, sampling and metrics.

Samples are (N, 2) tensors; models see them in the GM image layout (N, 2, 1, 1) (see :func:`as_images`).
Every dataset draws with a ``torch.Generator`` and knows the probability mass of each cell of a square
grid, which the total-variation metric compares with a sample histogram.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from ..math.validation import check_positive_int
from .base import Dataset


def as_images(x: Tensor) -> Tensor:
    """(N, 2) points -> (N, 2, 1, 1), the layout of GM tensors and models."""
    return x.reshape(x.shape[0], 2, 1, 1)


def as_points(x: Tensor) -> Tensor:
    """(N, 2, 1, 1) -> (N, 2)."""
    return x.reshape(x.shape[0], 2)


class Toy2D(ABC):
    """A 2-D distribution, optionally class-conditional (``num_classes`` > 0)."""

    name: str = "toy"
    num_classes: int = 0
    extent: float = 4.0  # metrics look at [-extent, extent]^2

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None) -> Tensor:
        """``n`` points (n, 2), float32; ``labels`` (n,) picks the classes of a conditional dataset
        (``None`` draws from the unconditional mixture)."""

    def sample_labels(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Uniform class labels (n,) for a conditional dataset."""
        if not self.num_classes:
            raise ValueError(f"{self.name} is not class-conditional")
        return torch.randint(0, self.num_classes, (n,), generator=generator)

    @abstractmethod
    def density(self, xy: Tensor) -> Tensor:
        """Probability density at points (N, 2) (unconditional), (N,)."""

    def cell_masses(self, bins: int = 32, subdivisions: int = 16) -> Tensor:
        """Probability mass of each cell of a bins x bins grid over [-extent, extent]^2, float64 (bins, bins),
        indexed [x cell, y cell]; by the midpoint rule on ``subdivisions``^2 points per cell."""
        n = bins * subdivisions
        width = 2 * self.extent / n
        centres = -self.extent + width * (torch.arange(n, dtype=torch.float64) + 0.5)
        gx, gy = torch.meshgrid(centres, centres, indexing="ij")
        dens = self.density(torch.stack([gx.flatten(), gy.flatten()], -1)).reshape(n, n)
        return dens.reshape(bins, subdivisions, bins, subdivisions).sum(dim=(1, 3)) * width**2

    def in_support(self, xy: Tensor) -> Tensor:
        """Boolean (N,): whether each point lies in the high-density region (used by precision)."""
        raise NotImplementedError(f"{self.name} defines no support region")


class Checkerboard(Toy2D):
    """The paper's checkerboard: a ``size`` x ``size`` board whose squares with (i + j) even are filled
    uniformly, scaled to [-scale, scale]^2 (defaults: 4 x 4 board, 8 filled squares, [-4, 4]^2)."""

    name = "checkerboard"

    def __init__(self, size: int = 4, scale: float = 4.0) -> None:
        self.size = check_positive_int("size", size)
        self.scale = float(scale)
        self.extent = self.scale
        self.squares = torch.tensor([(i, j) for i in range(size) for j in range(size) if (i + j) % 2 == 0],
                                    dtype=torch.float32)

    def sample(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None) -> Tensor:
        index = torch.randint(0, len(self.squares), (n,), generator=generator)
        unit = (self.squares[index] + torch.rand(n, 2, generator=generator)) * (2 / self.size) - 1
        return unit * self.scale

    def _filled(self, xy: Tensor) -> Tensor:
        cell = torch.floor((xy / self.scale + 1) * self.size / 2)
        inside = ((cell >= 0) & (cell < self.size)).all(dim=-1)
        return inside & (cell.sum(dim=-1).remainder(2) == 0)

    def density(self, xy: Tensor) -> Tensor:
        square_area = (2 * self.scale / self.size) ** 2
        return self._filled(xy).to(torch.float64) / (len(self.squares) * square_area)

    def in_support(self, xy: Tensor) -> Tensor:
        return self._filled(xy)

    def cell_masses(self, bins: int = 32, subdivisions: int = 16) -> Tensor:
        if bins % self.size == 0:  # grid cells never straddle two squares: exact
            centres = -self.extent + (2 * self.extent / bins) * (torch.arange(bins, dtype=torch.float64) + 0.5)
            gx, gy = torch.meshgrid(centres, centres, indexing="ij")
            filled = self._filled(torch.stack([gx.flatten(), gy.flatten()], -1)).reshape(bins, bins)
            return filled.to(torch.float64) / filled.sum()
        return super().cell_masses(bins, subdivisions)


class GaussianRing(Toy2D):
    """``modes`` isotropic Gaussians (std ``std``) evenly on a circle of ``radius``. With ``num_classes`` > 0
    it is class-conditional: class c holds the modes k with k mod num_classes == c."""

    name = "gaussian_ring"

    def __init__(self, modes: int = 8, radius: float = 3.0, std: float = 0.25, num_classes: int = 0) -> None:
        self.modes = check_positive_int("modes", modes)
        if num_classes and modes % num_classes:
            raise ValueError(f"modes ({modes}) must be a multiple of num_classes ({num_classes})")
        self.num_classes = num_classes
        self.std = float(std)
        angle = torch.arange(modes, dtype=torch.float64) * 2 * math.pi / modes
        self.centres = torch.stack([radius * angle.cos(), radius * angle.sin()], -1)
        if num_classes:
            self.name = "ring_classes"

    def sample(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            mode = torch.randint(0, self.modes, (n,), generator=generator)
        else:
            if not self.num_classes:
                raise ValueError(f"{self.name} is unconditional: labels must be None")
            per_class = self.modes // self.num_classes
            mode = labels.long().cpu() + self.num_classes * torch.randint(0, per_class, (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (self.centres[mode] + self.std * noise).float()

    def density(self, xy: Tensor) -> Tensor:
        d2 = (xy.double().unsqueeze(1) - self.centres).square().sum(-1)
        return torch.exp(-0.5 * d2 / self.std**2).mean(1) / (2 * math.pi * self.std**2)

    def cell_masses(self, bins: int = 32, subdivisions: int = 16) -> Tensor:
        # Exact: every mode is axis-aligned, so a cell's mass is a product of 1-D normal CDF differences.
        edges = torch.linspace(-self.extent, self.extent, bins + 1, dtype=torch.float64)
        cdf = 0.5 * (1 + torch.erf((edges[None, :] - self.centres[:, :, None]) / (self.std * math.sqrt(2))))
        per_axis = cdf[:, :, 1:] - cdf[:, :, :-1]  # (modes, 2, bins)
        return (per_axis[:, 0, :, None] * per_axis[:, 1, None, :]).mean(0)

    def in_support(self, xy: Tensor) -> Tensor:
        d2 = (xy.double().unsqueeze(1) - self.centres).square().sum(-1)
        return (d2 < (3 * self.std) ** 2).any(-1)

    def gm_parameters(self) -> tuple[Tensor, Tensor, float]:
        """(means (N, K, 2, 1, 1), logweights (N, K, 1, 1, 1), logstd): this data as per-class GMs, for
        :class:`gmfm.models.AnalyticGMDenoiser`; N = num_classes (1 if unconditional)."""
        classes = max(self.num_classes, 1)
        per_class = self.modes // classes
        index = torch.arange(self.modes).reshape(per_class, classes).T  # class c -> modes c, c + N, ...
        means = self.centres[index].reshape(classes, per_class, 2, 1, 1)
        logweights = torch.full((classes, per_class, 1, 1, 1), -math.log(per_class), dtype=torch.float64)
        return means, logweights, math.log(self.std)


class ConcentricRings(Toy2D):
    """Two concentric rings (radii 1.5 and 3.2, radial Gaussian noise ``width``), 1/3 and 2/3 of the mass."""

    name = "rings"

    def __init__(self, radii: tuple[float, float] = (1.5, 3.2), width: float = 0.15) -> None:
        self.radii = torch.tensor(radii, dtype=torch.float64)
        self.weights = self.radii / self.radii.sum()
        self.width = float(width)

    def sample(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None) -> Tensor:
        ring = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        angle = torch.rand(n, generator=generator, dtype=torch.float64) * 2 * math.pi
        r = self.radii[ring] + self.width * torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.stack([r * angle.cos(), r * angle.sin()], -1).float()

    def density(self, xy: Tensor) -> Tensor:
        r = xy.double().norm(dim=-1).clamp(min=1e-12)
        radial = torch.exp(-0.5 * ((r[:, None] - self.radii) / self.width) ** 2) / (self.width * math.sqrt(2 * math.pi))
        # p(x) = sum_i w_i p_i(r) / (2 pi r): exact up to the negligible mass of r < 0 in the radial Gaussian
        return (self.weights * radial).sum(-1) / (2 * math.pi * r)

    def in_support(self, xy: Tensor) -> Tensor:
        r = xy.double().norm(dim=-1)
        return ((r[:, None] - self.radii).abs() < 3 * self.width).any(-1)


_FACTORIES = {
    "checkerboard": Checkerboard,
    "gaussian_ring": GaussianRing,
    "rings": ConcentricRings,
    "ring_classes": lambda: GaussianRing(modes=8, num_classes=4),
}
TOY_DATASET_NAMES = tuple(_FACTORIES)


def make_toy_dataset(name: str) -> Toy2D:
    """A toy dataset with its paper/default settings: checkerboard, gaussian_ring, rings, or ring_classes
    (8 modes in 4 classes, for guidance)."""
    if name not in _FACTORIES:
        raise ValueError(f"dataset must be one of {list(TOY_DATASET_NAMES)}, got {name!r}")
    return _FACTORIES[name]()


class ToyTrainingData:
    """:class:`~gmfm.data.base.TrainingData` of a toy distribution: every batch is fresh samples (labels
    uniform for a conditional toy), in the image layout (b, 2, 1, 1)."""

    def __init__(self, toy: Toy2D) -> None:
        self.toy = toy

    def batch(self, batch_size: int, generator: torch.Generator, rows: slice) -> dict[str, Tensor]:
        labels = self.toy.sample_labels(batch_size, generator) if self.toy.num_classes else None
        out = {"x0": as_images(self.toy.sample(batch_size, generator, labels))[rows]}
        if labels is not None:
            out["labels"] = labels[rows]
        return out


def toy_dataset(name: str) -> Dataset:
    """A toy as a registry :class:`~gmfm.data.base.Dataset` (``extra["toy"]`` is the distribution)."""
    toy = make_toy_dataset(name)
    names = tuple(f"class {c}" for c in range(toy.num_classes))
    return Dataset(name, (2, 1, 1), toy.num_classes, ToyTrainingData(toy), {}, names, {"toy": toy})
