"""Encode an image dataset into a latent cache with a diffusers ``AutoencoderKL`` (``gmfm cache-latents``).

The VAE is loaded from a local folder (the ``stabilityai/sd-vae-ft-ema`` layout: ``config.json`` +
weights; nothing is downloaded). Under torchrun every process encodes a contiguous share of the images
into its own shard; process 0 then joins the shards into the memory-mappable cache that
:func:`gmfm.data.latents.latent_dataset` reads. As in the official pipeline, each image is flipped
horizontally with probability 1/2 (``flip="random"``; "none" or "both" also) and its latent is a draw
of the VAE posterior times the scaling factor. Every random choice is seeded by the image index, so the
cache does not depend on the number of processes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.base import Dataset, ImageSource
from ..data.latents import INDEX_NAME
from ..training.distributed import Distributed, setup_distributed

FLIPS = ("random", "none", "both")


def load_vae(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A diffusers AutoencoderKL from a local folder (frozen, eval mode).

    Args:
        folder: holds ``config.json`` and the weights (the ``stabilityai/sd-vae-ft-ema`` layout).
        device, dtype: where and in which precision the VAE runs.

    Raises:
        FileNotFoundError: the folder has no ``config.json``. ValueError: it does not load.
    """
    from diffusers import AutoencoderKL

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a VAE folder: {folder / 'config.json'} does not exist "
                                "(download e.g. stabilityai/sd-vae-ft-ema beforehand; nothing is fetched at run time)")
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), torch_dtype=dtype, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"could not load an AutoencoderKL from {folder}: {str(err).splitlines()[0]}") from err
    return vae.to(device).eval().requires_grad_(False)


def _index_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


@torch.no_grad()
def cache_latents(dataset: Dataset, vae_folder: str | Path, out_dir: str | Path, *, batch_size: int = 32,
                  flip: str = "random", seed: int = 0, dtype: str = "float16", device: str = "auto",
                  progress: bool = True, dataset_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Encode ``dataset.extra["source"]`` (an :class:`ImageSource`) into ``out_dir``; returns the index.

    Args:
        flip: "random" (each image flipped with probability 1/2, official), "none", or "both" (the image
            and its mirror: twice the latents).
        dtype: storage dtype of the latents ("float16" or "float32").
        dataset_options: the registry options ``dataset`` was made with; recorded in the index, so that an
            evaluation can compare samples with the real source images of held-out latents.
    """
    source: ImageSource | None = dataset.extra.get("source")
    if source is None:
        raise ValueError(f"dataset {dataset.name!r} has no images to encode")
    if flip not in FLIPS:
        raise ValueError(f"flip must be one of {FLIPS}, got {flip!r}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    dist = setup_distributed(device)
    out = Path(out_dir)
    if dist.is_main:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    vae = load_vae(vae_folder, dist.device)
    channels = dataset.event_shape[0]
    if vae.config.in_channels != channels:
        raise ValueError(f"the VAE takes {vae.config.in_channels} channels, the dataset's images have {channels}")
    scaling = float(vae.config.scaling_factor)
    copies = 2 if flip == "both" else 1
    total = len(source) * copies
    share = math.ceil(total / dist.world_size)
    start, stop = dist.rank * share, min(total, (dist.rank + 1) * share)
    latents, labels = [], []
    bar = tqdm(range(start, stop, batch_size), disable=not (progress and dist.is_main), desc="encoding")
    for first in bar:
        items = []
        for k in range(first, min(stop, first + batch_size)):
            image, label = source.item(k // copies)
            mirrored = (k % copies == 1) if flip == "both" else \
                (flip == "random" and bool(torch.rand((), generator=_index_generator(seed, k)) < 0.5))
            items.append((image.flip(-1) if mirrored else image, label))
        x = torch.stack([i for i, _ in items]).to(dist.device, vae.dtype)
        posterior = vae.encode(x).latent_dist
        noise = torch.stack([torch.randn(posterior.mean.shape[1:], generator=_index_generator(seed + 1, k))
                             for k in range(first, first + len(items))]).to(posterior.mean)
        z = (posterior.mean + posterior.std * noise) * scaling
        latents.append(z.to(getattr(torch, dtype)).cpu())
        labels.append(torch.tensor([y for _, y in items]))
    shard = out / f".shard-{dist.rank:05d}"
    z_all = torch.cat(latents) if latents else torch.empty(0)
    np.save(f"{shard}-latents.npy", z_all.numpy())
    np.save(f"{shard}-labels.npy", (torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)).numpy())
    dist.barrier()
    index: dict[str, Any] = {}
    if dist.is_main:
        index = _join_shards(out, dist, total, dataset, vae_folder, scaling, flip, seed, dtype, dataset_options)
    dist.barrier()
    return dist.broadcast_object(index)


def _join_shards(out: Path, dist: Distributed, total: int, dataset: Dataset, vae_folder: str | Path, scaling: float,
                 flip: str, seed: int, dtype: str, dataset_options: dict[str, Any] | None) -> dict[str, Any]:
    shards = [out / f".shard-{r:05d}" for r in range(dist.world_size)]
    parts = [np.load(f"{s}-latents.npy", mmap_mode="r") for s in shards]
    parts = [p for p in parts if p.size]
    shape = tuple(parts[0].shape[1:])
    joined = np.lib.format.open_memmap(out / ".latents.npy.tmp", mode="w+", dtype=parts[0].dtype,
                                       shape=(total, *shape))
    row = 0
    for p in parts:
        joined[row: row + len(p)] = p
        row += len(p)
    joined.flush()
    del joined
    labels = np.concatenate([np.load(f"{s}-labels.npy") for s in shards])
    np.save(out / ".labels.npy.tmp.npy", labels)
    os.replace(out / ".latents.npy.tmp", out / "latents.npy")
    os.replace(out / ".labels.npy.tmp.npy", out / "labels.npy")
    for s in shards:
        Path(f"{s}-latents.npy").unlink()
        Path(f"{s}-labels.npy").unlink()
    index = {"count": total, "latent_shape": list(shape), "num_classes": dataset.num_classes,
             "class_names": list(dataset.class_names), "vae": str(Path(vae_folder).resolve()),
             "scaling_factor": scaling, "dtype": dtype, "flip": flip, "seed": seed,
             "source": {"dataset": dataset.name, "images": len(dataset.extra["source"]),
                        "image_shape": list(dataset.event_shape),
                        **({"options": dict(dataset_options)} if dataset_options is not None else {})},
             "processes": dist.world_size}
    tmp = out / f".{INDEX_NAME}.tmp"
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, out / INDEX_NAME)
    return index


@torch.no_grad()
def decode_latents(latents: torch.Tensor, vae_folder: str | Path, scaling_factor: float, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Decode cached latents.

    Args:
        latents: (N, C, h, w), multiplied by the scaling factor as cached.
        vae_folder: the VAE that encoded them; scaling_factor: its scaling factor.

    Returns:
        Images (N, C', H, W) in about [-1, 1], float32 on the CPU.
    """
    vae = load_vae(vae_folder, device)
    out = [vae.decode(chunk.to(device) / scaling_factor).sample.float().cpu() for chunk in latents.split(batch_size)]
    return torch.cat(out)
