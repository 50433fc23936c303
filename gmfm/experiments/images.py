"""Image-experiment measurements on small labelled datasets (the MNIST benchmarks): a classifier feature
space for FD / precision / recall / accuracy, and the mean-velocity error of a model by noise level."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..math.gm_ops import gm_mean
from ..math.containers import GaussianMixture
from ..metrics.images import ImageMetrics, SmallCNNClassifier, evaluate_images, train_classifier
from ..models.protocols import null_label
from .run import TrainedModel


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
