"""2-D experiments: train GMFlow or flow-matching MLPs on a toy dataset, sample and evaluate them.

Used by the ``gmfm train-2d / sample-2d / bench-2d / demo`` commands and by the tests.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.toy2d import Toy2D, as_images, make_toy_dataset
from ..losses import FlowMatchingLoss, GMFlowLoss, TimeSampler
from ..metrics.toy2d import evaluate_toy2d
from ..models.mlp2d import GMFlowMLP2D, MLP2DConfig
from ..solvers.by_name import sample_with
from ..training import TrainConfig, TrainResult, load_trained_model, train

MODEL_KINDS = ("gmflow", "fm")


@dataclass
class Toy2DRecipe:
    """A 2-D training run (defaults: the paper's checkerboard recipe, Sec. 4.1)."""

    dataset: str = "checkerboard"
    kind: str = "gmflow"  # "gmflow" (GM NLL / transition loss) or "fm" (K = 1, L2)
    model: MLP2DConfig = field(default_factory=MLP2DConfig)
    transition_ratio: float = 0.9
    label_dropout: float = 0.1  # conditional datasets only
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        iterations=200_000, batch_size=4096, lr=2e-4, optimizer="adamw", warmup_iters=1000, ema="karras",
        checkpoint_every=5000, log_every=1000))

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}, got {self.kind!r}")


def build_model(recipe: Toy2DRecipe, dataset: Toy2D) -> GMFlowMLP2D:
    config = recipe.model
    overrides: dict[str, Any] = {"num_classes": dataset.num_classes}
    if recipe.kind == "fm":
        overrides["num_components"] = 1
    return GMFlowMLP2D(config, **overrides)


def make_loss(recipe: Toy2DRecipe, dataset: Toy2D):
    conditional = dict(label_dropout=recipe.label_dropout, null_label=dataset.num_classes) if dataset.num_classes \
        else {}
    if recipe.kind == "gmflow":
        return GMFlowLoss(transition_ratio=recipe.transition_ratio, time_sampler=TimeSampler(), **conditional)
    return FlowMatchingLoss(time_sampler=TimeSampler(), **conditional)


def make_batch_fn(dataset: Toy2D, batch_size: int):
    def batch(step: int, generator: torch.Generator) -> dict[str, Tensor]:
        labels = dataset.sample_labels(batch_size, generator) if dataset.num_classes else None
        out = {"x0": as_images(dataset.sample(batch_size, generator, labels))}
        if labels is not None:
            out["labels"] = labels
        return out

    return batch


def train_toy2d(recipe: Toy2DRecipe, out_dir: str | Path | None, *, resume: bool = True,
                progress: bool = True) -> TrainResult:
    """Train one 2-D model; its checkpoint records how to rebuild it (see :func:`load_toy2d_model`)."""
    dataset = make_toy_dataset(recipe.dataset)
    model = build_model(recipe, dataset)
    meta = {"class": "GMFlowMLP2D", "config": model.config.as_dict(), "kind": recipe.kind,
            "dataset": recipe.dataset}
    return train(model, make_loss(recipe, dataset), make_batch_fn(dataset, recipe.train.batch_size), recipe.train,
                 out_dir, resume=resume, model_meta=meta, progress=progress)


def load_toy2d_model(path: str | Path, use_ema: bool = True, device: str = "cpu") -> tuple[GMFlowMLP2D, dict]:
    """Rebuild a 2-D model from a checkpoint file (or the folder holding ``checkpoint.safetensors``).

    Returns (model in eval mode, the checkpoint's model metadata). The EMA weights are used when present
    and ``use_ema``.
    """
    return load_trained_model(path, "GMFlowMLP2D", lambda meta: GMFlowMLP2D(MLP2DConfig(**meta["config"])),
                              use_ema, device)


@torch.no_grad()
def sample_toy2d(model: GMFlowMLP2D, solver: str, nfe: int, num_samples: int, *, seed: int = 0,
                 labels: Tensor | None = None, guidance_scale: float = 0.0, cfg_scale: float = 1.0,
                 substeps: int | None = None, batch_size: int = 100_000, device: str = "cpu",
                 progress: bool = False) -> Tensor:
    """``num_samples`` points (N, 2) from a 2-D model with a named solver, in batches, seeded."""
    generator = torch.Generator().manual_seed(seed)
    conditional = model.config.num_classes > 0
    chunks = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        noise = torch.randn(n, 2, 1, 1, generator=generator).to(device)
        cond = uncond = None
        if conditional:
            chunk_labels = labels[start:start + n] if labels is not None else \
                torch.randint(0, model.config.num_classes, (n,), generator=generator)
            cond = chunk_labels.to(device)
            uncond = torch.full_like(cond, model.config.num_classes)
        x = sample_with(solver, model, noise, nfe, substeps=substeps, condition=cond,
                        uncond_condition=uncond if (guidance_scale or cfg_scale != 1.0) else None,
                        guidance_scale=guidance_scale, cfg_scale=cfg_scale, generator=generator, progress=progress)
        chunks.append(x.reshape(n, 2).float().cpu())
    return torch.cat(chunks)


def evaluate_solvers(model: GMFlowMLP2D, dataset: Toy2D, solvers: list[str], nfes: list[int], num_samples: int,
                     *, seed: int = 0, device: str = "cpu", keep_samples: int = 0,
                     progress: bool = True) -> tuple[dict[str, dict[str, float]], dict[str, Tensor]]:
    """Metrics {"<solver>_<nfe>": {tv, precision, swd}} and, if ``keep_samples``, the first points of each."""
    reference = dataset.sample(num_samples, torch.Generator().manual_seed(seed + 10_000))
    results, kept = {}, {}
    from tqdm.auto import tqdm

    jobs = [(s, n) for s in solvers for n in nfes]
    for solver, nfe in tqdm(jobs, desc="evaluating", disable=not progress):
        tic = time.perf_counter()
        points = sample_toy2d(model, solver, nfe, num_samples, seed=seed, device=device)
        metrics = evaluate_toy2d(points, dataset, reference).as_dict()
        metrics["sample_seconds"] = time.perf_counter() - tic
        results[f"{solver}_{nfe}"] = metrics
        if keep_samples:
            kept[f"{solver}_{nfe}"] = points[:keep_samples]
    return results, kept


def write_json(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
