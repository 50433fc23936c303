"""pi-ID: imitation distillation of a teacher's velocity into a GM policy (pi-Flow, Sec. 3; LakonLab's
``PiFlowImitation``), as a :class:`gmfm.losses.Loss`, so the trainer runs it (EMA, checkpoints, resume,
torchrun).

Per sample of an iteration (every draw from the iteration's :class:`~gmfm.math.random.BatchDraws`):

1. a segment of the NFE grid, chosen with probability proportional to its length (a raw time r ~ U(0, 1]
   falls into it), starting at raw time r_src;
2. its start state: the data diffused to sigma_src ("data", forward diffusion), or the student's own
   rollout from noise through the segments before it ("chain", data-free; no gradient);
3. one student call at (x_src, sigma_src): the GM policy (with gradient);
4. ``intermediate_states`` raw times, sorted uniform draws within the segment, reached one after the
   other by rolling out a detached copy of the policy with GM dropout (each component dropped with
   probability ``policy_dropout``, never all of one sample);
5. at each state, 0.5 |u_policy - u_teacher|^2 (mean over elements), averaged over the states, times
   ``loss_scale``; the teacher's velocity (guided, no gradient) is the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..guidance import Guidance, GuidedGM
from ..losses.flow_losses import LossOutput, check_batch
from ..math.containers import GaussianMixture
from ..math.flow import u_to_x0
from ..math.gm_ops import gm_mean
from ..math.random import BatchDraws
from ..math.validation import check_float_in, check_positive_int
from ..solvers.gm_solver import concat_conditions
from ..solvers.piflow import TOTAL_SUBSTEPS, GMPolicy, segment_starts, warp

START_STATES = ("data", "chain")
#: A velocity model: (x (B, C, H, W), sigma (B,), labels (B,) or None) -> u (B, C, H, W).
Teacher = Callable[[Tensor, Tensor, Any], Tensor]


def teacher_velocity(model: nn.Module, guidance: Guidance | None, null_label: int | None, gmflow: bool) -> Teacher:
    """The teacher's guided velocity, without gradient.

    A GMFlow teacher's (``gmflow``) velocity is the mean of its GM guided by ``guidance`` (probabilistic
    guidance or CFG of the GM); a flow-matching teacher's is its prediction, CFG-guided. Guidance needs the
    unconditional pass of a class-conditional teacher (its null label).
    """
    model.eval().requires_grad_(False)

    @torch.no_grad()
    def velocity(x: Tensor, sigma: Tensor, labels: Any) -> Tensor:
        if guidance is None or not guidance.needs_uncond or labels is None:
            out = model(x, sigma, labels)
            return gm_mean(out) if isinstance(out, GaussianMixture) else out
        batch = x.shape[0]
        cond = concat_conditions(labels, torch.full_like(labels, null_label))
        out = model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond)
        if not gmflow:
            u = gm_mean(out) if isinstance(out, GaussianMixture) else out
            return guidance.guide_prediction(u[:batch], u[batch:])
        x0 = u_to_x0(out, torch.cat([x, x]), torch.cat([sigma, sigma]))
        guided: GuidedGM = guidance.guide_gm(x0[:batch], x0[batch:])
        return (x - guided.mean) / sigma.clamp(min=1e-6).reshape(-1, 1, 1, 1)

    return velocity


@dataclass(frozen=True, eq=False)
class PiIDLoss:
    """The pi-ID loss (see the module docstring). ``teacher`` is held by the loss, never trained.

    Args:
        teacher: the frozen teacher velocity (:func:`teacher_velocity`).
        nfe: the student's steps; final_step_size_scale: the last segment's relative length.
        shift: the time shift of the grid (the teacher's).
        total_substeps: Euler substeps per unit raw time of the rollouts.
        intermediate_states: states per sample at which the velocities are matched.
        policy_dropout: probability of dropping a component from the rollout policy.
        start_states: "data" (forward-diffused data) or "chain" (data-free: the student's own rollout).
        loss_scale: factor on the loss.
    """

    teacher: Teacher
    nfe: int
    shift: float = 1.0
    final_step_size_scale: float = 1.0
    total_substeps: int = TOTAL_SUBSTEPS
    intermediate_states: int = 2
    policy_dropout: float = 0.05
    start_states: str = "data"
    loss_scale: float = 1.0

    def __post_init__(self) -> None:
        check_positive_int("nfe", self.nfe)
        check_positive_int("total_substeps", self.total_substeps)
        check_positive_int("intermediate_states", self.intermediate_states)
        check_float_in("policy_dropout", self.policy_dropout, 0.0, 1.0, high_open=True)
        check_float_in("loss_scale", self.loss_scale, 0.0, 1e6, low_open=True)
        if self.start_states not in START_STATES:
            raise ValueError(f"start_states must be one of {START_STATES}, got {self.start_states!r}")

    def __call__(self, model: nn.Module, batch: dict[str, Tensor],
                 draws: BatchDraws | torch.Generator | None = None) -> LossOutput:
        x0, labels = check_batch(batch)
        n = x0.shape[0]
        draws = BatchDraws.of(draws, n)
        starts = torch.tensor(segment_starts(self.nfe, self.final_step_size_scale), dtype=torch.float64)
        # 1. segment: the raw time r ~ U(0, 1] falls into segment idx (starts[idx] >= r > starts[idx + 1])
        r = 1.0 - draws.rand((), torch.empty((), dtype=torch.float64)).to("cpu")
        idx = (starts[1:-1].unsqueeze(0) >= r.unsqueeze(1)).sum(1).clamp(max=self.nfe - 1)
        r_src, r_end = starts[idx], starts[idx + 1]
        noise = draws.randn(x0.shape[1:], x0)
        drop_u = draws.rand((model_components(model),), x0)
        times = draws.rand((self.intermediate_states,), torch.empty((), dtype=torch.float64)).to("cpu")
        device, dtype = x0.device, x0.dtype
        sigma_src = warp(r_src, self.shift).to(device=device, dtype=dtype)
        # 2. start states
        if self.start_states == "data":
            x_src = (1 - sigma_src).reshape(-1, 1, 1, 1) * x0 + sigma_src.reshape(-1, 1, 1, 1) * noise
        else:
            x_src = self._chain(model, noise, labels, idx, starts, drop_u)
        # 3. the student's policy at the segment start
        policy = GMPolicy.from_u(model(x_src, sigma_src, labels).to(dtype), x_src, sigma_src)
        # 4. intermediate states along the detached, dropped-out policy
        rollout = policy.detach().dropout(drop_u < self.policy_dropout)
        t_states = r_src.unsqueeze(1) - (r_src - r_end).unsqueeze(1) * torch.sort(times, dim=1).values
        x, r_prev, total = x_src.detach(), r_src, 0.0
        for j in range(self.intermediate_states):
            with torch.no_grad():
                x = rollout.integrate(x, r_prev, t_states[:, j], self.shift, self.total_substeps)
            r_prev = t_states[:, j]
            sigma = warp(r_prev, self.shift).to(device=device, dtype=dtype)
            target = self.teacher(x, sigma, labels)
            # 5. imitation
            total = total + 0.5 * (policy.velocity(x, sigma) - target).square().mean()
        loss = total / self.intermediate_states * self.loss_scale
        return LossOutput(loss, {"loss": loss.detach(), "logstd": policy.x0_gm.logstds.detach().mean()})

    @torch.no_grad()
    def _chain(self, model: nn.Module, noise: Tensor, labels: Any, idx: Tensor, starts: Tensor,
               drop_u: Tensor) -> Tensor:
        """The data-free start states: the student's own rollout from noise (sigma = 1) through the segments
        before each sample's (every sample runs every segment but the last; the rest are kept aside)."""
        x, out = noise, noise.clone()
        for s in range(self.nfe - 1):
            sigma = torch.full((x.shape[0],), float(warp(float(starts[s]), self.shift)), dtype=x.dtype,
                               device=x.device)
            policy = GMPolicy.from_u(model(x, sigma, labels).to(x.dtype), x, sigma).dropout(drop_u < self.policy_dropout)
            x = policy.integrate(x, float(starts[s]), float(starts[s + 1]), self.shift, self.total_substeps)
            out = torch.where((idx == s + 1).to(x.device).reshape(-1, 1, 1, 1), x, out)
        return out


def model_components(model: nn.Module) -> int:
    """K of a student model's GM head."""
    net = getattr(model, "net", model)
    head = getattr(net, "gm_out", None) or getattr(model, "head", None)
    return head.num_components
