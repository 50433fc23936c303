"""GM-SDE and GM-ODE samplers (paper Sec. 3.2, 3.5), order 1 and 2, with guidance.

A denoiser (:class:`gmfm.models.Denoiser`) is any callable ``denoiser(x_t, sigma, condition)`` returning
the u-GM (B, K, C, H, W) at x_t (B, C, H, W) and noise level sigma (B,): a trained GMFlow network, or
:class:`gmfm.models.AnalyticGMDenoiser`.

Under guidance (a :class:`gmfm.guidance.Guidance` value that needs the unconditional pass) the denoiser is
called ONCE per step on a doubled batch: rows [0, B) hold the conditional inputs (``condition``), rows
[B, 2B) the unconditional ones (``uncond_condition``); the same x_t and sigma are used for both halves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..guidance.base import Guidance, GuidedGM, active_guidance
from ..math.containers import GaussianMixture, IsoGaussian
from ..math.flow import DenoisingGMConverter, euler_step, sde_step, u_to_x0
from ..math.gm_ops import gm_mean, gm_sample, gm_to_iso_gaussian
from ..math.spectral import spectral_gm_sample
from ..math.random import Generators, check_generators, randn
from ..math.validation import check_finite, check_positive_int, check_tensor
from ..models.protocols import Denoiser, SpectrumModel
from .second_order import DEFAULT_COEFS, SecondOrderState, second_order_correction
from .timesteps import flow_sigmas


@dataclass(frozen=True, eq=False)
class GMFlowStep:
    """One network evaluation of a sampling run.

    sigma: its noise level; x_t: its input (B, C, H, W); x0_gm: the x0-GM it sampled with, after guidance
    and 2nd-order correction (B, K, C, H, W); x0: the x0 of its first substep (the GM mean for GM-ODE, a GM
    sample for GM-SDE), (B, C, H, W).
    """

    sigma: float
    x_t: Tensor
    x0_gm: GaussianMixture
    x0: Tensor


@dataclass(frozen=True, eq=False)
class GMFlowSampleOutput:
    """sample: the result at sigma = 0 (B, C, H, W); steps: one record per evaluation if requested."""

    sample: Tensor
    steps: list[GMFlowStep] | None = None


def concat_conditions(cond: Any, uncond: Any) -> Any:
    """Batch a conditional and an unconditional input: [cond; uncond] along dim 0.

    Tensors are concatenated; lists/tuples are joined; dicts are concatenated key by key.
    """
    if isinstance(cond, Tensor) and isinstance(uncond, Tensor):
        return torch.cat([cond, uncond.to(cond.device)], dim=0)
    if isinstance(cond, Mapping) and isinstance(uncond, Mapping):
        if set(cond) != set(uncond):
            raise ValueError("condition and uncond_condition must have the same keys")
        return {key: concat_conditions(cond[key], uncond[key]) for key in cond}
    if isinstance(cond, Sequence) and isinstance(uncond, Sequence) and not isinstance(cond, str):
        return [*cond, *uncond]
    raise ValueError(
        "condition and uncond_condition must both be tensors, lists or dicts of tensors, got "
        f"{type(cond).__name__} and {type(uncond).__name__}"
    )


def guided_condition(guidance: Guidance | None, condition: Any, uncond_condition: Any,
                     batch: int) -> tuple[Guidance | None, Any]:
    """The one place a sampler decides whether the unconditional pass runs.

    Args:
        guidance: the guidance value or None.
        condition, uncond_condition: the model's inputs for the B samples (tensors with B rows).
        batch: B.

    Returns:
        (the guidance if it needs the unconditional pass, else None; the model's condition: the doubled
        [condition; uncond_condition] under guidance, else ``condition``).

    Raises:
        ValueError: the guidance needs ``uncond_condition`` and has none, or a condition has another batch size.
    """
    guidance = active_guidance(guidance)
    check_condition_batch("condition", condition, batch)
    if guidance is None:
        return None, condition
    if uncond_condition is None:
        raise ValueError(f"uncond_condition is required by {guidance}")
    check_condition_batch("uncond_condition", uncond_condition, batch)
    return guidance, concat_conditions(condition, uncond_condition)


def _call_denoiser(
    denoiser: Denoiser, x_t: Tensor, sigma: float, condition: Any, step: int, verify: bool
) -> GaussianMixture:
    gm = denoiser(x_t, torch.full((x_t.shape[0],), sigma, dtype=x_t.dtype, device=x_t.device), condition)
    if not isinstance(gm, GaussianMixture):
        raise ValueError(f"the denoiser must return a GaussianMixture, got {type(gm).__name__}")
    if gm.batch_shape != x_t.shape[:1] or gm.event_shape != x_t.shape[1:]:
        raise ValueError(
            f"the denoiser returned a GM with means {tuple(gm.means.shape)}, expected (B, K, C, H, W) with "
            f"(B, C, H, W) = {tuple(x_t.shape)}"
        )
    gm = gm.to(x_t.dtype)  # GM math runs in the sampler's dtype (float32 at least)
    if verify:
        gm.check_finite(f"denoiser output at step {step} (sigma={sigma:.4g})")
    return gm


@dataclass(frozen=True, eq=False)
class StepPrediction:
    """What one network evaluation gives the substeps of its step.

    x0_gm: the x0-GM after guidance and the 2nd-order correction (B, K, C, H, W), predicted at
    (x_t (B, C, H, W), sigma); gaussian: the Gaussian it was moved to (None: its moment-matched Gaussian),
    the input of spectral sampling.
    """

    x0_gm: GaussianMixture
    x_t: Tensor
    sigma: float
    gaussian: IsoGaussian | None = None

    @cached_property
    def _converter(self) -> DenoisingGMConverter:
        return DenoisingGMConverter.create(self.x0_gm, self.x_t, self.sigma)

    def gm_at(self, x: Tensor, sigma: float) -> GaussianMixture:
        """The x0-GM at a substep point (x (B, C, H, W), sigma): the step's own GM at its noise level,
        re-conditioned on (x, sigma) at a later substep (exact for an exact GM)."""
        return self.x0_gm if sigma == self.sigma else self._converter.converted(x, sigma)

    def mean_at(self, x: Tensor, sigma: float) -> Tensor:
        """GM-ODE's x0 (B, C, H, W) at a substep: the GM mean at the step's own point, the re-conditioned
        mean later."""
        return gm_mean(self.x0_gm) if sigma == self.sigma else self._converter.mean(x, sigma)

    def sample_at(self, x: Tensor, sigma: float, generator: Generators = None,
                  spectrum: SpectrumModel | None = None) -> Tensor:
        """GM-SDE's x0 (B, C, H, W) at a substep: a draw of :meth:`gm_at`; at the step's own point with
        ``spectrum``, by spectral sampling."""
        if sigma == self.sigma and spectrum is not None:  # pixels correlated by the predicted power spectrum
            gaussian = self.gaussian if self.gaussian is not None else gm_to_iso_gaussian(self.x0_gm)
            return spectral_gm_sample(self.x0_gm, spectrum(gaussian).to(x.dtype), generator)
        return gm_sample(self.gm_at(x, sigma), generator)


def predict_step(
    denoiser: Denoiser,
    x: Tensor,
    sigma: float,
    sigma_next: float,
    *,
    condition: Any = None,
    guidance: Guidance | None = None,
    order: int = 1,
    previous: SecondOrderState | None = None,
    second_order_coefs: tuple[float, float] = DEFAULT_COEFS,
    second_order_refinement: int = 0,
    step: int = 0,
    check_outputs: bool = True,
) -> tuple[StepPrediction, SecondOrderState | None]:
    """One network evaluation of a GM solver: the denoiser's u-GM at (x (B, C, H, W), sigma) as an x0-GM,
    guided and 2nd-order corrected.

    Args:
        guidance: an active guidance (see :func:`gmfm.guidance.active_guidance`) or None; when given,
            ``condition`` must already be the doubled [cond; uncond] input.
        sigma_next: the noise level of the next network evaluation (0 after the last one).
        previous: the 2nd-order state of the previous step (order 2).
        second_order_refinement: extra bias adjustments of the 2nd-order correction (the official
            ``gm2_correction_steps``; default 0).

    Returns:
        (:class:`StepPrediction`, the 2nd-order state for the next step or None for order 1).
    """
    batch = x.shape[0]
    x_in = torch.cat([x, x]) if guidance is not None else x
    gm_u = _call_denoiser(denoiser, x_in, sigma, condition, step, check_outputs)
    x0_gm = u_to_x0(gm_u, x_in, sigma)
    guided = guidance.guide_gm(x0_gm[:batch], x0_gm[batch:]) if guidance is not None else None
    if order == 2:
        h = sigma - sigma_next  # the last step has sigma_next = 0, so h = sigma
        corrected = second_order_correction(guided or GuidedGM.unguided(x0_gm), x, sigma, h, previous,
                                            second_order_coefs, second_order_refinement)
        gaussian = corrected.gaussian if corrected.gaussian is not None else (guided.target if guided else None)
        return StepPrediction(corrected.gm, x, sigma, gaussian), corrected.state
    if guided is not None:
        return StepPrediction(guided.gm, x, sigma, guided.target), None
    return StepPrediction(x0_gm, x, sigma), None


def as_images(x: Tensor, name: str) -> tuple[Tensor, bool]:
    """(B, C, H, W) samples, or (B, D) points as (B, D, 1, 1); the flag says whether to flatten back."""
    check_tensor(name, x, min_dim=2)
    if x.dim() == 2:
        return x[:, :, None, None], True
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W) or (B, D), got {tuple(x.shape)}")
    return x, False


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """GM math runs in float32 at least: half-precision inputs are promoted (1 / 1e-6 overflows float16)."""
    return torch.promote_types(dtype, torch.float32)


@torch.no_grad()
def gmflow_sample(
    denoiser: Denoiser,
    noise: Tensor,
    steps: int,
    *,
    method: Literal["sde", "ode"] = "ode",
    order: int = 1,
    substeps: int = 1,
    shift: float = 1.0,
    sigmas: Sequence[float] | Tensor | None = None,
    condition: Any = None,
    uncond_condition: Any = None,
    guidance: Guidance | None = None,
    second_order_coefs: tuple[float, float] = DEFAULT_COEFS,
    spectrum: SpectrumModel | None = None,
    generator: Generators = None,
    return_steps: bool = False,
    progress: bool = False,
    check_outputs: bool = True,
) -> GMFlowSampleOutput:
    """Sample with GM-SDE (``method="sde"``) or GM-ODE (``method="ode"``) from noise at sigma = 1.

    Args:
        denoiser: ``(x_t (B', C, H, W), sigma (B',), condition) -> u-GM (B', K, C, H, W)``.
        noise: (B, C, H, W) standard normal starting point, or (B, D) points (the denoiser then sees
            (B, D, 1, 1)). Half-precision noise is promoted: the sampler works in float32 at least.
        steps: number of network evaluations N >= 1 (doubled in batch under guidance).
        method: "ode" samples with the GM mean and Euler substeps (GM-ODE, official output_mode "mean");
            "sde" samples x0 from the GM and takes the exact GM-SDE transition (output_mode "sample").
        order: 1, or 2 for the 2nd-order GM correction.
        substeps: n >= 1 network-free substeps per step. GM-ODE substep j > 0 uses the mean of the step's
            GM re-conditioned on the current (x, sigma); GM-SDE substeps sample from that GM (exact for an
            exact GM; the official code allows only n = 1 for GM-SDE).
        shift: time shift of the grid (see :func:`flow_sigmas`).
        sigmas: an explicit grid instead of ``flow_sigmas(steps * substeps, shift)``: ``steps * substeps + 1``
            decreasing noise levels in [0, 1] (e.g. a diffusers scheduler's ``sigmas``, whose float32 values
            differ from the float64 default grid by rounding).
        condition: passed to the denoiser (e.g. class ids (B,)).
        uncond_condition: the unconditional input; under guidance the denoiser sees
            [condition; uncond_condition] (see :func:`concat_conditions`).
        guidance: e.g. ``ProbabilisticGuidance(0.3)`` or ``ClassifierFreeGuidance(2.0)``; None = unguided.
        second_order_coefs: (ca, cb) damping coefficients of order 2.
        spectrum: GM-SDE only: maps the step's x0 Gaussian to the log power spectrum (B, C, H, W) of the
            sampling noise (e.g. a :class:`gmfm.models.SpectrumMLP`); x0 is then drawn by spectral sampling.
        generator: drives every random draw (GM sampling and SDE noise); a list of B generators makes
            sample i depend on generator i only.
        return_steps: also return one :class:`GMFlowStep` per evaluation.
        progress: show a progress bar.
        check_outputs: raise ``ValueError`` when the denoiser returns NaN/inf.

    Returns:
        :class:`GMFlowSampleOutput` with ``sample`` of the shape of ``noise`` (float32 at least).
    """
    noise, points = as_images(noise, "noise")
    noise = noise.to(working_dtype(noise.dtype))
    check_finite("noise", noise)
    check_positive_int("steps", steps)
    check_positive_int("substeps", substeps)
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if method not in ("sde", "ode"):
        raise ValueError(f"method must be 'sde' or 'ode', got {method!r}")
    if spectrum is not None and method != "sde":
        raise ValueError("spectrum (spectral sampling) applies to method='sde' only")
    generator = check_generators(generator, noise.shape[0])
    guidance, denoiser_condition = guided_condition(guidance, condition, uncond_condition, noise.shape[0])

    sigmas = flow_sigmas(steps * substeps, shift).tolist() if sigmas is None else _check_grid(sigmas, steps * substeps)
    x = noise
    previous: SecondOrderState | None = None
    records: list[GMFlowStep] = []

    for i in tqdm(range(steps), disable=not progress, desc="GMFlow sampling"):
        first = i * substeps
        # Noise levels stay Python floats on this path: no device synchronisation for argument checks.
        prediction, previous = predict_step(
            denoiser, x, sigmas[first], sigmas[first + substeps], condition=denoiser_condition, guidance=guidance,
            order=order, previous=previous, second_order_coefs=second_order_coefs, step=i,
            check_outputs=check_outputs)
        for j in range(substeps):
            s, s_to = sigmas[first + j], sigmas[first + j + 1]
            if method == "ode":
                x0 = prediction.mean_at(x, s)
                x_next = euler_step(x0, x, s, s_to)
            else:
                x0 = prediction.sample_at(x, s, generator, spectrum)
                x_next = sde_step(x0, x, s, s_to, randn(x.shape, generator, x))
            if j == 0 and return_steps:
                records.append(GMFlowStep(prediction.sigma, x, prediction.x0_gm, x0))
            x = x_next

    return GMFlowSampleOutput(x.flatten(1) if points else x, records if return_steps else None)


def _check_grid(sigmas: Sequence[float] | Tensor, num_steps: int) -> list[float]:
    values = [float(v) for v in (sigmas.tolist() if isinstance(sigmas, Tensor) else sigmas)]
    if len(values) != num_steps + 1:
        raise ValueError(f"sigmas must hold steps * substeps + 1 = {num_steps + 1} noise levels, got {len(values)}")
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values) or any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(f"sigmas must decrease strictly within [0, 1], got {values}")
    return values


def check_condition_batch(name: str, condition: Any, batch: int) -> None:
    """A tensor condition must have one row per sample (B, ...); integer class ids, not floats."""
    if isinstance(condition, Tensor):
        if condition.dim() == 0 or condition.shape[0] != batch:
            raise ValueError(f"{name} must have one row per sample: shape ({batch}, ...), got {tuple(condition.shape)}")
