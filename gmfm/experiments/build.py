"""Turn a :class:`~gmfm.experiments.recipe.Recipe` into the objects of a run: model, loss, data.

Sizes come from the dataset (channels, image size, number of classes), never from constants; a
recipe that states one that disagrees is an error.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.base import Dataset
from ..data.registry import make_dataset
from ..losses import FlowMatchingLoss, GMFlowLoss, Loss, TimeSampler
from ..models.protocols import null_label
from .recipe import Recipe, RecipeError


def load_dataset(recipe: Recipe) -> Dataset:
    """The recipe's ``[data]`` dataset."""
    options = {k: v for k, v in recipe.data.items() if k != "name"}
    try:
        return make_dataset(recipe.dataset_name, **options)
    except TypeError as err:
        raise RecipeError(f"{recipe.source}: [data] {err}") from err


def _image_config(recipe: Recipe, event_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
    """The image backbone's config: the recipe's keys plus the sizes the dataset fixes."""
    channels, height, width = event_shape
    if height != width:
        raise RecipeError(f"{recipe.source}: {recipe.backbone} needs square samples, the dataset has {height} x {width}")
    config = {k: v for k, v in recipe.model.items() if k != "backbone"}
    if "num_components" in config:  # the model configs (and the official checkpoints) call K num_gaussians
        config["num_gaussians"] = config.pop("num_components")
    if recipe.backbone == "gmdit" and not num_classes:
        raise RecipeError(f"{recipe.source}: GM-DiT is class-conditional, the dataset {recipe.dataset_name!r} has no "
                          "classes (use backbone = \"unet\" for unconditional data)")
    classes = "num_embeds_ada_norm" if recipe.backbone == "gmdit" else "num_classes"
    derived = {"in_channels": channels, "sample_size": height, classes: num_classes}
    for key, value in derived.items():
        if key in config and config[key] != value:
            raise RecipeError(f"{recipe.source}: [model] {key} = {config[key]} but the dataset "
                              f"{recipe.dataset_name!r} has {value}")
        config[key] = value
    return config


def build_model(recipe: Recipe, event_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The recipe's untrained model.

    Args:
        recipe: the recipe (its ``[model]`` table and ``[train] seed``).
        event_shape: (C, H, W) of one sample; GM-DiT takes its channels and size from it.
        num_classes: classes of the data (0: unconditional); the null label is ``num_classes``.

    Returns:
        A :class:`gmfm.models.GMFlowMLP2D` or a :class:`gmfm.models.GMFlowModel` (GM-DiT + optional
        SpectrumMLP), initialised from ``[train] seed``: the same recipe gives the same weights in every
        process.

    Raises:
        RecipeError: a model key is invalid or disagrees with the data.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.train.seed)
        try:
            return _build(recipe, event_shape, num_classes)
        except (TypeError, ValueError) as err:
            if isinstance(err, RecipeError):
                raise
            raise RecipeError(f"{recipe.source}: [model] {err}") from err


def _build(recipe: Recipe, event_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    options = {k: v for k, v in recipe.model.items() if k != "backbone"}
    if recipe.backbone == "mlp2d":
        from ..models.mlp2d import GMFlowMLP2D, MLP2DConfig

        if tuple(event_shape) != (2, 1, 1):
            raise RecipeError(f"{recipe.source}: backbone mlp2d models 2-D points; dataset "
                              f"{recipe.dataset_name!r} has samples of shape {tuple(event_shape)}")
        config = MLP2DConfig(**{**options, "num_classes": num_classes})
        return GMFlowMLP2D(config, num_components=1) if recipe.kind == "fm" else GMFlowMLP2D(config)
    from ..models.gmdit import GMDiTTransformer2DModel, SpectrumMLP
    from ..models.gmflow_model import GMFlowModel

    if recipe.backbone == "unet":
        from ..models.unet import GMUNet2DModel

        net = GMUNet2DModel(**_image_config(recipe, event_shape, num_classes))
    else:
        net = GMDiTTransformer2DModel(**_image_config(recipe, event_shape, num_classes))
    spectrum = None
    if recipe.spectrum is not None:
        base_size = recipe.spectrum.get("base_size", list(event_shape))
        if list(base_size)[0] != event_shape[0]:
            raise RecipeError(f"{recipe.source}: [model.spectrum] base_size has {base_size[0]} channels, the data "
                              f"{event_shape[0]}")
        spectrum = SpectrumMLP(**{**recipe.spectrum, "base_size": list(base_size)})
    return GMFlowModel(net, spectrum)


def spectrum_net_of(model: nn.Module) -> nn.Module | None:
    """The SpectrumMLP trained beside ``model``, if any."""
    return getattr(model, "spectrum_net", None) if isinstance(model, nn.Module) else None


def build_loss(recipe: Recipe, num_classes: int) -> Loss:
    """The recipe's training loss (label dropout only for class-conditional data)."""
    cfg = recipe.loss
    try:
        sampler = TimeSampler(cfg.time_sampler, cfg.logit_mean, cfg.logit_std, cfg.shift)
        conditional = dict(label_dropout=cfg.label_dropout, null_label=null_label(num_classes)) if num_classes else {}
        if recipe.kind == "gmflow":
            spectral = cfg.spectral_weight if cfg.spectral_weight is not None else (1.0 if recipe.spectrum else 0.0)
            return GMFlowLoss(transition_ratio=cfg.transition_ratio, time_sampler=sampler, weight=cfg.weight,
                              spectral_weight=spectral, transition_draws=cfg.transition_draws, **conditional)
        return FlowMatchingLoss(time_sampler=sampler, weight=cfg.weight, **conditional)
    except ValueError as err:
        raise RecipeError(f"{recipe.source}: [loss] {err}") from err
