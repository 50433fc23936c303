"""Image experiments: sample grids of a run, and measurements on small labelled datasets (the MNIST
benchmarks): a classifier feature space for FD / precision / recall / accuracy, and the mean-velocity error
of a model by noise level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..math.gm_ops import gm_mean
from ..math.containers import GaussianMixture
from ..metrics.figures import save_image_grid
from ..metrics.images import ImageMetrics, SmallCNNClassifier, evaluate_images, train_classifier
from ..models.protocols import null_label
from .run import TrainedModel, load_run
from .sampling import SamplingPlan, sample_trained


class ClassifierEvaluator:
    """Evaluates generated images (N, C, H, W) in [-1, 1] against real held-out images in the features of
    a small CNN trained (seeded) on the training images; the classifier is cached in ``cache`` when given,
    so that every evaluation of a study uses the same feature space."""

    def __init__(self, train_images: Tensor, train_labels: Tensor, real_images: Tensor, *, seed: int = 0,
                 cache: str | Path | None = None) -> None:
        self.real = real_images.float()
        path = Path(cache) if cache is not None else None
        if path is not None and path.is_file():
            self.classifier = SmallCNNClassifier(int(train_labels.max()) + 1, train_images.shape[1],
                                                 train_images.shape[-1])
            self.classifier.load_state_dict(torch.load(path, weights_only=True))
            self.classifier.eval()
        else:
            self.classifier = train_classifier(train_images.float(), train_labels, seed=seed)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(self.classifier.state_dict(), path)

    def __call__(self, samples: Tensor, labels: Tensor) -> ImageMetrics:
        return evaluate_images(self.classifier, samples.float(), labels, self.real)


@torch.no_grad()
def velocity_error_by_sigma(trained: TrainedModel, x0: Tensor, labels: Tensor, sigmas: tuple[float, ...],
                            seed: int = 0, batch_size: int = 250) -> dict[float, dict[str, float]]:
    """The model's mean-velocity error by noise level.

    Args:
        trained: the run (GMFlow: its GM mean is the velocity; FM: its prediction).
        x0: (N, C, H, W) held-out data; labels: (N,) their classes.
        sigmas: the noise levels.
        seed: seeds the one noise draw per level.

    Returns:
        {sigma: {"cond": MSE with the true labels, "uncond": MSE with the null label}}, the mean squared
        error per element between the mean velocity and u = noise - x0 at x_t = (1 - sigma) x0 + sigma noise.
    """
    model = trained.model
    device = next(model.parameters()).device
    null = getattr(model, "null_label", null_label(trained.num_classes))
    out: dict[float, dict[str, float]] = {}
    for level in sigmas:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + int(level * 1e6)))
        errors = {"cond": 0.0, "uncond": 0.0}
        for start in range(0, len(x0), batch_size):
            x, n, y = (t[start:start + batch_size] for t in (x0, noise, labels))
            x_t, u = (1 - level) * x + level * n, n - x
            sigma = torch.full((len(x),), level)
            for key, lab in (("cond", y), ("uncond", torch.full_like(y, null))):
                pred = model(x_t.to(device), sigma.to(device), lab.to(device))
                mean = gm_mean(pred) if isinstance(pred, GaussianMixture) else pred
                errors[key] += float((mean.cpu() - u).square().sum())
        out[level] = {k: v / x0.numel() for k, v in errors.items()}
    return out


def sample_image_grid(run: str | Path, *, per_class: int = 10, classes: list[int] | None = None, seed: int = 0,
                      out: str | Path | None = None, use_ema: bool = True, device: str = "cpu",
                      progress: bool = True, **choices: Any) -> tuple[Path, SamplingPlan]:
    """``gmfm sample-images``: a PNG grid of samples of an image run, one row per class (unconditional runs:
    ``per_class`` rows of ``per_class``).

    Args:
        run: an image run folder or checkpoint.
        per_class: images per row; classes: the classes to sample (default: all).
        out: the PNG (default ``<run folder>/grid_<plan tag>.png``).
        **choices: sampling choices for :meth:`gmfm.experiments.SamplingPlan.resolve` (None: the recipe's).

    Returns:
        (the PNG path, the plan it was sampled with).

    Raises:
        ValueError: the run is a 2-D run, or a class is not one of the model's.
    """
    trained = load_run(run, use_ema=use_ema, device=device)
    if trained.event_shape[1:] == (1, 1):
        raise ValueError(f"{run} is a 2-D run; use sample-2d")
    plan = SamplingPlan.resolve(trained, **choices)
    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    path = Path(out) if out is not None else folder / f"grid_{plan.tag()}.png"
    if not trained.num_classes:  # unconditional: a plain grid of per_class x per_class images
        if classes is not None:
            raise ValueError(f"--classes: {run} is an unconditional run")
        images = sample_trained(trained, plan=plan, num_samples=per_class * per_class, seed=seed, device=device,
                                progress=progress)
        save_image_grid(images, path, nrow=per_class, title=f"{plan.solver}, NFE {plan.nfe}")
        return path, plan
    classes = list(classes) if classes is not None else list(range(trained.num_classes))
    bad = [c for c in classes if c >= trained.num_classes]
    if bad:
        raise ValueError(f"--classes must be in [0, {trained.num_classes - 1}], got {bad}")
    labels = torch.tensor(classes).repeat_interleave(per_class)
    images = sample_trained(trained, plan=plan, labels=labels, seed=seed, device=device, progress=progress)
    names = trained.class_names or tuple(str(c) for c in range(trained.num_classes))
    save_image_grid(images, path, nrow=per_class, row_labels=[names[c] for c in classes],
                    title=f"{plan.solver}, NFE {plan.nfe}")
    return path, plan
