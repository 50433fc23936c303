"""Datasets: 2-D toys (images come with the image issue)."""

from .toy2d import (
    TOY_DATASET_NAMES,
    Checkerboard,
    ConcentricRings,
    GaussianRing,
    Toy2D,
    as_images,
    as_points,
    make_toy_dataset,
)

__all__ = [
    "Toy2D",
    "Checkerboard",
    "GaussianRing",
    "ConcentricRings",
    "make_toy_dataset",
    "TOY_DATASET_NAMES",
    "as_images",
    "as_points",
]
