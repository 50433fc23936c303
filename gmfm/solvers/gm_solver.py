"""GM-SDE and GM-ODE samplers (paper Sec. 3.2, 3.5), order 1 and 2, with guidance.

A denoiser is any callable ``denoiser(x_t, sigma, condition) -> GaussianMixture`` returning the u-GM
(B, K, C, H, W) at x_t (B, C, H, W) and noise level sigma (B,): a trained GMFlow network wrapped to that
signature, or :class:`gmfm.models.AnalyticGMDenoiser`.

Under guidance the denoiser is called ONCE per step on a doubled batch: rows [0, B) hold the
conditional inputs (``condition``), rows [B, 2B) the unconditional ones (``uncond_condition``); the
same x_t and sigma are used for both halves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..guidance.cfg import cfg_gm
from ..guidance.probabilistic import GuidanceOutput, probabilistic_guidance
from ..math.containers import GaussianMixture, IsoGaussian
from ..math.flow import DenoisingGMConverter, euler_step, sde_step, u_to_x0
from ..math.gm_ops import gm_mean, gm_sample, gm_to_iso_gaussian
from ..math.spectral import spectral_gm_sample
from ..math.random import randn
from ..math.validation import check_finite, check_float_in, check_positive_int, check_tensor
from .second_order import DEFAULT_COEFS, SecondOrderState, second_order_correction
from .timesteps import flow_sigmas

Denoiser = Callable[[Tensor, Tensor, Any], GaussianMixture]


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


def _call_denoiser(
    denoiser: Denoiser, x_t: Tensor, sigma: float, condition: Any, step: int, verify: bool
) -> tuple[GaussianMixture, Tensor]:
    gm = denoiser(x_t, torch.full((x_t.shape[0],), sigma, dtype=x_t.dtype, device=x_t.device), condition)
    if not isinstance(gm, GaussianMixture):
        raise ValueError(f"the denoiser must return a GaussianMixture, got {type(gm).__name__}")
    if gm.batch_shape != x_t.shape[:1] or gm.event_shape != x_t.shape[1:]:
        raise ValueError(
            f"the denoiser returned a GM with means {tuple(gm.means.shape)}, expected (B, K, C, H, W) with "
            f"(B, C, H, W) = {tuple(x_t.shape)}"
        )
    gm = gm.to(x_t.dtype)
    if verify:
        gm.check_finite(f"denoiser output at step {step} (sigma={sigma:.4g})")
    return gm


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
    condition: Any = None,
    uncond_condition: Any = None,
    guidance_scale: float = 0.0,
    orthogonal_guidance: float = 1.0,
    cfg_scale: float | None = None,
    second_order_coefs: tuple[float, float] = DEFAULT_COEFS,
    spectrum: Callable[[IsoGaussian], Tensor] | None = None,
    generator: torch.Generator | None = None,
    return_steps: bool = False,
    progress: bool = False,
    check_outputs: bool = True,
) -> GMFlowSampleOutput:
    """Sample with GM-SDE (``method="sde"``) or GM-ODE (``method="ode"``) from noise at sigma = 1.

    Args:
        denoiser: ``(x_t (B', C, H, W), sigma (B',), condition) -> u-GM (B', K, C, H, W)``.
        noise: (B, C, H, W) standard normal starting point.
        steps: number of network evaluations N >= 1 (doubled in batch under guidance).
        method: "ode" samples with the GM mean and Euler substeps (GM-ODE, official output_mode "mean");
            "sde" samples x0 from the GM and takes the exact GM-SDE transition (output_mode "sample").
        order: 1, or 2 for the 2nd-order GM correction.
        substeps: n >= 1 network-free substeps per step. GM-ODE substep j > 0 uses the mean of the step's
            GM re-conditioned on the current (x, sigma); GM-SDE substeps sample from that GM (exact for an
            exact GM; the official code allows only n = 1 for GM-SDE).
        shift: time shift of the grid (see :func:`flow_sigmas`).
        condition, uncond_condition: passed to the denoiser; under guidance both are batched in one call
            as [condition; uncond_condition] (see :func:`concat_conditions`).
        guidance_scale: probabilistic guidance w in [0, 1); 0 disables it.
        orthogonal_guidance: in [0, 1], projection weight of probabilistic guidance.
        cfg_scale: vanilla CFG on the GM instead (shift all component means; 1 = conditional only),
            for comparison; cannot be combined with ``guidance_scale``.
        second_order_coefs: (ca, cb) damping coefficients of order 2.
        spectrum: GM-SDE only: maps the step's x0 Gaussian to the log power spectrum (B, C, H, W) of the
            sampling noise (e.g. a :class:`gmfm.models.SpectrumMLP`); x0 is then drawn by spectral sampling.
        generator: drives every random draw (GM sampling and SDE noise).
        return_steps: also return one :class:`GMFlowStep` per evaluation.
        progress: show a progress bar.
        check_outputs: raise ``ValueError`` when the denoiser returns NaN/inf.
    """
    check_tensor("noise", noise, min_dim=4)
    if noise.dim() != 4:
        raise ValueError(f"noise must have shape (B, C, H, W), got {tuple(noise.shape)}")
    check_finite("noise", noise)
    check_positive_int("steps", steps)
    check_positive_int("substeps", substeps)
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if method not in ("sde", "ode"):
        raise ValueError(f"method must be 'sde' or 'ode', got {method!r}")
    if spectrum is not None and method != "sde":
        raise ValueError("spectrum (spectral sampling) applies to method='sde' only")
    guidance_scale = check_float_in("guidance_scale", guidance_scale, 0.0, 1.0, high_open=True)
    check_float_in("orthogonal_guidance", orthogonal_guidance, 0.0, 1.0)
    if cfg_scale is not None:
        cfg_scale = check_float_in("cfg_scale", cfg_scale, 0.0, float("inf"))
        if guidance_scale > 0:
            raise ValueError("use either guidance_scale (probabilistic) or cfg_scale (vanilla CFG), not both")
    guided = guidance_scale > 0 or (cfg_scale is not None and cfg_scale != 1.0)
    if guided and uncond_condition is None:
        raise ValueError("uncond_condition is required when guidance_scale > 0 or cfg_scale != 1")
    denoiser_condition = concat_conditions(condition, uncond_condition) if guided else condition

    sigmas = flow_sigmas(steps * substeps, shift).tolist()
    batch = noise.shape[0]
    x = noise
    previous: SecondOrderState | None = None
    records: list[GMFlowStep] = []

    for i in tqdm(range(steps), disable=not progress, desc="GMFlow sampling"):
        first = i * substeps
        sigma = sigmas[first]
        x_in = torch.cat([x, x]) if guided else x
        # Noise levels stay Python floats on this path: no device synchronisation for argument checks.
        gm_u = _call_denoiser(denoiser, x_in, sigma, denoiser_condition, i, check_outputs)
        x0_gm = u_to_x0(gm_u, x_in, sigma)

        guidance: GuidanceOutput | None = None
        if guided:
            cond, uncond = x0_gm[:batch], x0_gm[batch:]
            if cfg_scale is not None:
                x0_gm = cfg_gm(cond, uncond, cfg_scale)
            else:
                guidance = probabilistic_guidance(cond, uncond, guidance_scale, orthogonal_guidance)
                x0_gm = guidance.gm

        if order == 2:
            h = sigma - sigmas[first + substeps]  # the last step has sigma_next = 0, so h = sigma
            corrected = second_order_correction(
                x0_gm, x, sigma, h, previous, guidance, guidance_scale, second_order_coefs
            )
            x0_gm, previous = corrected.gm, corrected.state
        step_gaussian = corrected.gaussian if order == 2 else None
        if step_gaussian is None and guidance is not None:
            step_gaussian = guidance.target

        converter = DenoisingGMConverter.create(x0_gm, x, sigma) if substeps > 1 else None
        for j in range(substeps):
            s, s_to = sigmas[first + j], sigmas[first + j + 1]
            if method == "ode":
                x0 = gm_mean(x0_gm) if j == 0 else converter.mean(x, s)
                x_next = euler_step(x0, x, s, s_to)
            else:
                if j == 0 and spectrum is not None:  # spectral sampling: pixels correlated by the spectrum
                    gaussian = step_gaussian if step_gaussian is not None else gm_to_iso_gaussian(x0_gm)
                    x0 = spectral_gm_sample(x0_gm, spectrum(gaussian).to(x.dtype), generator)
                else:
                    x0 = gm_sample(x0_gm if j == 0 else converter.converted(x, s), generator)
                x_next = sde_step(x0, x, s, s_to, randn(x.shape, generator, x))
            if j == 0 and return_steps:
                records.append(GMFlowStep(sigma, x, x0_gm, x0))
            x = x_next

    return GMFlowSampleOutput(x, records if return_steps else None)
