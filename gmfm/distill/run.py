"""``gmfm distill``: train a pi-Flow student of a teacher run into a run folder, with the trainer's
EMA, verified checkpoints, exact resume, run lock and torchrun world-size invariance.

The student's run folder is an ordinary gmfm run: its checkpoint records the student's recipe (the
teacher's with K changed, a learned log-std and ``[sample] solver = "piflow"`` at the student's NFE), so
``load_run``, ``sample-2d``, ``sample-images``, ``eval-images`` and the pipeline export take it as they are.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..experiments.build import build_model, load_dataset
from ..experiments.run import TrainedModel, _dataset_metadata, load_run
from ..guidance import make_guidance
from ..training import TrainResult, train
from ..training.distributed import setup_distributed
from .loss import PiIDLoss, teacher_velocity
from .recipe import DistillRecipe
from .student import init_from_teacher, student_recipe


def load_teacher(path: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """The teacher run (EMA weights), or one clear error."""
    try:
        return load_run(path, use_ema=True, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"--teacher {path} is not a gmfm run: {str(err).splitlines()[0]}") from None


def distill(recipe: DistillRecipe, out_dir: str | Path | None, teacher: str | Path | None = None, *,
            resume: bool = True, allow_changed_settings: bool = False, progress: bool = True) -> TrainResult:
    """Distill the teacher run (``teacher``, else the recipe's ``[distill] teacher``) into a pi-Flow student.

    Raises:
        ValueError: no teacher, a teacher folder that is not a run, bad settings.
    """
    cfg = recipe.distill
    teacher_path = teacher or cfg.teacher
    if teacher_path is None:
        raise ValueError("give the teacher run: --teacher RUN (or [distill] teacher in the recipe)")
    dist = setup_distributed(recipe.train.device)
    trained = load_teacher(teacher_path, dist.device)
    dataset = load_dataset(trained.recipe)
    sample = {"solver": "piflow", "nfe": cfg.nfe, "total_substeps": cfg.total_substeps,
              "final_step_size_scale": cfg.final_step_size_scale, "temperature": cfg.temperature,
              "guidance_scale": 0.0, "cfg_scale": 1.0}
    s_recipe = student_recipe(trained.recipe, cfg.num_components, sample).with_overrides(
        train=dataclasses.asdict(recipe.train))
    model = build_model(s_recipe, dataset.event_shape, dataset.num_classes)
    init_from_teacher(model, trained.model, trained.kind == "gmflow", noise=cfg.init_noise,
                      init_logstd=cfg.init_logstd,
                      generator=torch.Generator().manual_seed(recipe.train.seed + 7))
    guidance = make_guidance(cfg.guidance_scale, cfg.orthogonal_guidance, cfg.cfg_scale)
    null = getattr(trained.model, "null_label", None) if trained.num_classes else None
    loss = PiIDLoss(teacher_velocity(trained.model, guidance, null, trained.kind == "gmflow"), cfg.nfe,
                    shift=trained.recipe.sample.shift, final_step_size_scale=cfg.final_step_size_scale,
                    total_substeps=cfg.total_substeps, intermediate_states=cfg.intermediate_states,
                    policy_dropout=cfg.policy_dropout, start_states=cfg.start_states, loss_scale=cfg.loss_scale)
    distill_table = {**dataclasses.asdict(cfg), "teacher": str(teacher_path), "teacher_step": trained.checkpoint.step,
                     "teacher_kind": trained.kind}
    metadata = {"recipe": s_recipe.as_dict(), "dataset": _dataset_metadata(dataset),
                "model": {"class": type(model).__name__}, "distill": distill_table}
    settings = {"student": s_recipe.identity(),
                "distill": {k: v for k, v in distill_table.items() if k not in ("temperature", "teacher")}}
    return train(model, loss, dataset.train, recipe.train, out_dir, resume=resume, metadata=metadata,
                 settings=settings, allow_changed_settings=allow_changed_settings, progress=progress)
