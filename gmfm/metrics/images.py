"""Image metrics for small datasets (e.g. MNIST) on the features of a small CNN classifier trained on them.

- Frechet distance (FD) between Gaussian fits of the classifier's penultimate features;
- precision / recall (Kynkaanniemi et al. 2019): k-NN balls (k = 3) around real / generated features;
- class accuracy of conditional samples (the classifier's prediction vs the requested class);
- saturation for grayscale: the fraction of pixels with |x| >= 0.98 and the mean |x|.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


class SmallCNNClassifier(nn.Module):
    """A small CNN for C x S x S images in [-1, 1] (S divisible by 8); ``features`` are its 128-d
    penultimate activations (the feature space of FD / precision / recall)."""

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: int = 32) -> None:
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image_size must be divisible by 8, got {image_size}")
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (image_size // 8) ** 2, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def train_classifier(images: Tensor, labels: Tensor, epochs: int = 8, batch_size: int = 128, seed: int = 0,
                     progress: bool = False) -> SmallCNNClassifier:
    """Train the feature extractor on (images (N, C, S, S), labels (N,)); random shifts by up to 2 px."""
    torch.manual_seed(seed)
    model = SmallCNNClassifier(int(labels.max()) + 1, images.shape[1], images.shape[-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    bar = tqdm(range(steps), desc="training the feature classifier", disable=not progress)
    for step in bar:
        index = torch.randint(0, len(images), (batch_size,), generator=g)
        shift = torch.randint(-2, 3, (2,), generator=g).tolist()
        x = torch.roll(images[index], shifts=shift, dims=(-2, -1))
        loss = nn.functional.cross_entropy(model(x), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def classifier_outputs(model: SmallCNNClassifier, images: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """(features (N, 128), predicted classes (N,)) as float64 / int64."""
    feats, preds = [], []
    for chunk in images.split(batch_size):
        f = model.features(chunk.float())
        feats.append(f.double())
        preds.append(model.head(f).argmax(-1))
    return torch.cat(feats), torch.cat(preds)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) of features (N, D), (M, D)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(s_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * cross)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, chunk: int = 2048) -> tuple[float, float]:
    """Improved precision / recall (Kynkaanniemi et al. 2019) of features (N, D) and (M, D): the share of
    fake features inside some real k-NN ball, and vice versa. Distances are computed ``chunk`` rows at a
    time, so 50,000 x 50,000 features need O(chunk x N) memory."""

    def radii(x: Tensor) -> Tensor:  # the 0-th neighbour is the point itself
        return torch.cat([torch.cdist(part, x).kthvalue(k + 1, dim=1).values for part in x.split(chunk)])

    def coverage(points: Tensor, centres: Tensor, r: Tensor) -> float:
        inside = [(torch.cdist(part, centres) <= r[None, :]).any(dim=1) for part in points.split(chunk)]
        return float(torch.cat(inside).double().mean())

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def hsv_saturation(images: Tensor) -> float:
    """Mean HSV saturation of RGB images (N, 3, H, W) in [0, 1]: (max - min) / max per pixel, 0 for black
    (the paper's saturation measure; real ImageNet 256: 0.318)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be RGB (N, 3, H, W), got {tuple(images.shape)}")
    x = images.double().clamp(0, 1)
    high, low = x.amax(dim=1), x.amin(dim=1)
    return float(torch.where(high > 0, (high - low) / high.clamp(min=1e-12), torch.zeros_like(high)).mean())


def saturation(images: Tensor) -> tuple[float, float]:
    """(fraction of pixels with |x| >= 0.98, mean |x|) for images in [-1, 1]."""
    x = images.float().clamp(-1, 1)
    return float((x.abs() >= 0.98).double().mean()), float(x.abs().double().mean())


@dataclass(frozen=True)
class ImageMetrics:
    fd: float
    precision: float
    recall: float
    accuracy: float
    saturated_fraction: float
    mean_abs: float
    saturated_fraction_vs_real: float  # sample minus real data
    mean_abs_vs_real: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def evaluate_images(classifier: SmallCNNClassifier, samples: Tensor, sample_labels: Tensor, real: Tensor) -> ImageMetrics:
    """All metrics of generated ``samples`` (N, C, H, W) requested as ``sample_labels`` (N,) against ``real``
    images (M, C, H, W)."""
    fake_feats, preds = classifier_outputs(classifier, samples.clamp(-1, 1))
    real_feats, _ = classifier_outputs(classifier, real)
    precision, recall = precision_recall(real_feats, fake_feats)
    sat, mean_abs = saturation(samples)
    real_sat, real_mean = saturation(real)
    return ImageMetrics(frechet_distance(real_feats, fake_feats), precision, recall,
                        float((preds == sample_labels.to(preds.device)).double().mean()), sat, mean_abs,
                        sat - real_sat, mean_abs - real_mean)
