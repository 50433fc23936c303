"""Distillation recipes: a TOML file with a ``[distill]`` table (:class:`DistillConfig`) and a ``[train]``
table (:class:`gmfm.training.TrainConfig`); the data and the backbone come from the teacher run.

    [distill]
    teacher = "runs/checkerboard"   # optional: the command line's --teacher
    num_components = 8              # the student's K
    nfe = 2
    [train]
    iterations = 5000
    batch_size = 1024
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..experiments.recipe import RecipeError, _check_keys, resolve_config, tomllib
from ..guidance import make_guidance
from ..math.validation import check_float_in, check_positive_int
from ..training.config import TrainConfig
from .loss import START_STATES
from .student import INIT_LOGSTD


@dataclass(frozen=True)
class DistillConfig:
    """The ``[distill]`` table.

    teacher: the teacher run (a folder or checkpoint; the command line's ``--teacher`` replaces it).
    num_components: the student policy's K. nfe: its steps (network calls).
    total_substeps: Euler substeps per unit raw time of the policy rollouts (LakonLab: 128).
    final_step_size_scale: the last segment's length relative to the others.
    intermediate_states: states per sample where the student imitates the teacher (LakonLab: 2).
    policy_dropout: probability of dropping a component from the rollout policy (LakonLab ImageNet: 0.05).
    start_states: "data" (forward-diffused data) or "chain" (data-free: the student's own rollout from noise).
    guidance_scale, orthogonal_guidance, cfg_scale: the teacher's guidance (probabilistic for GMFlow
        teachers; CFG for either).
    loss_scale: factor on the loss. init_noise / init_logstd: the student's initialisation (LakonLab: 0.05
        and log 0.05). temperature: the sampling default of the student ("auto" or a number).
    """

    num_components: int
    nfe: int
    teacher: str | None = None
    total_substeps: int = 128
    final_step_size_scale: float = 1.0
    intermediate_states: int = 2
    policy_dropout: float = 0.05
    start_states: str = "data"
    guidance_scale: float = 0.0
    orthogonal_guidance: float = 1.0
    cfg_scale: float = 1.0
    loss_scale: float = 1.0
    init_noise: float = 0.05
    init_logstd: float = INIT_LOGSTD
    temperature: float | str = "auto"

    def __post_init__(self) -> None:
        check_positive_int("num_components", self.num_components)
        check_positive_int("nfe", self.nfe)
        check_positive_int("total_substeps", self.total_substeps)
        check_float_in("final_step_size_scale", self.final_step_size_scale, 0.0, 1e3, low_open=True)
        check_positive_int("intermediate_states", self.intermediate_states)
        check_float_in("policy_dropout", self.policy_dropout, 0.0, 1.0, high_open=True)
        if self.start_states not in START_STATES:
            raise ValueError(f"start_states must be one of {START_STATES}, got {self.start_states!r}")
        make_guidance(self.guidance_scale, self.orthogonal_guidance, self.cfg_scale)
        check_float_in("loss_scale", self.loss_scale, 0.0, 1e6, low_open=True)
        check_float_in("init_noise", self.init_noise, 0.0, 10.0)
        check_float_in("init_logstd", self.init_logstd, -20.0, 20.0)
        if self.temperature != "auto":
            check_float_in("temperature", self.temperature, 0.0, 1e3)
        if self.teacher is not None and not isinstance(self.teacher, str):
            raise ValueError(f"teacher must be a path, got {self.teacher!r}")


@dataclass(frozen=True)
class DistillRecipe:
    distill: DistillConfig
    train: TrainConfig
    source: str = field(default="<recipe>", compare=False)

    def with_overrides(self, distill: dict[str, Any] | None = None, train: dict[str, Any] | None = None) -> DistillRecipe:
        """A copy with keys replaced (None values ignored), checked as a file would be."""
        raw = {"distill": dataclasses.asdict(self.distill), "train": dataclasses.asdict(self.train)}
        raw["distill"].update({k: v for k, v in (distill or {}).items() if v is not None})
        raw["train"].update({k: v for k, v in (train or {}).items() if v is not None})
        return distill_recipe_from_dict(raw, self.source)


def distill_recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>") -> DistillRecipe:
    """Build and check a :class:`DistillRecipe` (unknown tables and keys are errors naming the valid ones)."""
    _check_keys(source, "top level", raw, ("distill", "train"))
    tables = {}
    for name, cls in (("distill", DistillConfig), ("train", TrainConfig)):
        values = raw.get(name, {})
        _check_keys(source, name, values, [f.name for f in dataclasses.fields(cls)])
        try:
            tables[name] = cls(**values)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"{source}: [{name}] {err}") from err
    return DistillRecipe(tables["distill"], tables["train"], source)


def load_distill_recipe(name_or_path: str | Path) -> DistillRecipe:
    """Read a distillation recipe file, or a shipped one by name (e.g. "checkerboard_piflow")."""
    path = resolve_config(name_or_path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: not valid TOML: {err}") from err
    return distill_recipe_from_dict(raw, str(path))


__all__ = ["DistillConfig", "DistillRecipe", "distill_recipe_from_dict", "load_distill_recipe"]
