"""A diffusers pipeline for class-conditional GM-DiT, reading the official Hugging Face layout.

    pipe = GMDiTPipeline.from_pretrained("path/to/gmflow_imagenet_k8_ema")   # a local folder
    ids = pipe.get_label_ids(["jay", "magpie"])
    images = pipe(ids, guidance_scale=0.45, num_inference_steps=8, num_inference_substeps=16,
                  output_mode="mean", generator=torch.Generator().manual_seed(0)).images

The folder holds ``model_index.json`` (with ``id2label``), ``transformer/``, ``spectrum_net/``,
``scheduler/`` and optionally ``vae/`` (without a VAE the model works in pixel space, values in [-1, 1]).
Components are loaded with gmfm's classes whatever library names the index records, so folders saved by
the official code load too. Sampling is :func:`gmfm.solvers.gmflow_sample`: nothing is kept between calls,
and the generator drives every random draw (initial noise, GM samples, SDE noise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from torch import Tensor

from ..math.random import randn
from ..models.gmdit import GMDiTTransformer2DModel, SpectrumMLP
from ..models.gmflow_model import GMFlowModel
from ..guidance import ProbabilisticGuidance
from ..solvers.gm_solver import gmflow_sample
from ..solvers.second_order import DEFAULT_COEFS
from ..solvers.schedulers import SCHEDULERS, FlowEulerODEScheduler, GMFlowSDEScheduler

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class GMDiTPipeline(DiffusionPipeline):
    """Class-conditional GMFlow sampling: GM-SDE (``output_mode="sample"``, with spectral sampling when a
    SpectrumMLP is present) or GM-ODE (``output_mode="mean"``), order 1 or 2, probabilistic guidance."""

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["spectrum_net", "vae"]

    def __init__(self, transformer: GMDiTTransformer2DModel, spectrum_net: SpectrumMLP | None,
                 scheduler: FlowEulerODEScheduler | GMFlowSDEScheduler, vae: Any,
                 id2label: dict[int | str, str] | None = None) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, spectrum_net=spectrum_net, vae=vae, scheduler=scheduler)
        self.register_to_config(id2label=id2label)
        self.labels: dict[str, int] = {}
        for key, value in (id2label or {}).items():
            for word in value.split(","):
                self.labels[word.strip()] = int(key)

    # ----- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, torch_dtype: torch.dtype | None = None,
                        variant: str | None = None, **kwargs: Any) -> GMDiTPipeline:
        """Load a local folder in the official layout (see the module docstring). Errors name the missing
        component or the mismatch."""
        root = Path(pretrained_model_name_or_path)
        index_path = root / "model_index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{root} is not a pipeline folder: {index_path} does not exist "
                                    "(download the checkpoint first; nothing is fetched at run time)")
        index = json.loads(index_path.read_text())
        for component in ("transformer", "scheduler"):
            if component not in index or not (root / component).is_dir():
                raise ValueError(f"{root}: the pipeline needs a '{component}' component (model_index.json entry "
                                 f"and {component}/ folder)")
        load = dict(torch_dtype=torch_dtype, variant=variant, low_cpu_mem_usage=False)
        transformer = _load_model(GMDiTTransformer2DModel, root / "transformer", load)

        def optional(name: str, model_class: Any) -> Any:
            if not index.get(name) or index[name][0] is None:
                return None
            if not (root / name).is_dir():
                raise ValueError(f"{root}: model_index.json lists {name} but {root / name} is missing")
            return _load_model(model_class, root / name, load)

        spectrum_net = optional("spectrum_net", SpectrumMLP)
        vae = optional("vae", AutoencoderKL)
        config_path = root / "scheduler" / "scheduler_config.json"
        if not config_path.is_file():
            raise ValueError(f"{root}: {config_path} is missing")
        scheduler_name = json.loads(config_path.read_text()).get("_class_name")
        if scheduler_name not in SCHEDULERS:
            raise ValueError(f"{config_path}: scheduler {scheduler_name!r} is not one of {sorted(SCHEDULERS)}")
        scheduler = SCHEDULERS[scheduler_name].from_pretrained(root / "scheduler")
        pipe = cls(transformer, spectrum_net, scheduler, vae, index.get("id2label"))
        if spectrum_net is not None and tuple(spectrum_net.config.base_size)[0] != transformer.out_channels:
            raise ValueError(f"{root}: spectrum_net has {spectrum_net.config.base_size[0]} channels, the "
                             f"transformer {transformer.out_channels}")
        return pipe

    # ----- labels ------------------------------------------------------------------------------------
    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class ids of label words (e.g. ImageNet names: 'jay', 'magpie')."""
        words = [label] if isinstance(label, str) else list(label)
        unknown = [w for w in words if w not in self.labels]
        if unknown:
            raise ValueError(f"unknown class words {unknown}; this pipeline knows {len(self.labels)} words "
                             f"(e.g. {sorted(self.labels)[:5]})")
        return [self.labels[w] for w in words]

    def _class_tensor(self, class_labels: Any, device: torch.device) -> Tensor:
        items = [class_labels] if isinstance(class_labels, (int, str)) else list(class_labels)
        ids = [self.get_label_ids(x)[0] if isinstance(x, str) else int(x) for x in items]
        num_classes = self.transformer.config.num_embeds_ada_norm
        bad = [i for i in ids if not 0 <= i < num_classes]
        if bad:
            raise ValueError(f"class_labels {bad} are out of range: the model has classes 0..{num_classes - 1}")
        if not ids:
            raise ValueError("class_labels must not be empty")
        return torch.tensor(ids, device=device)

    # ----- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str],
        guidance_scale: float = 0.45,
        num_inference_steps: int = 32,
        num_inference_substeps: int = 4,
        output_mode: str = "mean",
        order: int = 2,
        orthogonal_guidance: float = 1.0,
        gm2_coefs: tuple[float, float] = DEFAULT_COEFS,
        use_spectrum: bool = True,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        progress: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample one image per class label.

        Args:
            class_labels: class ids or label words (see :meth:`get_label_ids`).
            guidance_scale: probabilistic guidance w in [0, 1) (0: unguided, no unconditional pass).
            num_inference_steps, num_inference_substeps: network evaluations and GM-ODE substeps per step
                (GM-SDE uses 1 substep).
            output_mode: "mean" (GM-ODE) or "sample" (GM-SDE, spectral sampling when ``use_spectrum`` and
                the pipeline has a SpectrumMLP).
            order: 1 or 2; orthogonal_guidance: projection weight; gm2_coefs: 2nd-order damping (ca, cb).
            generator: drives every random draw. output_type: "pil", "np", "pt" (images in [0, 1]) or
                "latent" (the raw samples).
        """
        if output_mode not in ("mean", "sample"):
            raise ValueError(f"output_mode must be 'mean' (GM-ODE) or 'sample' (GM-SDE), got {output_mode!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        device = self._execution_device
        labels = self._class_tensor(class_labels, device)
        config = self.transformer.config
        shape = (len(labels), config.in_channels, config.sample_size, config.sample_size)
        noise = randn(shape, generator, torch.empty((), dtype=torch.float32, device=device))
        null = torch.full_like(labels, self.transformer.null_label)
        spectrum = self.spectrum_net if (output_mode == "sample" and use_spectrum) else None
        sample = gmflow_sample(
            GMFlowModel(self.transformer), noise, num_inference_steps,
            method="ode" if output_mode == "mean" else "sde",
            order=order,
            substeps=num_inference_substeps if output_mode == "mean" else 1,
            shift=self.scheduler.config.shift,
            condition=labels,
            uncond_condition=null,
            guidance=ProbabilisticGuidance(guidance_scale, orthogonal_guidance),
            second_order_coefs=tuple(gm2_coefs),
            spectrum=(lambda g: spectrum(g.to(spectrum.dtype))) if spectrum is not None else None,
            generator=generator,
            progress=progress,
        ).sample
        images = self._decode(sample, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _decode(self, sample: Tensor, output_type: str) -> Any:
        if output_type == "latent":
            return sample
        if self.vae is not None:
            sample = self.vae.decode((sample / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        images = (sample.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images.cpu()
        array = images.cpu().permute(0, 2, 3, 1).numpy()
        return array if output_type == "np" else self.numpy_to_pil(array)


def _load_model(cls, folder: Path, kwargs: dict):
    try:
        return cls.from_pretrained(folder, **{k: v for k, v in kwargs.items() if v is not None})
    except (OSError, EnvironmentError, RuntimeError, ValueError) as err:
        raise ValueError(f"{folder}: could not load {cls.__name__}: {err}") from err
