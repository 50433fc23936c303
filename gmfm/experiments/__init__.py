"""Experiments: recipes (one TOML format for 2-D and images), building, training, loading and sampling
runs, evaluation, result files. The command line and the benchmarks are thin layers over this package.

Where things go: a new dataset is a factory in :mod:`gmfm.data.registry`; a new backbone is a model class
plus its branch in :mod:`gmfm.experiments.build` (and its name in ``recipe.BACKBONES``).
"""

from .build import build_loss, build_model, load_dataset, spectrum_net_of
from .recipe import LossConfig, Recipe, RecipeError, SampleConfig, config_names, load_recipe, recipe_from_dict
from .results import machine_info, markdown_table, write_json, write_results
from .run import TrainedModel, load_run, train_recipe
from ..guidance import make_guidance
from .sampling import SamplingPlan, default_solver, sample_trained

__all__ = [
    "Recipe",
    "RecipeError",
    "LossConfig",
    "SampleConfig",
    "load_recipe",
    "recipe_from_dict",
    "config_names",
    "load_dataset",
    "build_model",
    "build_loss",
    "spectrum_net_of",
    "train_recipe",
    "load_run",
    "TrainedModel",
    "sample_trained",
    "SamplingPlan",
    "make_guidance",
    "default_solver",
    "write_results",
    "write_json",
    "markdown_table",
    "machine_info",
]
