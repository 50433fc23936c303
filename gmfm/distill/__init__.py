"""pi-Flow distillation (Chen et al., ICLR 2026): few-step GM-policy students of a GMFlow or flow-matching
teacher, trained by imitation (pi-ID) with the gmfm trainer; sampled with the ``piflow`` solver
(:func:`gmfm.solvers.piflow_sample`)."""

from .loss import PiIDLoss, teacher_velocity
from .recipe import DistillConfig, DistillRecipe, distill_recipe_from_dict, load_distill_recipe
from .run import distill, load_teacher
from .student import init_from_teacher, student_recipe

__all__ = [
    "distill",
    "load_teacher",
    "DistillConfig",
    "DistillRecipe",
    "load_distill_recipe",
    "distill_recipe_from_dict",
    "PiIDLoss",
    "teacher_velocity",
    "student_recipe",
    "init_from_teacher",
]
