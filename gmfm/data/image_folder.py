"""Image folders in the ImageNet training layout, read with PIL (no torchvision).

    root/
      n01440764/  *.JPEG      one folder per class
      n01443537/  ...

The class of a folder is its line number in a class-index file (ImageNet's ``LOC_synset_mapping.txt``:
``n01440764 tench, Tinca tinca`` per line; a JSON ``{"n01440764": 0, ...}`` works too), or its rank among
the sorted folder names without one. Images are centre-cropped to ``image_size`` with the ADM recipe
(halve with a box filter while the short side is at least twice the size, bicubic resize of the short side
to the size, centre crop), as the official data pipeline does, and scaled to [-1, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import Dataset

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


def adm_center_crop(image, image_size: int) -> np.ndarray:
    """A PIL image -> (image_size, image_size, 3) uint8: the ADM centre crop (RGB; grey and RGBA converted)."""
    from PIL import Image

    image = image.convert("RGB")
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - image_size) // 2, (array.shape[1] - image_size) // 2
    return array[top: top + image_size, left: left + image_size]


def read_class_index(path: str | Path) -> tuple[list[str], list[str]]:
    """(folder names in class order, one label phrase per class) from a class-index file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-index file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        mapping = json.loads(text)
        folders = sorted(mapping, key=lambda k: int(mapping[k]))
        if [int(mapping[f]) for f in folders] != list(range(len(folders))):
            raise ValueError(f"{path}: class ids must be 0 .. {len(folders) - 1}, each once")
        return folders, folders
    folders, words = [], []
    for line in text.splitlines():
        if line.strip():
            name, _, label = line.strip().partition(" ")
            folders.append(name)
            words.append(label.strip() or name)
    return folders, words


class ImageFolder:
    """The images of a class-per-folder tree: ``len(folder)`` images, ``folder.item(i)`` = (image (3, S, S)
    float32 in [-1, 1], class id)."""

    def __init__(self, root: str | Path, image_size: int = 256, class_index: str | Path | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        self.image_size = image_size
        if class_index is not None:
            folders, self.class_names = read_class_index(class_index)
        else:
            folders = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            self.class_names = list(folders)
        if not folders:
            raise ValueError(f"{self.root} holds no class folders")
        self.paths: list[Path] = []
        labels = []
        for label, name in enumerate(folders):
            folder = self.root / name
            if not folder.is_dir():
                raise ValueError(f"class folder {folder} (class {label}) does not exist")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            self.paths += files
            labels += [label] * len(files)
        if not self.paths:
            raise ValueError(f"{self.root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.labels = torch.tensor(labels, dtype=torch.long)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def item(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            array = adm_center_crop(image, self.image_size)
        x = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0
        return x, int(self.labels[index])


class _FolderTrainingData:
    """Pixel training straight from the folder (decoding every drawn image: for small folders; cache
    latents for large ones)."""

    def __init__(self, folder: ImageFolder) -> None:
        self.folder = folder

    def batch(self, batch_size: int, generator: torch.Generator, rows: slice) -> dict[str, Tensor]:
        index = torch.randint(0, len(self.folder), (batch_size,), generator=generator)[rows]
        items = [self.folder.item(int(i)) for i in index]
        return {"x0": torch.stack([x for x, _ in items]), "labels": torch.tensor([y for _, y in items])}


def image_folder_dataset(root: str, image_size: int = 256, class_index: str | None = None) -> Dataset:
    """The registry entry ``image_folder``.

    Args:
        root: the folder holding one sub-folder of images per class.
        image_size: S, the side of the ADM centre crop.
        class_index: a class-index file (``LOC_synset_mapping.txt`` lines or a JSON {folder: id}); None:
            the sorted folder names.

    Returns:
        A :class:`~gmfm.data.base.Dataset` of (3, S, S) images in [-1, 1]; ``extra["source"]`` is the
        :class:`ImageFolder` (what ``gmfm cache-latents`` encodes).
    """
    folder = ImageFolder(root, image_size, class_index)
    return Dataset("image_folder", (3, image_size, image_size), folder.num_classes, _FolderTrainingData(folder),
                   {}, tuple(folder.class_names), {"source": folder})
