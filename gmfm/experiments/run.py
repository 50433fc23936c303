"""Train a recipe into a run folder, and load a trained run back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.base import Dataset
from ..training import Checkpoint, TrainResult, load_trained_model, train
from .build import build_loss, build_model, load_dataset, spectrum_net_of
from .recipe import Recipe, RecipeError, recipe_from_dict, upgrade_settings


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A trained run: the model (eval mode), its recipe, the data it saw and the checkpoint it came from.

    ``event_shape`` (C, H, W) and ``num_classes`` describe the data; ``class_names`` label the classes.
    """

    model: nn.Module
    recipe: Recipe
    event_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    checkpoint: Checkpoint

    @property
    def kind(self) -> str:
        return self.recipe.kind

    @property
    def spectrum_net(self) -> nn.Module | None:
        return spectrum_net_of(self.model)

    def __repr__(self) -> str:
        return (f"TrainedModel({self.recipe.kind}, {self.recipe.backbone} on {self.recipe.dataset_name!r}, "
                f"event_shape={self.event_shape}, num_classes={self.num_classes}, step={self.checkpoint.step})")


def _dataset_metadata(dataset: Dataset) -> dict[str, Any]:
    extra = {k: v for k, v in dataset.extra.items() if isinstance(v, (str, int, float, bool))}  # e.g. the VAE
    return {"name": dataset.name, "event_shape": list(dataset.event_shape), "num_classes": dataset.num_classes,
            "class_names": list(dataset.class_names), "extra": extra}


def train_recipe(recipe: Recipe, out_dir: str | Path | None, *, dataset: Dataset | None = None, resume: bool = True,
                 allow_changed_settings: bool = False, progress: bool = True) -> TrainResult:
    """Train ``recipe`` into ``out_dir`` (resumed when it holds a checkpoint of the same settings).

    The checkpoint records the recipe and the data's shape and classes, so :func:`load_run` rebuilds the
    model without the dataset.
    """
    dataset = dataset or load_dataset(recipe)
    model = build_model(recipe, dataset.event_shape, dataset.num_classes)
    loss = build_loss(recipe, dataset.num_classes)
    metadata = {"recipe": recipe.as_dict(), "dataset": _dataset_metadata(dataset),
                "model": {"class": type(model).__name__}}
    return train(model, loss, dataset.train, recipe.train, out_dir, upgrade_settings=upgrade_settings,
                 resume=resume, metadata=metadata, settings=recipe.identity(),
                 allow_changed_settings=allow_changed_settings, progress=progress)


def load_run(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild a trained model without its dataset.

    Args:
        path: a checkpoint file or run folder written by :func:`train_recipe`.
        use_ema: load the EMA weights when the checkpoint has them.
        device: where the model goes.

    Returns:
        :class:`TrainedModel` (model in eval mode, recipe, data shape and classes, checkpoint).

    Raises:
        FileNotFoundError / ValueError: no checkpoint, a damaged one, or one without experiment metadata.
    """
    holder: dict[str, Any] = {}

    def build(ckpt: Checkpoint) -> nn.Module:
        meta = ckpt.metadata
        if "recipe" not in meta or "dataset" not in meta:
            raise ValueError(f"checkpoint {ckpt.path} was not written by a gmfm experiment (no recipe in its "
                             "metadata)")
        try:
            recipe = recipe_from_dict(meta["recipe"], f"{ckpt.path} (recipe)", warn_renamed=False)
            data = meta["dataset"]
            event_shape, num_classes = tuple(int(v) for v in data["event_shape"]), int(data["num_classes"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"checkpoint {ckpt.path} has invalid experiment metadata: {err}") from err
        holder.update(recipe=recipe, event_shape=event_shape, num_classes=num_classes,
                      class_names=tuple(data.get("class_names", ())))
        return build_model(recipe, event_shape, num_classes)

    try:
        model, ckpt = load_trained_model(path, build, use_ema, device)
    except RecipeError as err:
        raise ValueError(f"cannot rebuild the model of {path}: {err}") from err
    return TrainedModel(model, holder["recipe"], holder["event_shape"], holder["num_classes"],
                        holder["class_names"], ckpt)
