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
        """Build the network.

        Args:
            num_classes: number of output classes.
            in_channels: C.
            image_size: S, divisible by 8.

        Raises:
            ValueError: if ``image_size`` is not divisible by 8.
        """
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
        """The 128-d penultimate activations (N, 128) of images (N, C, S, S)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (N, num_classes) of images (N, C, S, S)."""
        return self.head(self.body(x))


def train_classifier(images: Tensor, labels: Tensor, epochs: int = 8, batch_size: int = 128, seed: int = 0,
                     progress: bool = False) -> SmallCNNClassifier:
    """Train the feature extractor with Adam (lr 1e-3); random shifts by up to 2 px.

    Args:
        images: training images (N, C, S, S) in [-1, 1].
        labels: integer class ids (N,); the number of classes is ``labels.max() + 1``.
        epochs: the run takes epochs x ceil(N / batch_size) steps (batches drawn with replacement).
        batch_size: images per step.
        seed: seeds the initialisation and the batch / shift generator (the global RNG is left alone).
        progress: whether to show a progress bar.

    Returns:
        The trained classifier, in eval mode.
    """
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
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
    """Features and predicted classes of images, computed ``batch_size`` images at a time without gradients.

    Args:
        model: the classifier.
        images: (N, C, S, S) in [-1, 1] (computed in float32).
        batch_size: images per forward pass.

    Returns:
        (features (N, 128) float64, predicted classes (N,) int64).
    """
    feats, preds = [], []
    for chunk in images.split(batch_size):
        f = model.features(chunk.float())
        feats.append(f.double())
        preds.append(model.head(f).argmax(-1))
    return torch.cat(feats), torch.cat(preds)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Frechet distance ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) of two feature sets.

    Args:
        a: features (N, D).
        b: features (M, D).

    Returns:
        The distance.
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(s_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * cross)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, chunk: int = 2048) -> tuple[float, float]:
    """Improved precision / recall (Kynkaanniemi et al. 2019).

    Precision is the share of fake features inside some real k-NN ball, recall the share of real features
    inside some fake k-NN ball. Distances are computed ``chunk`` rows at a time, so 50,000 x 50,000
    features need O(chunk x N) memory.

    Args:
        real: real features (N, D).
        fake: generated features (M, D).
        k: the neighbour whose distance is the ball radius.
        chunk: rows per distance computation.

    Returns:
        (precision, recall).
    """

    def radii(x: Tensor) -> Tensor:  # the 0-th neighbour is the point itself
        return torch.cat([torch.cdist(part, x).kthvalue(k + 1, dim=1).values for part in x.split(chunk)])

    def coverage(points: Tensor, centres: Tensor, r: Tensor) -> float:
        inside = [(torch.cdist(part, centres) <= r[None, :]).any(dim=1) for part in points.split(chunk)]
        return float(torch.cat(inside).double().mean())

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def hsv_saturation(images: Tensor) -> float:
    """Mean HSV saturation of RGB images: (max - min) / max per pixel, 0 for black.

    The paper's saturation measure (real ImageNet 256: 0.318).

    Args:
        images: RGB images (N, 3, H, W) in [0, 1] (clamped).

    Returns:
        The mean saturation.

    Raises:
        ValueError: if ``images`` is not (N, 3, H, W).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be RGB (N, 3, H, W), got {tuple(images.shape)}")
    x = images.double().clamp(0, 1)
    high, low = x.amax(dim=1), x.amin(dim=1)
    return float(torch.where(high > 0, (high - low) / high.clamp(min=1e-12), torch.zeros_like(high)).mean())


def saturation(images: Tensor) -> tuple[float, float]:
    """Saturation of grayscale-style images in [-1, 1].

    Args:
        images: images of any shape, in [-1, 1] (clamped).

    Returns:
        (fraction of pixels with |x| >= 0.98, mean |x|).
    """
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
        """The metrics by field name."""
        return asdict(self)


def evaluate_images(classifier: SmallCNNClassifier, samples: Tensor, sample_labels: Tensor, real: Tensor) -> ImageMetrics:
    """All metrics of generated samples against real images.

    Args:
        classifier: the trained feature classifier (:func:`train_classifier`).
        samples: generated images (N, C, H, W) in [-1, 1] (clamped for the classifier).
        sample_labels: the requested class of every sample, (N,).
        real: real images (M, C, H, W).

    Returns:
        :class:`ImageMetrics`; the ``*_vs_real`` fields are the sample value minus the real data's.
    """
    fake_feats, preds = classifier_outputs(classifier, samples.clamp(-1, 1))
    real_feats, _ = classifier_outputs(classifier, real)
    precision, recall = precision_recall(real_feats, fake_feats)
    sat, mean_abs = saturation(samples)
    real_sat, real_mean = saturation(real)
    return ImageMetrics(frechet_distance(real_feats, fake_feats), precision, recall,
                        float((preds == sample_labels.to(preds.device)).double().mean()), sat, mean_abs,
                        sat - real_sat, mean_abs - real_mean)
