"""Image experiments: class-conditional GMFlow / flow matching on the MNIST digits, from a TOML config.

A config (see ``configs/mnist_gmflow.toml``) has a top-level ``kind`` ("gmflow" or "fm") and tables
``[model]`` (GMDiTTransformer2DModel config), optional ``[spectrum]`` (SpectrumMLP config), ``[loss]`` and
``[train]`` (:class:`gmfm.training.TrainConfig` fields).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.mnist import MNIST_WORDS, DigitSplits, load_mnist_splits
from ..losses import FlowMatchingLoss, GMFlowLoss, TimeSampler
from ..models.gmflow_model import GMFlowModel
from ..solvers.by_name import sample_with
from ..training import TrainConfig, TrainResult, load_trained_model, train

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOSS_KEYS = {"transition_ratio", "time_sampler", "logit_mean", "logit_std", "shift", "label_dropout",
             "spectral_weight", "weight"}


@dataclass
class ImageRecipe:
    kind: str
    model: dict[str, Any]
    spectrum: dict[str, Any] | None
    loss: dict[str, Any]
    train: TrainConfig
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("gmflow", "fm"):
            raise ValueError(f"{self.source}: kind must be 'gmflow' or 'fm', got {self.kind!r}")
        unknown = set(self.loss) - LOSS_KEYS
        if unknown:
            raise ValueError(f"{self.source}: unknown [loss] keys {sorted(unknown)}; known: {sorted(LOSS_KEYS)}")


def load_image_recipe(path: str | Path, **train_overrides: Any) -> ImageRecipe:
    """Read a TOML config; ``train_overrides`` (e.g. iterations, device) replace [train] values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    unknown = set(raw) - {"kind", "model", "spectrum", "loss", "train"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train_cfg = {**raw.get("train", {}), **{k: v for k, v in train_overrides.items() if v is not None}}
    bad = set(train_cfg) - train_fields
    if bad:
        raise ValueError(f"{path}: unknown [train] keys {sorted(bad)}")
    return ImageRecipe(raw.get("kind", "gmflow"), dict(raw.get("model", {})), raw.get("spectrum"),
                       dict(raw.get("loss", {})), TrainConfig(**train_cfg), str(path))


def build_image_model(transformer: dict[str, Any], spectrum: dict[str, Any] | None) -> GMFlowModel:
    """GM-DiT (+ SpectrumMLP) from their configs (keys starting with "_", diffusers' bookkeeping, ignored)."""
    from ..models.gmdit import GMDiTTransformer2DModel, SpectrumMLP

    def clean(config: dict) -> dict:
        return {k: v for k, v in config.items() if not k.startswith("_")}

    return GMFlowModel(GMDiTTransformer2DModel(**clean(transformer)),
                       SpectrumMLP(**clean(spectrum)) if spectrum else None)


def make_image_loss(recipe: ImageRecipe, num_classes: int):
    cfg = recipe.loss
    sampler = TimeSampler(cfg.get("time_sampler", "logit_normal"), cfg.get("logit_mean", 0.0),
                          cfg.get("logit_std", 1.0), cfg.get("shift", 1.0))
    common = dict(time_sampler=sampler, weight=cfg.get("weight", 1.0), label_dropout=cfg.get("label_dropout", 0.1),
                  null_label=num_classes)
    if recipe.kind == "gmflow":
        return GMFlowLoss(transition_ratio=cfg.get("transition_ratio", 0.5),
                          spectral_weight=cfg.get("spectral_weight", 1.0 if recipe.spectrum else 0.0), **common)
    return FlowMatchingLoss(**common)


def make_image_batches(images: Tensor, labels: Tensor, batch_size: int):
    def batch(step: int, generator: torch.Generator) -> dict[str, Tensor]:
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        return {"x0": images[index], "labels": labels[index]}

    return batch


def train_image_model(recipe: ImageRecipe, out_dir: str | Path | None, *, data: DigitSplits | None = None,
                      resume: bool = True, progress: bool = True) -> TrainResult:
    data = data or load_mnist_splits()
    model = build_image_model(recipe.model, recipe.spectrum)
    meta = {"class": "GMFlowModel", "kind": recipe.kind, "transformer": dict(model.net.config),
            "spectrum": dict(model.spectrum_net.config) if model.spectrum_net is not None else None,
            "dataset": "mnist"}
    loss = make_image_loss(recipe, model.net.config.num_embeds_ada_norm)
    return train(model, loss, make_image_batches(data.train_images, data.train_labels,
                 recipe.train.batch_size), recipe.train, out_dir, resume=resume, model_meta=meta, progress=progress)


def load_image_model(path: str | Path, use_ema: bool = True, device: str = "cpu") -> tuple[GMFlowModel, dict]:
    """Rebuild a trained image model from its checkpoint file (or folder)."""

    def build(meta: dict) -> GMFlowModel:
        return build_image_model(meta["transformer"], meta.get("spectrum"))

    return load_trained_model(path, "GMFlowModel", build, use_ema, device)


def export_pipeline(model: GMFlowModel, folder: str | Path, output_mode: str = "sample") -> Path:
    """Save the model as a pipeline folder in the official layout (no VAE: pixel space)."""
    from ..pipelines.gmdit_pipeline import GMDiTPipeline
    from ..solvers.schedulers import FlowEulerODEScheduler, GMFlowSDEScheduler

    scheduler = GMFlowSDEScheduler() if output_mode == "sample" else FlowEulerODEScheduler()
    pipe = GMDiTPipeline(model.net, model.spectrum_net, scheduler, None, dict(enumerate(MNIST_WORDS)))
    pipe.save_pretrained(folder)
    return Path(folder)


def image_substeps(nfe: int) -> int:
    """GM-ODE substeps for images: ceil(128 / NFE), at most 16 (the paper: 16 at NFE 8, 4 at NFE 32)."""
    return max(1, min(16, math.ceil(128 / nfe)))


@torch.no_grad()
def sample_digits(model: GMFlowModel, solver: str, nfe: int, labels: Tensor, *, guidance_scale: float = 0.0,
                  orthogonal_guidance: float = 1.0, cfg_scale: float = 1.0, spectral: bool = True, seed: int = 0,
                  batch_size: int = 500, device: str = "cpu") -> Tensor:
    """Images (N, C, H, W) (the model's channels and size) in [-1, 1] (not clamped) for ``labels`` (N,)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    guided = guidance_scale > 0 or cfg_scale != 1.0
    spectrum = model.spectrum_net if (spectral and solver.startswith("gmsde")) else None
    config = model.net.config
    for chunk in labels.split(batch_size):
        cond = chunk.to(device)
        noise = torch.randn(len(chunk), config.in_channels, config.sample_size, config.sample_size,
                            generator=generator).to(device)
        null = torch.full_like(cond, config.num_embeds_ada_norm)  # the null class id = number of classes
        x = sample_with(solver, model, noise, nfe, substeps=image_substeps(nfe) if solver.startswith("gmode") else None,
                        condition=cond, uncond_condition=null if guided else None,
                        guidance_scale=guidance_scale, orthogonal_guidance=orthogonal_guidance, cfg_scale=cfg_scale,
                        spectrum=spectrum, generator=generator)
        out.append(x.float().cpu())
    return torch.cat(out)
