"""Statistical helpers for the exactness tests (no scipy: the asymptotic KS distribution is enough here)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ks_statistic(a: Tensor, b: Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| of 1-D samples."""
    a, b = torch.sort(a.double().flatten())[0], torch.sort(b.double().flatten())[0]
    grid = torch.cat([a, b])
    fa = torch.searchsorted(a, grid, right=True).double() / len(a)
    fb = torch.searchsorted(b, grid, right=True).double() / len(b)
    return float((fa - fb).abs().max())


def ks_pvalue(a: Tensor, b: Tensor) -> float:
    """Asymptotic p-value of the two-sample KS test (Stephens' small-sample correction)."""
    n, m = a.numel(), b.numel()
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * ks_statistic(a, b)
    if lam < 1e-3:
        return 1.0
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return min(max(p, 0.0), 1.0)


def sliced_ks_min_pvalue(x: Tensor, y: Tensor, num_directions: int = 8, seed: int = 0) -> float:
    """Smallest KS p-value over random 1-D projections of two point clouds (N, D), Bonferroni-corrected."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(num_directions, x.shape[1], generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    x, y = x.double(), y.double()
    pvalues = [ks_pvalue(x @ d, y @ d) for d in dirs]
    return min(1.0, min(pvalues) * num_directions)


#: Bound on the global relative L2 distance of the weights (model + EMA) of runs that must be equal up to
#: float summation order. Measured spread (``python -m benchmarks.distributed_spread``,
#: benchmarks/results/distributed_spread.md): 1 vs 2 processes, 8 seeds x 1 and 2 threads, at most 4.3e-7 on
#: AMD EPYC; deliberately broken trainers (a dropped row, noise drawn per process) 8e-3 and more. 1e-4 lies
#: over two orders of magnitude above the first (room for other CPUs' kernels and summation orders) and
#: almost two below the second.
WORLD_SIZE_BOUND = 1e-4
