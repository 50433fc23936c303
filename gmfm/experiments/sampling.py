"""Sample a trained model with any solver, seeded, in batches: one function for 2-D points and images."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..guidance import ClassifierFreeGuidance, Guidance, ProbabilisticGuidance
from ..math.validation import check_positive_int
from ..models.protocols import null_label
from ..solvers.by_name import IMAGE_MAX_SUBSTEPS, SOLVER_NAMES, default_substeps, sample_with
from .run import TrainedModel


def make_guidance(guidance_scale: float = 0.0, orthogonal_guidance: float = 1.0,
                  cfg_scale: float = 1.0) -> Guidance | None:
    """The guidance value of the sampling options (one place for the command line, recipes and benchmarks).

    Args:
        guidance_scale: probabilistic guidance w in [0, 1) (0: off).
        orthogonal_guidance: its projection weight in [0, 1].
        cfg_scale: vanilla CFG scale >= 0 (1: off).

    Returns:
        :class:`~gmfm.guidance.ProbabilisticGuidance`, :class:`~gmfm.guidance.ClassifierFreeGuidance` or
        None when neither is on.

    Raises:
        ValueError: both are on, or a value is out of range.
    """
    pg = ProbabilisticGuidance(guidance_scale, orthogonal_guidance)
    cfg = ClassifierFreeGuidance(cfg_scale)
    if pg.needs_uncond and cfg.needs_uncond:
        raise ValueError("use either guidance_scale (probabilistic guidance) or cfg_scale (vanilla CFG), not both")
    return pg if pg.needs_uncond else (cfg if cfg.needs_uncond else None)


def default_solver(trained: TrainedModel) -> str:
    """gmode2 (images) / gmsde2 (2-D) for GMFlow, dpmpp2m / euler for the flow-matching baseline."""
    images = trained.event_shape[1:] != (1, 1)
    if trained.kind == "gmflow":
        return "gmode2" if images else "gmsde2"
    return "dpmpp2m" if images else "euler"


def sample_seeds(seed: int, indices: range) -> list[torch.Generator]:
    """One generator per sample index: sample i of a seeded set is the same whatever the batching."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in indices]


@torch.no_grad()
def sample_trained(trained: TrainedModel, solver: str | None = None, nfe: int | None = None, *,
                   labels: Tensor | None = None, num_samples: int | None = None, guidance: Guidance | None = None,
                   substeps: int | None = None, spectral: bool | None = None, seed: int = 0, first_index: int = 0,
                   per_sample_seeds: bool | None = None, batch_size: int = 500, device: str | torch.device = "cpu",
                   second_order_coefs: tuple[float, float] | None = None, progress: bool = False) -> Tensor:
    """Samples (N, C, H, W) (2-D points: (N, 2, 1, 1)) of a trained model, on the CPU in float32.

    Args:
        trained: from :func:`gmfm.experiments.load_run`.
        solver, nfe, substeps, spectral: default to the recipe's ``[sample]`` table (and
            :func:`default_solver`); GM-ODE substeps default to :func:`gmfm.solvers.default_substeps`
            (capped at 16 per step for images).
        labels: (N,) class ids for a class-conditional model (None: uniform random classes, drawn from
            ``seed``); ``num_samples`` is N when ``labels`` is None.
        guidance: a :class:`gmfm.guidance.Guidance` (see :func:`make_guidance`); the unconditional rows use
            the model's null label.
        second_order_coefs: (ca, cb) of the 2nd-order solvers (default: the recipe's ``gm2_coefs``).
        seed, first_index: sample i of the set is drawn from a generator seeded with (seed, first_index + i)
            when ``per_sample_seeds`` (default for images), so a set does not depend on ``batch_size`` or on
            how it is sharded; else one generator per call (fast for 100k 2-D points).
    """
    sample_cfg = trained.recipe.sample
    solver = solver or sample_cfg.solver or default_solver(trained)
    if solver not in SOLVER_NAMES:
        raise ValueError(f"solver must be one of {SOLVER_NAMES}, got {solver!r}")
    nfe = check_positive_int("nfe", nfe if nfe is not None else sample_cfg.nfe)
    check_positive_int("batch_size", batch_size)
    images = trained.event_shape[1:] != (1, 1)
    per_sample_seeds = images if per_sample_seeds is None else per_sample_seeds
    substeps = substeps if substeps is not None else sample_cfg.substeps
    if substeps is None and solver.startswith("gmode"):
        substeps = default_substeps(nfe, IMAGE_MAX_SUBSTEPS if images else None)
    spectral = sample_cfg.spectral if spectral is None else spectral
    spectrum = trained.spectrum_net if (spectral and solver.startswith("gmsde")) else None
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
    if guidance is not None and guidance.needs_uncond and not trained.num_classes:
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
        x = sample_with(solver, model, noise.to(device), nfe, substeps=substeps, shift=sample_cfg.shift,
                        condition=cond, uncond_condition=uncond, guidance=guidance, spectrum=spectrum,
                        second_order_coefs=second_order_coefs or sample_cfg.gm2_coefs, generator=draw_with)
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
