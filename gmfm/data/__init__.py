"""Datasets: the training-data contract, the dataset registry, 2-D toys and the MNIST digits."""

from .base import Dataset, ImageSet, TrainingData
from .registry import dataset_names, dataset_options, make_dataset, register_dataset
from .toy_distributions import (
    TOY_DATASET_NAMES,
    Checkerboard,
    ConcentricRings,
    GaussianRing,
    Toy2D,
    ToyTrainingData,
    as_images,
    as_points,
    make_toy_dataset,
)

__all__ = [
    "Dataset",
    "TrainingData",
    "ImageSet",
    "make_dataset",
    "register_dataset",
    "dataset_names",
    "dataset_options",
    "Toy2D",
    "ToyTrainingData",
    "Checkerboard",
    "GaussianRing",
    "ConcentricRings",
    "make_toy_dataset",
    "TOY_DATASET_NAMES",
    "as_images",
    "as_points",
]
