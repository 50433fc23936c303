"""Metrics and figures: exact 2-D toy metrics (TV, precision, sliced Wasserstein), image metrics on the
features of a small CNN (FD, precision / recall, class accuracy, saturation), and the figures (2-D
histograms, metric plots, image grids)."""

from .figures import save_histogram_grid, save_image_grid, save_metric_plot
from .images import (
    ImageMetrics,
    SmallCNNClassifier,
    evaluate_images,
    frechet_distance,
    precision_recall,
    saturation,
    train_classifier,
)
from .points2d import (
    Toy2DMetrics,
    evaluate_toy2d,
    histogram2d,
    noise_floor,
    precision,
    sliced_wasserstein,
    total_variation,
)

__all__ = [
    "Toy2DMetrics",
    "evaluate_toy2d",
    "histogram2d",
    "noise_floor",
    "precision",
    "sliced_wasserstein",
    "total_variation",
    "ImageMetrics",
    "SmallCNNClassifier",
    "train_classifier",
    "evaluate_images",
    "frechet_distance",
    "precision_recall",
    "saturation",
    "save_histogram_grid",
    "save_image_grid",
    "save_metric_plot",
]
