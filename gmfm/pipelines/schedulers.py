"""diffusers schedulers with the official GMFlow names, configs and time grid.

Both are diffusers :class:`~diffusers.FlowMatchEulerDiscreteScheduler` subclasses, so they keep its whole
contract (``set_timesteps(num_inference_steps | sigmas= | timesteps=, device=)``, ``set_begin_index``,
``scale_noise``, ``step_index``, save / load, ...), with three differences:

- ``set_timesteps(N)`` lays out the official grid: s_j = 1 - j / N (j = 0 .. N-1, float32), shifted as
  ``shift s / (1 + (shift - 1) s)``, then a final sigma = 0; ``timesteps = 1000 sigma`` (float32). diffusers'
  own default grid (``linspace(1, 1/1000, N)``) differs; explicit ``sigmas=`` / ``timesteps=`` behave as in
  diffusers.
- ``step`` takes ``prediction_type``: ``"u"`` (default, a velocity u = noise - x0, as in diffusers) or
  ``"x0"`` (a data prediction: how :class:`gmfm.pipelines.GMDiTPipeline` passes a GM mean or a GM sample).
- misuse is reported: an integer or a batched timestep, one that is not on the grid, and stepping past the
  end all raise ``ValueError``.

:class:`FlowEulerODEScheduler` is the flow ODE's Euler step (GM-ODE when given the GM mean).
:class:`GMFlowSDEScheduler` is the GM-SDE transition q(x_to | x_t, x0): given a GM sample it is exact
(``output_mode="sample"`` in its config selects the posterior variance); given the GM mean (the pipeline's
``output_mode="mean"``) it is a DDPM-like step whose variance the config names (``variance_mode`` "small":
the posterior one, "large": the prior-matched one), as the official scheduler.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers resolves it here)
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from ..math.validation import check_positive_int
from ..solvers.flow_solvers import ddpm_step

PREDICTION_TYPES = ("u", "x0")
OUTPUT_MODES = ("sample", "mean")
VARIANCE_MODES = ("small", "large")


@dataclass
class FlowSchedulerOutput(BaseOutput):
    """prev_sample: the sample at the next noise level, shaped like ``sample`` (B, C, H, W)."""

    prev_sample: Tensor


def official_base_sigmas(num_steps: int) -> np.ndarray:
    """The official unshifted grid s_j = 1 - j / num_steps, j = 0 .. num_steps - 1, as float32 (num_steps,)."""
    check_positive_int("num_inference_steps", num_steps)
    return 1 - np.linspace(0, 1, num_steps, endpoint=False, dtype=np.float32)


class _OfficialGridScheduler(FlowMatchEulerDiscreteScheduler):
    """The official grid and the checks shared by both GMFlow schedulers (not registered as a config class)."""

    order = 1
    #: x_T is a standard normal draw: the noise level 1 of flow matching needs no scaling.
    init_noise_sigma = 1.0

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        # Whose config keys a config may carry (diffusers keeps them aside without a warning): ours, and
        # FlowMatchEulerDiscreteScheduler's options, which every saved config of ours lists.
        return [FlowEulerODEScheduler, GMFlowSDEScheduler, FlowMatchEulerDiscreteScheduler]

    @property
    def compatibles(self) -> list[type]:
        """The schedulers a GMDiTPipeline can swap in with ``from_config(scheduler.config)``."""
        return [FlowEulerODEScheduler, GMFlowSDEScheduler]

    def _init_flow_match(self, num_train_timesteps: int, shift: float) -> None:
        """FlowMatchEulerDiscreteScheduler's state, its other options at their defaults.

        Its ``__init__`` is called undecorated: the decorated one would record those options as
        ``_use_default_values``, which a saved and reloaded config then no longer has (diffusers'
        ``test_from_pretrained``). They are registered here as plain keys (its methods read them)."""
        parent_init = FlowMatchEulerDiscreteScheduler.__init__.__wrapped__
        defaults = {name: p.default for name, p in inspect.signature(parent_init).parameters.items()
                    if name not in ("self", "num_train_timesteps", "shift")}
        self.register_to_config(**defaults)
        parent_init(self, num_train_timesteps=num_train_timesteps, shift=shift)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | np.ndarray | None = None,
        mu: float | None = None,
        timesteps: list[float] | np.ndarray | None = None,
    ) -> None:
        """Set ``sigmas`` (N + 1,) ending at 0 and ``timesteps`` (N,) = 1000 sigma, float32.

        With only ``num_inference_steps`` the grid is the official one (module docstring); ``sigmas`` /
        ``timesteps`` (lists of N values, before shifting) give a custom grid as in diffusers.
        """
        if sigmas is None and timesteps is None:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps, sigmas or timesteps")
            sigmas = official_base_sigmas(num_inference_steps)
        custom = {"timesteps": timesteps} if timesteps is not None else {}  # older diffusers lack the keyword
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu, **custom)

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """The network sees x_t as it is: returns ``sample`` unchanged."""
        return sample

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: float | Tensor) -> Tensor:
        """The forward process x_t = (1 - sigma) x0 + sigma noise with sigma = timesteps / num_train_timesteps.

        Args:
            original_samples: x0 (B, ...). noise: shaped like it. timesteps: one value or one per sample (B,),
                anywhere in [0, num_train_timesteps] (training uses continuous values).
        """
        t = torch.as_tensor(timesteps, device=original_samples.device)
        if not t.is_floating_point():
            t = t.float()
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, original_samples.shape[0])):
            raise ValueError(f"timesteps must be one value or one per sample ({original_samples.shape[0]},), "
                             f"got shape {tuple(t.shape)}")
        sigma = (t / self.config.num_train_timesteps).to(original_samples.dtype)
        sigma = sigma.reshape(-1, *([1] * (original_samples.dim() - 1)))
        return (1 - sigma) * original_samples + sigma * noise.to(original_samples.dtype)

    def _start_step(self, timestep: float | Tensor) -> tuple[Tensor, Tensor]:
        """Check ``timestep``, find its index on the first call, and return (sigma, sigma_next) of this step."""
        if isinstance(timestep, (int, np.integer)) or (isinstance(timestep, Tensor) and not timestep.is_floating_point()):
            raise ValueError(f"{type(self).__name__}.step takes a timestep from scheduler.timesteps (a float), not "
                             f"an integer index: got {timestep!r}")
        if isinstance(timestep, Tensor) and timestep.numel() != 1:
            raise ValueError(f"{type(self).__name__}.step takes one timestep for the whole batch, got a tensor of "
                             f"shape {tuple(timestep.shape)}")
        if self.step_index is None:
            if self.begin_index is None:
                t = torch.as_tensor(timestep, dtype=self.timesteps.dtype, device=self.timesteps.device).reshape(())
                if not bool((self.timesteps == t).any()):
                    raise ValueError(f"timestep {float(t)} is not one of scheduler.timesteps (set by set_timesteps "
                                     f"with {self.num_inference_steps} steps)")
            self._init_step_index(timestep)
        if self.step_index >= len(self.sigmas) - 1:
            raise ValueError(f"{type(self).__name__}.step was called {self.step_index + 1} times after "
                             f"set_timesteps set {len(self.sigmas) - 1} steps: call set_timesteps again to restart")
        return self.sigmas[self.step_index], self.sigmas[self.step_index + 1]


def _check_output(model_output: Tensor, sample: Tensor, prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if model_output.shape != sample.shape:
        raise ValueError(f"model_output must have the shape of sample {tuple(sample.shape)}, got "
                         f"{tuple(model_output.shape)}")


class FlowEulerODEScheduler(_OfficialGridScheduler):
    """Euler steps of the flow ODE on the official grid (official name and config: ``num_train_timesteps``,
    ``shift``). Given the GM mean as ``prediction_type="x0"`` it takes GM-ODE steps; with ``"u"`` it is
    diffusers' :class:`~diffusers.FlowMatchEulerDiscreteScheduler` on that grid."""

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0) -> None:
        self._init_flow_match(num_train_timesteps, shift)

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        prediction_type: str = "u",
    ) -> FlowSchedulerOutput | tuple[Tensor]:
        """One Euler step x_next = x + (sigma_next - sigma) u.

        Args:
            model_output: u or x0 (B, C, H, W), see ``prediction_type``.
            timestep: the current entry of ``timesteps`` (one value).
            sample: x at the current noise level (B, C, H, W).
            generator: used only with diffusers' ``stochastic_sampling`` config option.
            prediction_type: "u" (velocity, noise - x0) or "x0".

        Returns:
            :class:`FlowSchedulerOutput` or ``(prev_sample,)``, in ``model_output``'s dtype.
        """
        _check_output(model_output, sample, prediction_type)
        sigma, _ = self._start_step(timestep)
        velocity = model_output
        if prediction_type == "x0":
            velocity = (sample.to(torch.float32) - model_output.to(torch.float32)) / sigma
        prev = super().step(velocity, timestep, sample, generator=generator, return_dict=False)[0]
        prev = prev.to(model_output.dtype)
        return FlowSchedulerOutput(prev_sample=prev) if return_dict else (prev,)


class GMFlowSDEScheduler(_OfficialGridScheduler):
    """The GM-SDE transition on the official grid (official name and config).

    Args:
        num_train_timesteps: timesteps = num_train_timesteps sigma.
        shift: time shift of the grid.
        output_mode: "sample" (meant for GM samples): the exact GM-SDE transition, with the posterior
            variance; "mean" (meant for GM means): the variance ``variance_mode`` names. As in the official
            scheduler this config, not the x0 it is given, decides the variance.
        variance_mode: with ``output_mode="mean"``: "small" (posterior variance) or "large" (the
            prior-matched variance of DDPM).
    """

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, output_mode: str = "sample",
                 variance_mode: str = "large") -> None:
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if variance_mode not in VARIANCE_MODES:
            raise ValueError(f"variance_mode must be one of {VARIANCE_MODES}, got {variance_mode!r}")
        self._init_flow_match(num_train_timesteps, shift)

    @property
    def variance(self) -> str:
        """The variance of the step's noise: "small" (posterior) or "large" (prior-matched)."""
        return "small" if self.config.output_mode == "sample" else self.config.variance_mode

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        prediction_type: str = "u",
        variance_noise: Tensor | None = None,
    ) -> FlowSchedulerOutput | tuple[Tensor]:
        """x_next = c1 x + c2 x0 + std noise (the GM-SDE / DDPM step from sigma to the next noise level).

        Args:
            model_output: u or x0 (B, C, H, W), see ``prediction_type``.
            timestep: the current entry of ``timesteps`` (one value).
            sample: x at the current noise level (B, C, H, W).
            generator: draws the noise (B, C, H, W) with diffusers' ``randn_tensor``; a list of B generators
                draws row i from generator i.
            prediction_type: "u" (velocity, noise - x0) or "x0".
            variance_noise: standard normal noise to use instead of drawing it (B, C, H, W).

        Returns:
            :class:`FlowSchedulerOutput` or ``(prev_sample,)``, in ``model_output``'s dtype.
        """
        _check_output(model_output, sample, prediction_type)
        sigma, sigma_next = self._start_step(timestep)
        x0 = model_output.to(torch.float32)
        if prediction_type == "u":
            x0 = sample.to(torch.float32) - sigma * x0
        if variance_noise is None:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=torch.float32)
        elif variance_noise.shape != sample.shape:
            raise ValueError(f"variance_noise must have the shape of sample {tuple(sample.shape)}, got "
                             f"{tuple(variance_noise.shape)}")
        else:
            noise = variance_noise.to(device=sample.device, dtype=torch.float32)
        prev = ddpm_step(x0, sample.to(torch.float32), float(sigma), float(sigma_next), noise, self.variance)
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        return FlowSchedulerOutput(prev_sample=prev) if return_dict else (prev,)


SCHEDULERS = {cls.__name__: cls for cls in (FlowEulerODEScheduler, GMFlowSDEScheduler)}
