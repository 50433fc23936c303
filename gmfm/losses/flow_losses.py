"""Training losses: the GMFlow transition loss (GM NLL at ratio 1) and plain flow matching (L2).

A loss is called as ``loss(model, batch, draws) -> LossOutput``:

- ``model``: a :class:`gmfm.models.Denoiser` ``(x_t, sigma, labels) -> u-GM`` (for
  :class:`FlowMatchingLoss` a velocity model returning u (B, C, H, W) also works);
- ``batch``: a dict with ``x0`` (B, C, H, W) and, for conditional models, ``labels`` (B,) int64;
- ``draws``: the randomness (noise level, noise, label dropout): a :class:`gmfm.math.random.BatchDraws`
  (one slice of a global batch: distributed training), a ``torch.Generator`` or None;

A GMFlow model that carries a ``spectrum_net`` (:class:`gmfm.models.SpectrumModel`, e.g.
:class:`gmfm.models.GMFlowModel`) has it trained by the spectral loss of :class:`GMFlowLoss`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from ..math.containers import GaussianMixture
from ..math.flow import forward_diffusion, forward_transition, reverse_transition, sde_step, u_to_x0
from ..math.gm_ops import gm_mean, gm_nll, gm_to_iso_gaussian
from ..math.random import BatchDraws
from ..math.spectral import spectral_loss
from ..math.validation import check_float_in, check_positive_int, value_checks
from ..models.protocols import Denoiser, SpectrumModel, VelocityModel
from .time_sampler import TimeSampler

#: Smallest training noise level and gap between the two levels of a transition (official: 1e-4 / 1000).
MIN_SIGMA = 1e-7
_FLOAT32 = torch.empty((), dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class LossOutput:
    """loss: the scalar to minimise; logs: scalars worth logging (including the loss), detached."""

    loss: Tensor
    logs: dict[str, Tensor]


class Loss(Protocol):
    """The training-loss contract (see the module docstring)."""

    def __call__(self, model: Denoiser | VelocityModel, batch: dict[str, Tensor],
                 draws: BatchDraws | torch.Generator | None = None) -> LossOutput: ...


def drop_labels(labels: Tensor | None, probability: float, null_label: int | None,
                draws: BatchDraws | torch.Generator | None) -> Tensor | None:
    """Replace each label (B,) by ``null_label`` with ``probability`` (classifier-free training)."""
    if labels is None or probability <= 0:
        return labels
    if null_label is None:
        raise ValueError("null_label is required for label dropout")
    draws = BatchDraws.of(draws, labels.shape[0])
    drop = draws.rand((), _FLOAT32).to(labels.device) < probability
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def check_batch(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
    """(x0 (B, C, H, W), labels (B,) or None) of a training batch, checked."""
    if not isinstance(batch, dict) or "x0" not in batch:
        raise ValueError("a training batch must be a dict with 'x0' (B, C, H, W) and optionally 'labels' (B,)")
    x0, labels = batch["x0"], batch.get("labels")
    if not isinstance(x0, Tensor) or x0.dim() != 4 or not x0.is_floating_point():
        raise ValueError(f"batch['x0'] must be a floating (B, C, H, W) tensor, got {getattr(x0, 'shape', x0)!r}")
    if labels is not None:
        if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError("batch['labels'] must be an integer tensor of class ids")
        if tuple(labels.shape) != (x0.shape[0],):
            raise ValueError(f"batch['labels'] must have shape ({x0.shape[0]},) to match x0, got {tuple(labels.shape)}")
    return x0, labels


def _device_tensor(t: Tensor, like: Tensor) -> Tensor:
    return t.to(device=like.device, dtype=like.dtype)


def _check_label_dropout(label_dropout: float, null_label: int | None) -> None:
    check_float_in("label_dropout", label_dropout, 0.0, 1.0, high_open=True)
    if label_dropout > 0 and null_label is None:
        raise ValueError("null_label is required when label_dropout > 0")


@dataclass(frozen=True)
class GMFlowLoss:
    """GMFlow's transition loss (paper Sec. 3.1, Eq. 7-9).

    Draw sigma_high from ``time_sampler`` and sigma_low = (1 - transition_ratio) sigma_high; diffuse x0 to
    x_low, then x_low to x_high; the network's u-GM at x_high gives, through the GM-SDE transition, a GM
    over x_low, and the loss is its NLL of x_low (per pixel, summed over channels, official convention:
    no 2 pi, 1/s clamped at 1e4), averaged over batch and pixels, times ``weight``.
    ``transition_ratio = 1`` (sigma_low = 0) is the plain GM NLL of x0.

    transition_draws: M >= 1. The target x_low is drawn M times from the exact Gaussian bridge
        p(x_low | x0, x_high) (the first draw is the one that made x_high) and the M NLLs under the one
        network output are averaged: the same expectation as the official loss (M = 1) with less variance,
        at the same network cost (beyond the paper).
    label_dropout: probability of replacing a label by ``null_label`` (class-conditional training).
    spectral_weight: > 0 adds the spectral loss (paper App. A.3) of the model's ``spectrum_net`` (when it
        has one), which sees the network's moment-matched x0 Gaussian (no gradient into the network from it).
    """

    transition_ratio: float = 0.9
    time_sampler: TimeSampler = field(default_factory=TimeSampler)
    weight: float = 1.0
    label_dropout: float = 0.0
    null_label: int | None = None
    spectral_weight: float = 0.0
    transition_draws: int = 1

    def __post_init__(self) -> None:
        check_float_in("transition_ratio", self.transition_ratio, 0.0, 1.0, low_open=True)
        check_positive_int("transition_draws", self.transition_draws)
        check_float_in("weight", self.weight, 0.0, 1e6, low_open=True)
        check_float_in("spectral_weight", self.spectral_weight, 0.0, 1e6)
        _check_label_dropout(self.label_dropout, self.null_label)

    def __call__(self, model: Denoiser, batch: dict[str, Tensor],
                 draws: BatchDraws | torch.Generator | None = None) -> LossOutput:
        x0, labels = check_batch(batch)
        spectrum_net: SpectrumModel | None = getattr(model, "spectrum_net", None)
        n = x0.shape[0]
        draws = BatchDraws.of(draws, n)
        sigma_high = _device_tensor(self.time_sampler(draws), x0).clamp(min=MIN_SIGMA, max=1.0)
        sigma_low = torch.minimum(sigma_high * (1 - self.transition_ratio), sigma_high - MIN_SIGMA).clamp(min=0)
        noise_low, noise_high = draws.randn(x0.shape[1:], x0), draws.randn(x0.shape[1:], x0)
        labels = drop_labels(labels, self.label_dropout, self.null_label, draws)
        with value_checks(False):  # the noise levels are valid by construction: no device round trips
            x_low = forward_diffusion(x0, sigma_low, noise_low)
            x_high = forward_transition(x_low, sigma_low, sigma_high, noise_high)
            u_gm = model(x_high, sigma_high, labels)
            if not isinstance(u_gm, GaussianMixture):
                raise ValueError(f"GMFlowLoss needs a model that returns a GaussianMixture, got {type(u_gm).__name__}")
            # The loss is computed in float32 even when the network runs in lower precision (official).
            u_gm = u_gm.to(torch.float32)
            trans = reverse_transition(u_gm, x_high.float(), sigma_high.float(), sigma_low.float(), "u")
            nll = gm_nll(trans, x_low.float())
            if self.transition_draws > 1:  # more draws of x_low from the bridge p(x_low | x0, x_high)
                extra = draws.randn((self.transition_draws - 1, *x0.shape[1:]), x0)
                for m in range(self.transition_draws - 1):
                    nll = nll + gm_nll(trans, sde_step(x0, x_high, sigma_high, sigma_low, extra[:, m]).float())
                nll = nll / self.transition_draws
            loss = nll.mean() * self.weight
            logs = {"loss": loss.detach(), "logstd": u_gm.logstds.detach().mean()}
            if self.spectral_weight > 0 and spectrum_net is not None:
                with torch.no_grad():
                    x0_gaussian = u_to_x0(gm_to_iso_gaussian(u_gm), x_high.float(), sigma_high.float())
                    u_target = (x_high.float() - x0.float()) / sigma_high.float().reshape(-1, 1, 1, 1)
                log_power = spectrum_net(x0_gaussian).float()
                spectral = spectral_loss(u_gm, u_target, log_power, self.spectral_weight)
                loss = loss + spectral
                logs.update(loss=loss.detach(), spectral=spectral.detach())
        return LossOutput(loss, logs)


@dataclass(frozen=True)
class FlowMatchingLoss:
    """Plain flow matching: mean squared error between the predicted velocity (the GM mean, for a GM
    model such as K = 1) and u = noise - x0 at x_t = (1 - sigma) x0 + sigma noise, times ``weight``."""

    time_sampler: TimeSampler = field(default_factory=TimeSampler)
    weight: float = 1.0
    label_dropout: float = 0.0
    null_label: int | None = None

    def __post_init__(self) -> None:
        check_float_in("weight", self.weight, 0.0, 1e6, low_open=True)
        _check_label_dropout(self.label_dropout, self.null_label)

    def __call__(self, model: Denoiser | VelocityModel, batch: dict[str, Tensor],
                 draws: BatchDraws | torch.Generator | None = None) -> LossOutput:
        x0, labels = check_batch(batch)
        draws = BatchDraws.of(draws, x0.shape[0])
        sigma = _device_tensor(self.time_sampler(draws), x0)
        noise = draws.randn(x0.shape[1:], x0)
        labels = drop_labels(labels, self.label_dropout, self.null_label, draws)
        with value_checks(False):
            x_t = forward_diffusion(x0, sigma, noise)
            pred = model(x_t, sigma, labels)
        u_pred = gm_mean(pred) if isinstance(pred, GaussianMixture) else pred
        loss = (u_pred.float() - (noise - x0).float()).square().mean() * self.weight
        return LossOutput(loss, {"loss": loss.detach()})
