"""Evaluation at scale (``gmfm eval-images``): N samples of a trained image run, sharded over processes,
and FID / IS (torchmetrics, synchronised over processes) / precision / recall / saturation.

The sample set is fixed by (seed, N): sample i has class i mod num_classes and its own seeded
generators, so it does not depend on the batch size or the number of processes. Latent runs are decoded
with the VAE of their latent cache. Features come from an injectable extractor: by default the FID
Inception network of torch-fidelity through torchmetrics (weights read from a local file, nothing
downloaded); a class-conditional dataset with labels may use a small CNN trained on its own images
(``features="classifier"``, the MNIST benchmark's feature space).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..metrics.images import hsv_saturation, precision_recall
from ..training.distributed import Distributed
from .run import TrainedModel
from .sampling import SamplingPlan, sample_trained


def balanced_labels(num_samples: int, num_classes: int) -> Tensor:
    """Class i mod num_classes for sample i: every class equally often (N divisible by the classes)."""
    return torch.arange(num_samples) % num_classes


def decoder_of(trained: TrainedModel):
    """(vae folder, scaling factor) of a latent run, or None for a run in pixel space."""
    data = trained.checkpoint.metadata.get("dataset", {})
    extra = data.get("extra") or {}
    return (extra["vae"], float(extra["scaling_factor"])) if extra.get("vae") else None


@torch.no_grad()
def generate_shard(trained: TrainedModel, num_samples: int, dist: Distributed, plan: SamplingPlan, *,
                   seed: int = 0, batch_size: int = 125, progress: bool = False) -> tuple[range, Tensor]:
    """This process's share of the seeded sample set.

    Args:
        trained: a run (class-conditional: sample i has class i mod the number of classes).
        num_samples: N, the size of the whole set (split into contiguous shares over the processes).
        dist: this process's place in the run.
        plan: the sampling choices (:class:`gmfm.experiments.SamplingPlan`).
        seed: sample i is drawn with generators seeded by (seed, i).

    Returns:
        (the sample indices of this share, images (n, C, H, W) in about [-1, 1], decoded with the VAE of
        the latent cache for latent runs).
    """
    share = math.ceil(num_samples / dist.world_size)
    indices = range(dist.rank * share, min(num_samples, (dist.rank + 1) * share))
    if len(indices) == 0:
        return indices, torch.empty(0, *trained.event_shape)
    labels = balanced_labels(num_samples, trained.num_classes)[indices.start: indices.stop] \
        if trained.num_classes else None
    x = sample_trained(trained, plan=plan, labels=labels, num_samples=len(indices), seed=seed, first_index=indices.start,
                       per_sample_seeds=True, batch_size=batch_size, device=dist.device, progress=progress)
    decoder = decoder_of(trained)
    if decoder is not None:
        from .latents import decode_latents

        x = decode_latents(x, decoder[0], decoder[1], batch_size, dist.device)
    return indices, x


def to_uint8_rgb(images: Tensor) -> Tensor:
    """Images (N, C, H, W) in [-1, 1] -> uint8 RGB (N, 3, H, W) (grey repeated), as FID networks take them."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


@dataclass(frozen=True)
class EvalResult:
    num_samples: int
    fid: float
    inception_score: float
    precision: float
    recall: float
    saturation: float
    real_saturation: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _torchmetrics():
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore
    except ImportError as err:
        raise ValueError("evaluation needs torchmetrics: pip install 'gmfm[eval]'") from err
    return FrechetInceptionDistance, InceptionScore


def _inception_metrics(weights: str | Path | None) -> tuple[nn.Module, nn.Module]:
    """FID (2048 pool features) and IS (logits) of the FID Inception network, read from the local
    ``weights`` file (nothing is downloaded), resizing to 299 without antialiasing as the TF1 code of
    standard FID does, so that FIDs are comparable with published ones."""
    if weights is None or not Path(weights).is_file():
        raise ValueError("the default FID features need the Inception weights as a local file "
                         "(--inception-weights pt_inception-2015-12-05-6726825d.pth; nothing is downloaded)")
    FrechetInceptionDistance, InceptionScore = _torchmetrics()
    from torchmetrics.image import fid as tm_fid

    try:
        pool, logits = (tm_fid.NoTrainInceptionV3(name="inception-v3-compat", features_list=[feature],
                                                  feature_extractor_weights_path=str(weights), antialias=False)
                        for feature in ("2048", "logits_unbiased"))
    except ModuleNotFoundError as err:
        raise ValueError("the Inception features need torch-fidelity (pip install 'gmfm[eval]' on a torch install "
                         f"that includes torchvision): {err}") from err
    pool.num_features = 2048  # read by torchmetrics instead of a dummy forward pass
    return FrechetInceptionDistance(pool), InceptionScore(logits)


class FeatureMetrics:
    """FID and IS (torchmetrics metric objects: states summed over processes) plus the features of every
    image for precision / recall.

    Args:
        extractor: module mapping uint8 RGB images (N, 3, H, W) to features (N, D) (FID, P/R); None: the FID
            Inception network (torch-fidelity, ``inception_weights`` from a local file).
        logits: module mapping the same images to class logits (IS); None: the Inception logits when the
            default network is used, else no IS.
    """

    def __init__(self, extractor: nn.Module | None = None, logits: nn.Module | None = None,
                 inception_weights: str | Path | None = None, device: torch.device | str = "cpu") -> None:
        FrechetInceptionDistance, InceptionScore = _torchmetrics()
        if extractor is None:
            self.fid, self.inception = _inception_metrics(inception_weights)
        else:
            self.fid = FrechetInceptionDistance(extractor)
            self.inception = InceptionScore(logits) if logits is not None else None
        self.fid = self.fid.to(device)
        if self.inception is not None:
            self.inception = self.inception.to(device)
        self.device = device
        self.features = {True: [], False: []}
        self.saturation = {True: [], False: []}

    def update(self, images: Tensor, real: bool, fid: bool = True) -> None:
        """Add images (N, C, H, W) in [-1, 1] (real or generated); ``fid=False``: real images for precision /
        recall only (their FID statistics come from :meth:`set_real_statistics`)."""
        x = to_uint8_rgb(images).to(self.device)
        if fid:
            self.fid.update(x, real=real)
        self.features[real].append(self.fid.inception(x).double().reshape(len(x), -1).cpu())
        self.saturation[real].append(torch.tensor([hsv_saturation(x.float() / 255) * len(x), len(x)]))
        if not real and self.inception is not None:
            self.inception.update(x)

    def set_real_statistics(self, mean: np.ndarray, cov: np.ndarray, count: int) -> None:
        """Reference statistics only (an ADM batch without images): FID works, precision / recall do not."""
        mean_t, cov_t = torch.from_numpy(mean).double(), torch.from_numpy(cov).double()
        self.fid.real_features_sum = (mean_t * count).to(self.device)
        self.fid.real_features_cov_sum = (cov_t * (count - 1) + count * torch.outer(mean_t, mean_t)).to(self.device)
        self.fid.real_features_num_samples = torch.tensor(count, device=self.device)

    def compute(self, dist: Distributed) -> EvalResult:
        fid = float(self.fid.compute())
        score = float(self.inception.compute()[0]) if self.inception is not None else math.nan
        gathered = {}
        for real in (True, False):
            feats = torch.cat(self.features[real]) if self.features[real] else torch.empty(0)
            sat = torch.stack(self.saturation[real]).sum(0) if self.saturation[real] else torch.zeros(2)
            parts = dist.all_gather_object((feats, sat)) if dist.active else [(feats, sat)]
            gathered[real] = (torch.cat([p[0] for p in parts if p[0].numel()]) if any(p[0].numel() for p in parts)
                              else torch.empty(0), sum(p[1] for p in parts))
        (real_f, real_s), (fake_f, fake_s) = gathered[True], gathered[False]
        precision, recall = precision_recall(real_f, fake_f) if len(real_f) and len(fake_f) else (math.nan, math.nan)
        return EvalResult(int(fake_s[1]), fid, score, precision, recall, float(fake_s[0] / fake_s[1]),
                          float(real_s[0] / real_s[1]) if real_s[1] else math.nan)


def add_reference(metrics: FeatureMetrics, reference: str | Path | Tensor, dist: Distributed,
                  batch_size: int = 250) -> None:
    """Add the real images to ``metrics``, split over the processes.

    Args:
        metrics: the :class:`FeatureMetrics` to update.
        reference: a tensor (N, C, H, W) in [-1, 1], or an ADM reference batch ``.npz``. As ADM's
            evaluator: FID uses the batch's ``mu`` / ``sigma`` (statistics of the whole dataset) when it
            has them, and its images ``arr_0`` (uint8 (N, H, W, 3)) serve precision / recall; a batch with
            only images gives FID from them, one with only statistics FID alone.
        dist: this process's place in the run.
        batch_size: images per feature-network call.
    """
    fid_from_images = True
    if isinstance(reference, Tensor):
        images = reference
    else:
        path = Path(reference)
        if not path.is_file():
            raise FileNotFoundError(f"reference batch {path} does not exist")
        with np.load(path) as data:
            if not ("arr_0" in data.files or {"mu", "sigma"} <= set(data.files)):
                raise ValueError(f"{path} is not an ADM reference batch (needs arr_0, or mu and sigma)")
            images = (torch.from_numpy(data["arr_0"]).permute(0, 3, 1, 2).float() / 127.5 - 1
                      if "arr_0" in data.files else None)
            if {"mu", "sigma"} <= set(data.files):
                fid_from_images = False
                if dist.is_main:
                    metrics.set_real_statistics(data["mu"], data["sigma"], len(images) if images is not None
                                                else 10_000)
        if images is None:
            return
    share = math.ceil(len(images) / dist.world_size)
    for chunk in images[dist.rank * share: (dist.rank + 1) * share].split(batch_size):
        metrics.update(chunk, real=True, fid=fid_from_images)


class PixelFeatures(nn.Module):
    """Images pooled to 8 x 8 and flattened (192 features): a fast, dependency-free feature space for smoke
    tests and toy data (no IS)."""

    num_features = 3 * 8 * 8

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.adaptive_avg_pool2d(x.float() / 255, 8).flatten(1)


def _classifier_features(trained: TrainedModel, dataset) -> tuple[nn.Module, nn.Module]:
    """A small CNN trained on the dataset's training images: (features module, logits module) on uint8 RGB."""
    from ..metrics.images import train_classifier

    train_set = dataset.split("train")
    classifier = train_classifier(train_set.images.float(), train_set.labels)
    channels = train_set.images.shape[1]

    class Features(nn.Module):
        def __init__(self, head: bool) -> None:
            super().__init__()
            self.classifier, self.head = classifier, head
            self.num_features = classifier.head.out_features if head else classifier.head.in_features

        def forward(self, x: Tensor) -> Tensor:
            images = x.float()[:, :channels] / 127.5 - 1
            features = self.classifier.features(images)
            return self.classifier.head(features) if self.head else features

    return Features(False).eval(), Features(True).eval()


def real_images(trained: TrainedModel, split: str, batch_size: int = 125,
                device: str | torch.device = "cpu") -> Tensor:
    """The real images (N, C, H, W) in [-1, 1] of a split of the run's dataset: the images themselves for a
    run in pixel space; for a latent run, the source images of the split's latents (the cache records
    their source dataset), else, for caches that do not, the decoded latents."""
    from .build import load_dataset

    dataset = load_dataset(trained.recipe)
    split_set = dataset.split(split)
    decoder = decoder_of(trained)
    if decoder is None:
        return split_set.images.float()
    source_rows = dataset.extra.get("source_rows", {}).get(split)
    source = dataset.extra.get("source_dataset")
    if source_rows is not None and source is not None:
        from ..data.registry import make_dataset

        images = make_dataset(source["name"], **source.get("options", {})).extra["source"]
        return torch.stack([images.item(int(i))[0] for i in source_rows])
    from .latents import decode_latents

    return decode_latents(split_set.images.float(), decoder[0], decoder[1], batch_size, device)


def evaluate_run(run: str | Path, num_samples: int, *, solver: str | None = None, nfe: int | None = None,
                 guidance_options: tuple[float | None, float | None, float | None] = (None, None, None),
                 substeps: int | None = None, spectral: bool | None = None, seed: int = 0, batch_size: int = 125,
                 reference: str | Path | None = None, reference_split: str = "test", features: str = "inception",
                 inception_weights: str | Path | None = None, extractor: nn.Module | None = None,
                 logits: nn.Module | None = None, out: str | Path | None = None, save_samples: bool = False,
                 use_ema: bool = True, device: str = "auto", progress: bool = True) -> dict[str, Any] | None:
    """``gmfm eval-images``: generate the seeded sample set of ``run`` (sharded under torchrun), compute
    the metrics and write them (process 0) to ``out`` (JSON). Returns {"metrics", "plan", "path"} on
    process 0.

    The sampling choices (``solver``, ``nfe``, ``substeps``, ``spectral``, ``guidance_options`` = (guidance
    scale, orthogonal guidance, CFG scale); None: the recipe's) are settled by
    :meth:`gmfm.experiments.SamplingPlan.resolve`; the result file (default
    ``<run>/eval_<solver>_nfe<nfe>[_<guidance>]_n<N>_seed<seed>.json``) records the resolved plan.
    ``extractor`` / ``logits`` inject feature networks (tests, other feature spaces); otherwise ``features``
    picks the Inception network or a classifier trained on the run's dataset.
    """
    from ..training.distributed import setup_distributed
    from .build import load_dataset
    from .results import write_json
    from .run import load_run

    dist = setup_distributed(device)
    injected = extractor is not None
    trained = load_run(run, use_ema=use_ema, device=dist.device)
    pg, orth, cfg = guidance_options
    plan = SamplingPlan.resolve(trained, solver, nfe, substeps=substeps, guidance_scale=pg, orthogonal_guidance=orth,
                                cfg_scale=cfg, spectral=spectral)
    indices, images = generate_shard(trained, num_samples, dist, plan, seed=seed, batch_size=batch_size,
                                     progress=progress and dist.is_main)
    if extractor is None and features == "classifier":
        extractor, logits = _classifier_features(trained, load_dataset(trained.recipe))
    elif extractor is None and features == "pixels":
        extractor, logits = PixelFeatures(), None
    metrics = FeatureMetrics(extractor, logits, inception_weights, dist.device)
    add_reference(metrics, reference if reference is not None else
                  real_images(trained, reference_split, batch_size, dist.device), dist, batch_size)
    for chunk in images.split(batch_size):
        metrics.update(chunk, real=False)
    result = metrics.compute(dist)
    samples = dist.all_gather_object((indices.start, to_uint8_rgb(images))) if save_samples else None
    if not dist.is_main:
        return None
    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    path = Path(out) if out else folder / f"eval_{plan.tag()}_n{num_samples}_seed{seed}.json"
    payload = {"run": str(run), "num_samples": num_samples, **plan.describe(), "seed": seed,
               "reference": str(reference) if reference is not None else f"split {reference_split}",
               "processes": dist.world_size, "features": "injected" if injected else features,
               "metrics": result.as_dict()}
    write_json(path, payload)
    if samples is not None:
        ordered = torch.cat([x for _, x in sorted(samples, key=lambda p: p[0])])
        labels = balanced_labels(num_samples, trained.num_classes) if trained.num_classes else \
            torch.full((num_samples,), -1)
        np.savez_compressed(path.with_suffix(".npz"), samples=ordered.permute(0, 2, 3, 1).numpy(),
                            labels=labels.numpy())
    return {"metrics": result.as_dict(), "plan": plan, "path": path}
