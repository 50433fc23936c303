"""Training losses: the GMFlow transition loss (GM NLL at ratio 1) and plain flow matching (L2).

A loss is a callable ``loss(model, batch, generator) -> LossOutput``: ``batch`` is a dict with ``x0``
(B, C, H, W) and, for conditional models, ``labels`` (B,); ``model(x_t, sigma, labels)`` returns a u-GM
(or, for :class:`FlowMatchingLoss`, a u prediction tensor also works). Every random draw (noise level,
noise, label dropout) uses ``generator``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..math.containers import GaussianMixture
from ..math.flow import forward_diffusion, forward_transition, reverse_transition, u_to_x0
from ..math.gm_ops import gm_mean, gm_nll, gm_to_iso_gaussian
from ..math.spectral import spectral_loss
from ..math.random import rand, randn
from ..math.validation import check_float_in, value_checks
from .time_sampler import TimeSampler

#: Smallest training noise level and gap between the two levels of a transition (official: 1e-4 / 1000).
MIN_SIGMA = 1e-7


@dataclass(frozen=True, eq=False)
class LossOutput:
    """loss: the scalar to minimise; logs: floats worth logging (including the loss)."""

    loss: Tensor
    logs: dict[str, Tensor]


def drop_labels(labels: Tensor | None, probability: float, null_label: int | None,
                generator: torch.Generator | None) -> Tensor | None:
    """Replace each label by ``null_label`` with ``probability`` (classifier-free training)."""
    if labels is None or probability <= 0:
        return labels
    if null_label is None:
        raise ValueError("null_label is required for label dropout")
    drop = rand(labels.shape, generator, torch.empty((), dtype=torch.float32, device=labels.device)) < probability
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def _device_tensor(t: Tensor, like: Tensor) -> Tensor:
    return t.to(device=like.device, dtype=like.dtype)


@dataclass(frozen=True)
class GMFlowLoss:
    """GMFlow's transition loss (paper Sec. 3.1, Eq. 7-9).

    Draw sigma_high from ``time_sampler`` and sigma_low = (1 - transition_ratio) sigma_high; diffuse x0 to
    x_low, then x_low to x_high; the network's u-GM at x_high gives, through the GM-SDE transition, a GM
    over x_low, and the loss is its NLL of x_low (per pixel, summed over channels, official convention:
    no 2 pi, 1/s clamped at 1e4), averaged over batch and pixels, times ``weight``.
    ``transition_ratio = 1`` (sigma_low = 0) is the plain GM NLL of x0.

    label_dropout: probability of replacing a label by ``null_label`` (class-conditional training).
    spectral_weight: > 0 adds the spectral loss (paper App. A.3) of ``model.spectrum_net``, which sees the
        network's moment-matched x0 Gaussian (no gradient into the network from it).
    """

    transition_ratio: float = 0.9
    time_sampler: TimeSampler = field(default_factory=TimeSampler)
    weight: float = 1.0
    label_dropout: float = 0.0
    null_label: int | None = None
    spectral_weight: float = 0.0

    def __post_init__(self) -> None:
        check_float_in("transition_ratio", self.transition_ratio, 0.0, 1.0, low_open=True)
        check_float_in("label_dropout", self.label_dropout, 0.0, 1.0, high_open=True)

    def __call__(self, model, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> LossOutput:
        x0 = batch["x0"]
        n = x0.shape[0]
        sigma_high = _device_tensor(self.time_sampler(n, generator), x0).clamp(min=MIN_SIGMA, max=1.0)
        sigma_low = torch.minimum(sigma_high * (1 - self.transition_ratio), sigma_high - MIN_SIGMA).clamp(min=0)
        noise = randn((2 * n, *x0.shape[1:]), generator, x0)
        labels = drop_labels(batch.get("labels"), self.label_dropout, self.null_label, generator)
        with value_checks(False):  # the noise levels are valid by construction: no device round trips
            x_low = forward_diffusion(x0, sigma_low, noise[:n])
            x_high = forward_transition(x_low, sigma_low, sigma_high, noise[n:])
            u_gm = model(x_high, sigma_high, labels)
            if not isinstance(u_gm, GaussianMixture):
                raise ValueError(f"GMFlowLoss needs a model that returns a GaussianMixture, got {type(u_gm).__name__}")
            # The loss is computed in float32 even when the network runs in lower precision (official).
            u_gm = u_gm.to(torch.float32)
            trans = reverse_transition(u_gm, x_high.float(), sigma_high.float(), sigma_low.float(), "u")
            loss = gm_nll(trans, x_low.float()).mean() * self.weight
            logs = {"loss": loss.detach(), "logstd": u_gm.logstds.detach().mean()}
            spectrum_net = getattr(model, "spectrum_net", None)
            if self.spectral_weight > 0 and spectrum_net is not None:
                with torch.no_grad():
                    x0_gaussian = u_to_x0(gm_to_iso_gaussian(u_gm), x_high.float(), sigma_high.float())
                    u_target = (x_high.float() - x0.float()) / sigma_high.float().reshape(-1, 1, 1, 1)
                log_power = spectrum_net(x0_gaussian.to(next(spectrum_net.parameters()).dtype)).float()
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
        check_float_in("label_dropout", self.label_dropout, 0.0, 1.0, high_open=True)

    def __call__(self, model, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> LossOutput:
        x0 = batch["x0"]
        sigma = _device_tensor(self.time_sampler(x0.shape[0], generator), x0)
        noise = randn(x0.shape, generator, x0)
        labels = drop_labels(batch.get("labels"), self.label_dropout, self.null_label, generator)
        with value_checks(False):
            x_t = forward_diffusion(x0, sigma, noise)
            pred = model(x_t, sigma, labels)
        u_pred = gm_mean(pred) if isinstance(pred, GaussianMixture) else pred
        loss = (u_pred.float() - (noise - x0).float()).square().mean() * self.weight
        return LossOutput(loss, {"loss": loss.detach()})
