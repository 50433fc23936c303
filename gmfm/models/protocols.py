"""The model contracts every solver, loss and pipeline relies on.

- :class:`Denoiser`: ``(x_t (B, C, H, W), sigma (B,), condition) -> u-GM`` (B, K, C, H, W) over the
  velocity u = noise - x0 (a GMFlow network, :class:`AnalyticGMDenoiser`, ...).
- :class:`VelocityModel`: the same call returning a point prediction u (B, C, H, W) (plain flow matching;
  a denoiser becomes one through :func:`gmfm.solvers.mean_velocity`).
- :class:`SpectrumModel`: an x0 Gaussian N(mean (B, C, H, W), var (B, 1, h, w)) -> log power spectrum
  (B, C, H, W) of the GM-SDE sampling noise (:class:`SpectrumMLP`).

Class-conditional models use the ids 0 .. num_classes - 1 and :func:`null_label` for "no class".
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from ..math.containers import GaussianMixture, IsoGaussian


@runtime_checkable
class Denoiser(Protocol):
    def __call__(self, x_t: Tensor, sigma: Tensor, condition: Any = None) -> GaussianMixture: ...


@runtime_checkable
class VelocityModel(Protocol):
    def __call__(self, x_t: Tensor, sigma: Tensor, condition: Any = None) -> Tensor: ...


@runtime_checkable
class SpectrumModel(Protocol):
    def __call__(self, gaussian: IsoGaussian) -> Tensor: ...


def null_label(num_classes: int) -> int:
    """The class id meaning "unconditional" for a model of ``num_classes`` classes (the official
    convention: one extra row of the label table, id = number of classes)."""
    return int(num_classes)
