"""Sample a trained model with any solver, seeded, in batches: one function for 2-D points and images."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..guidance import ClassifierFreeGuidance, Guidance, ProbabilisticGuidance, make_guidance
from ..math.validation import check_positive_int
from ..models.protocols import null_label
from ..solvers.catalog import IMAGE_MAX_SUBSTEPS, SOLVER_NAMES, default_substeps, sample_with
from .run import TrainedModel


def default_solver(trained: TrainedModel) -> str:
    """gmode2 (images) / gmsde2 (2-D) for GMFlow, dpmpp2m / euler for the flow-matching baseline."""
    images = trained.event_shape[1:] != (1, 1)
    if trained.kind == "gmflow":
        return "gmode2" if images else "gmsde2"
    return "dpmpp2m" if images else "euler"


@dataclass(frozen=True)
class SamplingPlan:
    """Every sampling choice of a trained run, settled in one place (:meth:`resolve`) and used by the
    command line, :func:`sample_trained` and :func:`gmfm.experiments.evaluation.evaluate_run`.

    solver: a name of :data:`gmfm.solvers.SOLVER_NAMES`; nfe: network evaluations; substeps: GM-ODE
    substeps per step (None for the other solvers); guidance: None or a :class:`~gmfm.guidance.Guidance`;
    second_order_coefs: (ca, cb) of the 2nd-order GM solvers; spectral: spectral sampling for GM-SDE
    (only when the model has a spectrum net); shift: time shift of the grid.
    """

    solver: str
    nfe: int
    substeps: int | None
    guidance: Guidance | None
    second_order_coefs: tuple[float, float]
    spectral: bool
    shift: float
    policy_options: dict[str, object] = field(default_factory=dict)

    @classmethod
    def resolve(cls, trained: TrainedModel, solver: str | None = None, nfe: int | None = None, *,
                substeps: int | None = None, guidance: Guidance | None = None, guidance_scale: float | None = None,
                orthogonal_guidance: float | None = None, cfg_scale: float | None = None,
                spectral: bool | None = None, second_order_coefs: tuple[float, float] | None = None,
                temperature: float | str | None = None) -> SamplingPlan:
        """The plan of ``trained``: each argument left None takes the recipe's ``[sample]`` value, then the
        built-in default (:func:`default_solver`; GM-ODE substeps :func:`gmfm.solvers.default_substeps`,
        at most 16 per step on images).

        Args:
            guidance: a guidance value; overrides ``guidance_scale`` / ``orthogonal_guidance`` /
                ``cfg_scale`` (the settings of :func:`gmfm.guidance.make_guidance`).

        Raises:
            ValueError: an unknown solver, a number out of range, guidance on an unconditional model.
        """
        s = trained.recipe.sample
        pick = lambda value, default: default if value is None else value  # noqa: E731
        solver = solver or s.solver or default_solver(trained)
        if solver not in SOLVER_NAMES:
            raise ValueError(f"solver must be one of {SOLVER_NAMES}, got {solver!r}")
        nfe = check_positive_int("nfe", pick(nfe, s.nfe))
        images = trained.event_shape[1:] != (1, 1)
        if solver.startswith("gmode"):
            substeps = check_positive_int("substeps", pick(substeps, s.substeps) or default_substeps(
                nfe, IMAGE_MAX_SUBSTEPS if images else None))
        else:
            substeps = None
        if guidance is None:
            guidance = make_guidance(pick(guidance_scale, s.guidance_scale),
                                     pick(orthogonal_guidance, s.orthogonal_guidance), pick(cfg_scale, s.cfg_scale))
        elif not guidance.needs_uncond:
            guidance = None
        if guidance is not None and not trained.num_classes:
            raise ValueError("guidance (guidance_scale / cfg_scale) needs a class-conditional model; this run is "
                             "unconditional")
        policy = {"total_substeps": s.total_substeps, "final_step_size_scale": s.final_step_size_scale,
                  "temperature": pick(temperature, s.temperature)} if solver == "piflow" else {}
        return cls(solver, nfe, substeps, guidance, tuple(pick(second_order_coefs, s.gm2_coefs)),
                   bool(pick(spectral, s.spectral)), s.shift, policy)

    def describe(self) -> dict[str, object]:
        """The plan as JSON-able values (what result files record)."""
        return {"solver": self.solver, "nfe": self.nfe, "substeps": self.substeps, **self.policy_options,
                "guidance": repr(self.guidance) if self.guidance is not None else None,
                "second_order_coefs": list(self.second_order_coefs), "spectral": self.spectral, "shift": self.shift}

    def tag(self) -> str:
        """A file-name part naming solver, NFE and guidance, e.g. ``gmode2_nfe8_pg0.3``."""
        out = f"{self.solver}_nfe{self.nfe}"
        if isinstance(self.guidance, ProbabilisticGuidance):
            out += f"_pg{self.guidance.scale:g}" + ("" if self.guidance.orthogonal == 1 else
                                                    f"_orth{self.guidance.orthogonal:g}")
        elif isinstance(self.guidance, ClassifierFreeGuidance):
            out += f"_cfg{self.guidance.scale:g}"
        elif self.guidance is not None:
            out += f"_{type(self.guidance).__name__.lower()}"
        if self.solver.startswith("gmsde") and not self.spectral:
            out += "_nospectral"
        return out


def sample_seeds(seed: int, indices: range) -> list[torch.Generator]:
    """One generator per sample index: sample i of a seeded set is the same whatever the batching."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in indices]


@torch.no_grad()
def sample_trained(trained: TrainedModel, solver: str | None = None, nfe: int | None = None, *,
                   plan: SamplingPlan | None = None, labels: Tensor | None = None, num_samples: int | None = None,
                   guidance: Guidance | None = None, substeps: int | None = None, spectral: bool | None = None,
                   seed: int = 0, first_index: int = 0, per_sample_seeds: bool | None = None, batch_size: int = 500,
                   device: str | torch.device = "cpu", second_order_coefs: tuple[float, float] | None = None,
                   progress: bool = False) -> Tensor:
    """Samples (N, C, H, W) (2-D points: (N, 2, 1, 1)) of a trained model, on the CPU in float32.

    Args:
        trained: from :func:`gmfm.experiments.load_run`.
        plan: the sampling choices (:class:`SamplingPlan`); without one, ``solver``, ``nfe``, ``guidance``,
            ``substeps``, ``spectral`` and ``second_order_coefs`` make it through :meth:`SamplingPlan.resolve`
            (None: the recipe's ``[sample]`` value, then the built-in default).
        labels: (N,) class ids for a class-conditional model (None: uniform random classes, drawn from
            ``seed``); ``num_samples`` is N when ``labels`` is None.
        seed, first_index: sample i of the set is drawn from a generator seeded with (seed, first_index + i)
            when ``per_sample_seeds`` (default for images), so a set does not depend on ``batch_size`` or on
            how it is sharded; else one generator per call (fast for 100k 2-D points).
    """
    if plan is None:
        plan = SamplingPlan.resolve(trained, solver, nfe, substeps=substeps, guidance=guidance, spectral=spectral,
                                    second_order_coefs=second_order_coefs)
    check_positive_int("batch_size", batch_size)
    images = trained.event_shape[1:] != (1, 1)
    per_sample_seeds = images if per_sample_seeds is None else per_sample_seeds
    spectrum = trained.spectrum_net if (plan.spectral and plan.solver.startswith("gmsde")) else None
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        if num_samples is None:
            raise ValueError("give labels or num_samples")
        check_positive_int("num_samples", num_samples)
        if trained.num_classes:
            labels = torch.randint(0, trained.num_classes, (num_samples,), generator=generator)
    else:
        labels = _check_labels(labels, trained.num_classes)
        num_samples = len(labels)
    if plan.guidance is not None and not trained.num_classes:
        raise ValueError("guidance needs a class-conditional model")
    model = trained.model.to(device)
    null = getattr(model, "null_label", null_label(trained.num_classes))
    out = []
    starts = range(0, num_samples, batch_size)
    for start in tqdm(starts, disable=not progress or len(starts) < 2, desc="sampling"):
        n = min(batch_size, num_samples - start)
        if per_sample_seeds:
            gens = sample_seeds(seed, range(first_index + start, first_index + start + n))
            noise = torch.stack([torch.randn(trained.event_shape, generator=g) for g in gens])
            draw_with = gens
        else:
            noise = torch.randn(n, *trained.event_shape, generator=generator)
            draw_with = generator
        cond = labels[start:start + n].to(device) if labels is not None else None
        uncond = torch.full_like(cond, null) if cond is not None else None
        x = sample_with(plan.solver, model, noise.to(device), plan.nfe, substeps=plan.substeps, shift=plan.shift,
                        condition=cond, uncond_condition=uncond, guidance=plan.guidance, spectrum=spectrum,
                        second_order_coefs=plan.second_order_coefs, generator=draw_with,
                        policy_options=plan.policy_options)
        out.append(x.float().cpu())
    return torch.cat(out)


def _check_labels(labels: Tensor, num_classes: int) -> Tensor:
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        raise ValueError("labels must be a (N,) tensor of class ids")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers (class ids), got dtype {labels.dtype}")
    if not num_classes:
        raise ValueError("labels were given but the model is unconditional")
    if len(labels) == 0:
        raise ValueError("labels must not be empty")
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(f"labels must be class ids in [0, {num_classes - 1}], got {sorted(set(labels.tolist()))[:10]}")
    return labels.long()
