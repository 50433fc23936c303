"""diffusers-style schedulers for the GM-SDE step and the flow Euler step (official names and configs).

They give users the familiar ``set_timesteps`` / ``step`` contract and keep the configuration of a saved
pipeline (``scheduler/scheduler_config.json``). Both use the official grid (:func:`flow_sigmas`) with
``timesteps = 1000 sigma``; ``step`` takes an x0 prediction (``prediction_type="x0"``, the GMFlow
convention: a GM mean or a GM sample) or a velocity (``"u"``).

The GMFlow pipeline itself samples through :func:`gmflow_sample`, a pure function; a scheduler's
``step_index`` (diffusers' convention) is the only state here and is reset by ``set_timesteps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from torch import Tensor

from ..math.flow import euler_step, u_to_x0
from ..math.random import randn
from .flow_solvers import ddpm_step
from .timesteps import flow_sigmas


@dataclass
class FlowSchedulerOutput(BaseOutput):
    prev_sample: Tensor


class _FlowGridScheduler(SchedulerMixin, ConfigMixin):
    order = 1

    def _init_grid(self, num_train_timesteps: int) -> None:
        self.set_timesteps(num_train_timesteps)
        self.num_inference_steps: int | None = None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Noise levels sigma_j (num_inference_steps + 1, ending at 0) and timesteps 1000 sigma_j."""
        self.num_inference_steps = num_inference_steps
        sigmas = flow_sigmas(num_inference_steps, self.config.shift).float()
        self.timesteps = (sigmas[:-1] * self.config.num_train_timesteps).to(device)
        self.sigmas = sigmas.to(device)
        self._step_index = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    def _next_pair(self, timestep: float | Tensor) -> tuple[float, float]:
        if self._step_index is None:
            matches = (self.timesteps == torch.as_tensor(timestep, device=self.timesteps.device)).nonzero()
            if len(matches) == 0:
                raise ValueError(f"timestep {float(timestep)} is not on the grid set by set_timesteps")
            self._step_index = int(matches[0])
        i = self._step_index
        self._step_index += 1
        return float(self.sigmas[i]), float(self.sigmas[i + 1])

    def _x0(self, model_output: Tensor, sample: Tensor, sigma: float, prediction_type: str) -> Tensor:
        if prediction_type == "x0":
            return model_output.to(sample.dtype)
        if prediction_type == "u":
            return u_to_x0(model_output.to(sample.dtype), sample, sigma)
        raise ValueError(f"prediction_type must be 'x0' or 'u', got {prediction_type!r}")

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class FlowEulerODEScheduler(_FlowGridScheduler):
    """Euler steps of the flow ODE (GM-ODE uses it with the GM mean; substeps are extra grid points)."""

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0) -> None:
        self._init_grid(num_train_timesteps)

    def step(self, model_output: Tensor, timestep: float | Tensor, sample: Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True,
             prediction_type: str = "x0") -> FlowSchedulerOutput | tuple[Tensor]:
        sigma, sigma_to = self._next_pair(timestep)
        prev = euler_step(self._x0(model_output, sample, sigma, prediction_type), sample, sigma, sigma_to)
        return FlowSchedulerOutput(prev) if return_dict else (prev,)


class GMFlowSDEScheduler(_FlowGridScheduler):
    """The GM-SDE transition q(x_to | x_t, x0), given x0 drawn from the denoising GM (output_mode "sample").

    With output_mode "mean" (x0 = GM mean) it is an ancestral DDPM step, with the posterior variance
    ("small") or the prior-matched one ("large"), as the official scheduler.
    """

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, output_mode: str = "sample",
                 variance_mode: str = "large") -> None:
        if output_mode not in ("sample", "mean"):
            raise ValueError(f"output_mode must be 'sample' or 'mean', got {output_mode!r}")
        if variance_mode not in ("small", "large"):
            raise ValueError(f"variance_mode must be 'small' or 'large', got {variance_mode!r}")
        self._init_grid(num_train_timesteps)

    def step(self, model_output: Tensor, timestep: float | Tensor, sample: Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True,
             prediction_type: str = "x0") -> FlowSchedulerOutput | tuple[Tensor]:
        sigma, sigma_to = self._next_pair(timestep)
        x0 = self._x0(model_output, sample, sigma, prediction_type)
        # a GM sample gets the exact GM-SDE transition (posterior variance); a GM mean the chosen variance
        variance = "small" if self.config.output_mode == "sample" else self.config.variance_mode
        prev = ddpm_step(x0, sample, sigma, sigma_to, randn(sample.shape, generator, sample), variance)
        return FlowSchedulerOutput(prev) if return_dict else (prev,)


SCHEDULERS = {cls.__name__: cls for cls in (FlowEulerODEScheduler, GMFlowSDEScheduler)}
