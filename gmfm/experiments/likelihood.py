"""The validation NLL of a GMFlow run in bits/dim (paper Table 3, App. A.4 Eq. 21): ``gmfm eval-nll``.

    NLL = 1 / (D ln 2) * E_{t ~ U(0, 1), x0, eps} [ -log q_theta(x0 | x_t) ],   x_t = (1 - t) x0 + t eps,

where q_theta(x0 | x_t) is the network's x0-GM (its u-GM through x0 = x_t - t u: per pixel a mixture with
the shared variance (t s)^2), a full density (with the 2 pi constants, no clamp of the std), and D = C H W.
This is the training loss at transition ratio 1 under uniform time sampling, as the paper notes. The
expectation is estimated with ``draws`` (t, eps) pairs per held-out image; t is drawn uniform on
[1e-4, 1] (the official ``forward_likelihood`` clamps t at 1e-4).

With the spectral prior (paper Eqs. 15-20), q is replaced by q_S(x0 | x_t) = q(x0 | x_t) N(z; 0,
diag(s_F)) / N(z; 0, I), where z are the orthonormal-FFT coefficients of the Knothe-Rosenblatt whitening of
x0 under q (unit Jacobian) and s_F the SpectrumMLP's power spectrum: the extra term is
sum_{c,h,w} [z^2 (1 / s_F - 1) + log s_F] / 2 (the training spectral loss, summed instead of averaged).

Image i's j-th draw comes from a generator seeded with (seed, i, j), and the sum over images is reduced over
processes: the result depends neither on the batch size nor on the number of processes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..math.containers import GaussianMixture
from ..math.flow import u_to_x0
from ..math.gm_ops import gm_nll, gm_to_iso_gaussian
from ..math.spectral import gm_to_gaussian_kr, spectral_coefficients
from ..math.validation import check_positive_int
from ..training.distributed import setup_distributed
from .run import TrainedModel, load_run

#: Smallest noise level drawn (the official ``forward_likelihood``).
MIN_T = 1e-4


@dataclass(frozen=True)
class NLLResult:
    """bits_per_dim: the time-averaged NLL; bits_per_dim_spectral: with the spectral prior (None without a
    spectrum net); num_images x draws: the Monte-Carlo sample; dims: D = C H W."""

    bits_per_dim: float
    bits_per_dim_spectral: float | None
    num_images: int
    draws: int
    dims: int
    split: str
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def draw_levels_and_noise(indices: range, draw: int, seed: int, event_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """(t (n,) uniform on [1e-4, 1], eps (n, C, H, W)) of images ``indices``, draw ``draw``: each image's from
    its own generator seeded with (seed, image, draw)."""
    levels, noise = [], []
    for i in indices:
        g = torch.Generator().manual_seed((seed * 1_000_003 + i) * 1_009 + draw)
        levels.append(MIN_T + (1 - MIN_T) * torch.rand((), generator=g, dtype=torch.float64))
        noise.append(torch.randn(event_shape, generator=g, dtype=torch.float64))
    return torch.stack(levels), torch.stack(noise)


def x0_gm_nll_nats(model: nn.Module, x0: Tensor, labels: Tensor | None, t: Tensor, noise: Tensor,
                   spectrum_net: nn.Module | None = None) -> tuple[Tensor, Tensor | None]:
    """-log q(x0 | x_t) per image in nats, (B,), and the spectral prior's extra term (B,) (None without a
    spectrum net), for given noise levels t (B,) and noise (B, C, H, W). Computed in float64."""
    x0, noise, t = x0.double(), noise.double(), t.double()
    x_t = (1 - t).reshape(-1, 1, 1, 1) * x0 + t.reshape(-1, 1, 1, 1) * noise
    u_gm = model(x_t.to(torch.float32), t.to(torch.float32), labels)
    if not isinstance(u_gm, GaussianMixture):
        raise ValueError("the validation NLL needs a model that predicts a Gaussian mixture (a GMFlow run)")
    x0_gm = u_to_x0(u_gm.to(torch.float64), x_t, t)
    channels = x0.shape[-3]
    pixels = gm_nll(x0_gm, x0, max_inv_std=math.inf) + 0.5 * channels * math.log(2 * math.pi)
    nats = pixels.flatten(1).sum(1)
    if spectrum_net is None:
        return nats, None
    log_power = spectrum_net(gm_to_iso_gaussian(x0_gm).to(torch.float32)).double()
    z = spectral_coefficients(gm_to_gaussian_kr(x0_gm, x0))
    prior = 0.5 * (z.square() * (torch.exp(-log_power) - 1) + log_power).flatten(1).sum(1)
    return nats, prior


@torch.no_grad()
def validation_nll(run: str | Path | TrainedModel, *, split: str = "test", draws: int = 1, seed: int = 0,
                   batch_size: int = 250, spectral: bool = True, use_ema: bool = True, device: str = "auto",
                   progress: bool = True) -> NLLResult | None:
    """The time-averaged NLL (bits/dim) of a split of the run's dataset (see the module docstring), sharded
    over the processes under torchrun; the result on process 0 (None elsewhere).

    Args:
        run: a run folder, checkpoint or loaded :class:`TrainedModel` of a GMFlow run.
        split: the held-out split (e.g. "test", "val").
        draws: (t, eps) draws per image.
        spectral: also report the NLL with the spectral prior (when the run has a spectrum net).

    Raises:
        ValueError: a flow-matching run (no GM), a dataset without the split, bad numbers.
    """
    from .build import load_dataset

    check_positive_int("draws", draws)
    check_positive_int("batch_size", batch_size)
    dist = setup_distributed(device)
    trained = run if isinstance(run, TrainedModel) else load_run(run, use_ema=use_ema, device=dist.device)
    if trained.kind != "gmflow":
        raise ValueError(f"eval-nll needs a GMFlow run: {getattr(run, 'checkpoint', run)} is a flow-matching run (no "
                         "Gaussian mixture, no likelihood)")
    try:
        data = load_dataset(trained.recipe).split(split)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"eval-nll needs the run's held-out data: {str(err).splitlines()[0]}") from err
    model = trained.model.to(dist.device).eval()
    spectrum = trained.spectrum_net if spectral else None
    share = math.ceil(len(data) / dist.world_size)
    mine = range(dist.rank * share, min(len(data), (dist.rank + 1) * share))
    totals = torch.zeros(3, dtype=torch.float64)  # nats, spectral nats, count
    chunks = [range(s, min(s + batch_size, mine.stop)) for s in range(mine.start, mine.stop, batch_size)]
    bar = tqdm(total=len(chunks) * draws, desc="validation NLL", disable=not (progress and dist.is_main))
    for draw in range(draws):
        for rows in chunks:
            x0 = data.images[rows.start:rows.stop].to(dist.device)
            labels = data.labels[rows.start:rows.stop].to(dist.device) if (
                data.labels is not None and trained.num_classes) else None
            t, noise = draw_levels_and_noise(rows, draw, seed, tuple(x0.shape[1:]))
            nats, prior = x0_gm_nll_nats(model, x0, labels, t.to(dist.device), noise.to(dist.device), spectrum)
            totals[0] += float(nats.sum())
            totals[1] += float((nats + prior).sum()) if prior is not None else 0.0
            totals[2] += len(rows)
            bar.update()
    bar.close()
    totals = dist.all_sum(totals.to(dist.device)).cpu()
    if not dist.is_main:
        return None
    dims = math.prod(trained.event_shape)
    scale = 1.0 / (float(totals[2]) * dims * math.log(2))
    return NLLResult(float(totals[0]) * scale, float(totals[1]) * scale if spectrum is not None else None,
                     len(data), draws, dims, split, seed)
