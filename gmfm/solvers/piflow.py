"""pi-Flow sampling (Chen et al., ICLR 2026, arXiv 2510.14974): one network call per step gives a GM
*policy*, whose velocity is integrated densely with no further calls.

At the start of a segment (x_src, sigma_src) the network's u-GM becomes an x0-GM (``u_to_x0``); at any
later point (x, sigma) of the segment the policy's velocity is u = (x - E[x0 | x]) / sigma, with E[x0 | x]
the mean of that x0-GM re-conditioned on (x, sigma) (:class:`gmfm.math.flow.DenoisingGMConverter`, the
conversion GM-ODE substeps use). Each segment is integrated with Euler substeps uniform in *raw* time r,
``ceil(segment length x total_substeps)`` of them (128 per unit raw time by default); the noise level is
sigma = shift r / (1 + (shift - 1) r).

The NFE-step grid of raw times: r_i = 1 - i b for i < NFE, then 0, with b = 1 / (NFE - 1 + s) and s the
``final_step_size_scale`` (the last segment is s b long).

Shapes: samples (B, C, H, W); the network's u-GM (B, K, C, H, W); noise levels per sample (B,) or floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..math.containers import GaussianMixture
from ..math.flow import DenoisingGMConverter, u_to_x0
from ..math.gm_ops import gm_temperature
from ..math.validation import check_float_in, check_positive_int
from ..models.protocols import Denoiser

#: Euler substeps per unit raw time (LakonLab's default).
TOTAL_SUBSTEPS = 128
#: Smallest noise level a velocity is divided by.
EPS = 1e-6


def warp(r: Tensor | float, shift: float) -> Tensor | float:
    """Noise level sigma of raw time r: shift r / (1 + (shift - 1) r)."""
    return shift * r / (1 + (shift - 1) * r)


def unwarp(sigma: Tensor | float, shift: float) -> Tensor | float:
    """Raw time r of noise level sigma (the inverse of :func:`warp`)."""
    return sigma / (shift + (1 - shift) * sigma)


def segment_starts(nfe: int, final_step_size_scale: float = 1.0) -> list[float]:
    """Raw times of the NFE-step grid: ``nfe`` segment starts from 1, then 0 (``nfe + 1`` values)."""
    check_positive_int("nfe", nfe)
    s = check_float_in("final_step_size_scale", final_step_size_scale, 0.0, 1e3, low_open=True)
    b = 1.0 / (nfe - 1 + s)
    return [1.0 - i * b for i in range(nfe)] + [0.0]


def substep_count(length: float | Tensor, total_substeps: int = TOTAL_SUBSTEPS) -> Any:
    """Euler substeps of a segment of raw length ``length``: ceil(length x total_substeps), at least 1."""
    if isinstance(length, Tensor):
        return torch.ceil(length * total_substeps - 1e-9).clamp(min=1).long()
    return max(1, math.ceil(length * total_substeps - 1e-9))


def auto_temperature(nfe: int) -> float:
    """LakonLab's default GM temperature: min(max(0.1 (NFE - 1), 0), 1) (1 = none)."""
    return min(max(0.1 * (nfe - 1), 0.0), 1.0)


@dataclass(frozen=True, eq=False)
class GMPolicy:
    """A GM policy: an x0-GM predicted at (x_src, sigma_src) and its velocity anywhere after it.

    Build it with :meth:`from_u` from a network's u-GM; :meth:`velocity` gives u (B, C, H, W) at a point,
    :meth:`integrate` the Euler rollout between raw times.
    """

    x0_gm: GaussianMixture
    x_src: Tensor
    sigma_src: Tensor

    @classmethod
    def from_u(cls, u_gm: GaussianMixture, x_src: Tensor, sigma_src: Tensor | float) -> GMPolicy:
        """The policy of a u-GM (B, K, C, H, W) predicted at x_src (B, C, H, W), sigma_src (B,) or a float."""
        sigma = torch.as_tensor(sigma_src, dtype=x_src.dtype, device=x_src.device).reshape(-1).expand(x_src.shape[0])
        return cls(u_to_x0(u_gm, x_src, sigma), x_src, sigma)

    def _converter(self) -> DenoisingGMConverter:
        return DenoisingGMConverter.create(self.x0_gm, self.x_src, self.sigma_src, EPS)

    def detach(self) -> GMPolicy:
        gm = self.x0_gm
        return GMPolicy(GaussianMixture.trusted(gm.means.detach(), gm.logweights.detach(), gm.logstds.detach()),
                        self.x_src.detach(), self.sigma_src.detach())

    def velocity(self, x: Tensor, sigma: Tensor | float, converter: DenoisingGMConverter | None = None) -> Tensor:
        """u = (x - E[x0 | x]) / sigma at x (B, C, H, W), sigma (B,) or a float."""
        converter = converter or self._converter()
        sigma_t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        x0 = converter.mean(x, sigma_t)
        return (x - x0) / sigma_t.clamp(min=EPS).reshape(-1, 1, 1, 1)

    def dropout(self, drop: Tensor) -> GMPolicy:
        """The policy without the components ``drop`` (B, K) bool marks; a sample whose components would all
        be dropped keeps them all."""
        drop = drop & ~drop.all(dim=1, keepdim=True)
        gm = self.x0_gm
        logweights = gm.logweights.masked_fill(drop.reshape(*drop.shape, 1, 1, 1), float("-inf"))
        return GMPolicy(GaussianMixture.trusted(gm.means, torch.log_softmax(logweights, dim=-4), gm.logstds),
                        self.x_src, self.sigma_src)

    def temperature(self, temperature: float) -> GMPolicy:
        """GM temperature T < 1: weights^(1/T) (renormalised) and variances x T; T >= 1 changes nothing."""
        if temperature >= 1:
            return self
        return GMPolicy(gm_temperature(self.x0_gm, max(float(temperature), EPS)), self.x_src, self.sigma_src)

    def integrate(self, x: Tensor, r_from: Tensor | float, r_to: Tensor | float, shift: float = 1.0,
                  total_substeps: int = TOTAL_SUBSTEPS) -> Tensor:
        """Euler rollout of the policy's velocity from raw time ``r_from`` to ``r_to`` (floats, or (B,) per
        sample: each sample then takes its own ceil(length x total_substeps) steps, so its result does not
        depend on the rest of the batch)."""
        batch = x.shape[0]
        r_from = torch.as_tensor(r_from, dtype=torch.float64, device=x.device).reshape(-1).expand(batch)
        r_to = torch.as_tensor(r_to, dtype=torch.float64, device=x.device).reshape(-1).expand(batch)
        steps = substep_count(r_from - r_to, total_substeps)
        dr = (r_from - r_to) / steps
        converter = self._converter()
        for k in range(int(steps.max())):
            active = (k < steps).to(x.dtype).reshape(-1, 1, 1, 1)
            r = torch.maximum(r_from - k * dr, r_to)  # finished samples stay at r_to (and do not move)
            r_next = torch.where(k + 1 >= steps, r_to, torch.maximum(r - dr, r_to))
            sigma, sigma_next = warp(r, shift), warp(r_next, shift)
            u = self.velocity(x, sigma.to(x.dtype), converter)
            x = x + active * u * (sigma_next - sigma).to(x.dtype).reshape(-1, 1, 1, 1)
        return x


@torch.no_grad()
def piflow_sample(
    model: Denoiser,
    noise: Tensor,
    nfe: int,
    *,
    shift: float = 1.0,
    total_substeps: int = TOTAL_SUBSTEPS,
    final_step_size_scale: float = 1.0,
    temperature: float | str = "auto",
    condition: Any = None,
    progress: bool = False,
) -> Tensor:
    """Sample with a pi-Flow student: ``nfe`` network calls, each a GM policy integrated over its segment.

    Args:
        model: the student ``(x_t, sigma, condition) -> u-GM``.
        noise: (B, C, H, W) standard normal at sigma = 1.
        nfe: network calls (segments of the grid, see the module docstring).
        shift: time shift of the grid (the teacher's).
        total_substeps: Euler substeps per unit raw time.
        final_step_size_scale: the last segment's length relative to the others.
        temperature: GM temperature applied to every policy but the last; "auto": :func:`auto_temperature`.
        condition: passed to the model (e.g. class ids (B,)).

    Returns:
        The samples, (B, C, H, W).
    """
    check_positive_int("total_substeps", total_substeps)
    starts = segment_starts(nfe, final_step_size_scale)
    if temperature == "auto":
        temperature = auto_temperature(nfe)
    temperature = check_float_in("temperature", temperature, 0.0, 1e3)
    x = noise
    for i in tqdm(range(nfe), disable=not progress, desc="pi-Flow sampling"):
        sigma = warp(starts[i], shift)
        u_gm = model(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device), condition)
        if not isinstance(u_gm, GaussianMixture):
            raise ValueError("pi-Flow sampling needs a model that predicts a Gaussian mixture (a GM policy)")
        policy = GMPolicy.from_u(u_gm.to(x.dtype), x, sigma)
        if i < nfe - 1:
            policy = policy.temperature(temperature)
        x = policy.integrate(x, starts[i], starts[i + 1], shift, total_substeps)
    return x
