"""Training noise-level samplers: uniform or logit-normal, then an optional time shift."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..math.random import BatchDraws
from ..math.validation import check_float_in

_FLOAT32 = torch.empty((), dtype=torch.float32)


@dataclass(frozen=True)
class TimeSampler:
    """Draw training noise levels sigma in (0, 1].

    kind "uniform": sigma = 1 - U[0, 1) (the official sampler; never exactly 0);
    kind "logit_normal": sigma = sigmoid(mean + std N(0, 1)) (SD3; the paper's ImageNet recipe, (0, 1));
    then the shift: sigma -> shift sigma / (1 + (shift - 1) sigma), as on the sampling grid.
    """

    kind: str = "uniform"
    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "logit_normal"):
            raise ValueError(f"kind must be 'uniform' or 'logit_normal', got {self.kind!r}")
        check_float_in("mean", self.mean, -1e3, 1e3)
        check_float_in("std", self.std, 0.0, 1e3, low_open=True)
        check_float_in("shift", self.shift, 0.0, 1e3, low_open=True)

    def __call__(self, n: int | BatchDraws, generator: torch.Generator | None = None) -> Tensor:
        """(n,) float32 noise levels (or one per row of ``BatchDraws``), on the CPU (move them with the batch)."""
        draws = n if isinstance(n, BatchDraws) else BatchDraws(generator, n)
        if self.kind == "uniform":
            s = 1 - draws.rand((), _FLOAT32)
        else:
            s = torch.sigmoid(self.mean + self.std * draws.randn((), _FLOAT32))
        return self.shift * s / (1 + (self.shift - 1) * s)
