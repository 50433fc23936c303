"""A small diffusers ``AutoencoderKL`` trained on an image dataset (``gmfm train-vae``): latents for the
latent-space experiments that run on a CPU (the paper works in the latents of SD's VAE).

The VAE is trained by the same loop as the flow models (locked run folder, verified checkpoints, exact
resume); the result is saved in the diffusers layout (``OUT/vae``), with ``scaling_factor`` set to 1 / the
std of the training latents, as SD's VAE config does, so cached latents have unit variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..data.base import Dataset
from ..losses.flow_losses import LossOutput, check_batch
from ..math.random import BatchDraws
from ..math.validation import check_float_in, check_positive_int
from ..training import TrainConfig, TrainResult, load_checkpoint, train


def small_vae_config(in_channels: int, latent_channels: int = 4, downsample: int = 4, width: int = 32) -> dict:
    """The config of a small diffusers AutoencoderKL.

    Args:
        in_channels: image channels; latent_channels: latent channels.
        downsample: 2^k, the spatial reduction (k + 1 blocks); width: channels of the first block (later
            blocks have twice as many).

    Returns:
        Keyword arguments of ``AutoencoderKL``.
    """
    check_positive_int("latent_channels", latent_channels)
    if downsample < 1 or downsample & (downsample - 1):
        raise ValueError(f"downsample must be a power of 2, got {downsample}")
    blocks = downsample.bit_length()  # 4 -> 3 blocks, 2 downsamplings
    widths = tuple(min(width * 2**i, 2 * width) for i in range(blocks))
    return dict(in_channels=in_channels, out_channels=in_channels, latent_channels=latent_channels,
                down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
                block_out_channels=widths, layers_per_block=1, norm_num_groups=min(16, width), scaling_factor=1.0)


@dataclass(frozen=True)
class VAELoss:
    """Reconstruction MSE of a posterior draw + ``kl_weight`` x the KL to N(0, I) (both means over
    elements); follows the :class:`gmfm.losses.Loss` contract, so the trainer runs it."""

    kl_weight: float = 1e-3

    def __post_init__(self) -> None:
        check_float_in("kl_weight", self.kl_weight, 0.0, 1e3)

    def __call__(self, model, batch: dict[str, Tensor], draws: BatchDraws | torch.Generator | None = None
                 ) -> LossOutput:
        x, _ = check_batch(batch)
        draws = BatchDraws.of(draws, x.shape[0])
        posterior = model.encode(x).latent_dist
        z = posterior.mean + posterior.std * draws.randn(posterior.mean.shape[1:], x)
        recon = (model.decode(z).sample - x).square().mean()
        kl = 0.5 * (posterior.mean.square() + posterior.var - 1.0 - posterior.logvar).mean()
        loss = recon + self.kl_weight * kl
        return LossOutput(loss, {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach()})


@torch.no_grad()
def latent_std(vae, images: Tensor, batch_size: int = 256) -> float:
    """Std of the posterior means of ``images`` (N, C, H, W): 1 / scaling_factor."""
    means = [vae.encode(chunk).latent_dist.mean for chunk in images.split(batch_size)]
    return float(torch.cat(means).std())


def train_vae(dataset: Dataset, out_dir: str | Path, config: TrainConfig, *, latent_channels: int = 4,
              downsample: int = 4, width: int = 32, kl_weight: float = 1e-3, progress: bool = True) -> Path:
    """Train a small AutoencoderKL on ``dataset``'s training images.

    Args:
        dataset: an image dataset (its ``train`` data and "train" split).
        out_dir: the run folder (checkpoint, logs; the VAE goes to ``out_dir/vae``).
        config: the optimisation settings.
        latent_channels, downsample, width: see :func:`small_vae_config`; kl_weight: see :class:`VAELoss`.

    Returns:
        The diffusers folder ``out_dir/vae``, with ``scaling_factor`` = 1 / the std of the training latents.
    """
    from diffusers import AutoencoderKL

    out = Path(out_dir)
    vae_config = small_vae_config(dataset.event_shape[0], latent_channels, downsample, width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        vae = AutoencoderKL(**vae_config)
    settings = {"vae": {k: list(v) if isinstance(v, tuple) else v for k, v in vae_config.items()},
                "kl_weight": kl_weight, "dataset": dataset.name, "batch_size": config.batch_size, "lr": config.lr}
    result: TrainResult = train(vae, VAELoss(kl_weight), dataset.train, config, out, settings=settings,
                                metadata={"model": {"class": "AutoencoderKL"}}, progress=progress)
    if result.rank != 0:
        return out / "vae"
    trained = AutoencoderKL(**vae_config)
    ckpt = load_checkpoint(out / "checkpoint.safetensors")
    ckpt.load_into(trained, "ema" if ckpt.state_dict("ema") else "model")
    trained.eval()
    source = dataset.split("train") if "train" in dataset.splits else None
    if source is not None:
        sample = source.images[: min(len(source), 2048)].float()
        trained.register_to_config(scaling_factor=1.0 / latent_std(trained, sample))
    trained.save_pretrained(out / "vae")
    return out / "vae"


def vae_train_config(iterations: int = 3000, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                     device: str = "auto") -> TrainConfig:
    """The small VAE's optimisation settings (``gmfm train-vae``): Adam, 100 warm-up iterations, a short
    Karras EMA (gamma 30), five checkpoints and thirty log rows over the run."""
    return TrainConfig(iterations=iterations, batch_size=batch_size, lr=lr, optimizer="adam", warmup_iters=100,
                       ema="karras", ema_gamma=30.0, seed=seed, checkpoint_every=max(1, iterations // 5),
                       log_every=max(1, iterations // 30), device=device)
