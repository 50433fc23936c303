"""Metrics and figures: 2-D toy metrics (image metrics come with the image issue)."""

from .toy2d import (
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
]
