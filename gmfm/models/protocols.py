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

import torch
from torch import Tensor

from ..math.containers import GaussianMixture, IsoGaussian


@runtime_checkable
class Denoiser(Protocol):
    """``(x_t (B, C, H, W), sigma (B,), condition) -> u-GM (B, K, C, H, W)`` over the velocity u = noise - x0."""

    def __call__(self, x_t: Tensor, sigma: Tensor, condition: Any = None) -> GaussianMixture: ...


@runtime_checkable
class VelocityModel(Protocol):
    """``(x_t (B, C, H, W), sigma (B,), condition) -> u (B, C, H, W)``, a point prediction of the velocity."""

    def __call__(self, x_t: Tensor, sigma: Tensor, condition: Any = None) -> Tensor: ...


@runtime_checkable
class SpectrumModel(Protocol):
    """x0 Gaussian N(mean (B, C, H, W), var (B, 1, h, w)) -> log power spectrum (B, C, H, W) of the GM-SDE noise."""

    def __call__(self, gaussian: IsoGaussian) -> Tensor: ...


def null_label(num_classes: int) -> int:
    """The class id meaning "unconditional" for a model of ``num_classes`` classes.

    The official convention: one extra row of the label table, id = number of classes.

    Args:
        num_classes: the number of real classes.

    Returns:
        ``num_classes`` as an int.
    """
    return int(num_classes)


def check_class_labels(name: str, labels: object, batch_size: int, num_classes: int) -> Tensor:
    """``labels`` as an int64 (B,) tensor of class ids in [0, num_classes] (num_classes = the null label).

    Float or boolean labels are refused (truncating 0.7 to class 0 would be silent).

    Args:
        name: the argument's name in error messages.
        labels: integer tensor (B,) of class ids.
        batch_size: B.
        num_classes: the number of real classes.

    Returns:
        ``labels`` as int64 (B,).

    Raises:
        ValueError: if ``labels`` is not a tensor, is float, complex or boolean, is not (B,), or holds ids
            outside [0, num_classes].
    """
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name} must be a ({batch_size},) tensor of integer class ids, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class ids, got dtype {labels.dtype}")
    if tuple(labels.shape) != (batch_size,):
        raise ValueError(f"{name} must have shape ({batch_size},) (one class id per sample), got {tuple(labels.shape)}")
    if bool(((labels < 0) | (labels > null_label(num_classes))).any()):
        raise ValueError(f"{name} must be in [0, {null_label(num_classes)}] ({null_label(num_classes)} = the null "
                         "class)")
    return labels.long()
