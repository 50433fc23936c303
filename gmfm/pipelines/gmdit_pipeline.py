"""A diffusers pipeline for class-conditional GM-DiT, reading the official Hugging Face layout.

    pipe = GMDiTPipeline.from_pretrained("path/to/gmflow_imagenet_k8_ema")   # a local folder
    pipe.scheduler = FlowEulerODEScheduler.from_config(pipe.scheduler.config)  # GM-ODE
    images = pipe(pipe.get_label_ids(["jay", "magpie"]), guidance_scale=0.45, generator=torch.manual_seed(0),
                  num_inference_steps=8, num_inference_substeps=16, output_mode="mean").images

The folder holds ``model_index.json`` (with ``id2label``), ``transformer/``, ``spectrum_net/``,
``scheduler/`` and optionally ``vae/`` (without a VAE the model works in its data space, values in
[-1, 1]). Loading is diffusers' own :meth:`DiffusionPipeline.from_pretrained` (component overrides,
``torch_dtype``, ``variant`` with fallback to the plain files, warnings for unknown keywords); the class
names the official code records (``lib.models...`` ``_GMDiTTransformer2DModel``, ``_SpectrumMLP``,
``GMFlowSDEScheduler``, ``FlowEulerODEScheduler``) are read as gmfm's classes. Nothing is downloaded.

Sampling, as the official pipeline: each of ``num_inference_steps`` steps evaluates the network once
(on the doubled [cond; null] batch under guidance), guides and 2nd-order-corrects its x0-GM
(:func:`gmfm.solvers.gm_solver.predict_step`), then takes ``num_inference_substeps`` scheduler steps, each
given an x0 of that GM re-conditioned on the current point: its mean (``output_mode="mean"``) or a draw
(``"sample"``, spectrally correlated when the pipeline has a SpectrumMLP). The scheduler decides the
step: :class:`FlowEulerODEScheduler` + "mean" is GM-ODE, :class:`GMFlowSDEScheduler` + "sample" is GM-SDE,
:class:`GMFlowSDEScheduler` + "mean" a DDPM-like step on the GM mean with its config's variance.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.models import AutoencoderKL
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils import is_accelerate_available
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from ..guidance import ProbabilisticGuidance
from ..math.random import check_generators
from ..math.validation import check_positive_int
from ..models.gmdit import GMDiTTransformer2DModel, SpectrumMLP
from ..models.gmflow_model import GMFlowModel
from ..solvers.gm_solver import guided_condition, predict_step
from ..solvers.second_order import DEFAULT_COEFS, SecondOrderState, check_second_order_coefs
from .schedulers import FlowEulerODEScheduler, GMFlowSDEScheduler

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
OUTPUT_MODES = ("mean", "sample", "policy")

#: The classes an official ``model_index.json`` names (under the official ``lib.`` package), read as gmfm's.
OFFICIAL_CLASSES: dict[str, type] = {
    "_GMDiTTransformer2DModel": GMDiTTransformer2DModel,
    "GMDiTTransformer2DModel": GMDiTTransformer2DModel,
    "_SpectrumMLP": SpectrumMLP,
    "SpectrumMLP": SpectrumMLP,
    "GMFlowSDEScheduler": GMFlowSDEScheduler,
    "FlowEulerODEScheduler": FlowEulerODEScheduler,
}
_OFFICIAL_PACKAGE = "lib"


def _is_official_library(library: object) -> bool:
    return isinstance(library, str) and (library == _OFFICIAL_PACKAGE or library.startswith(_OFFICIAL_PACKAGE + "."))


def map_official_components(config: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the ``[library, class]`` entries of a ``model_index.json`` that name the official code as
    gmfm's module and class (in place; returns ``config``). An official class gmfm does not provide is an
    error naming the component."""
    for name, value in config.items():
        if name.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        library, class_name = value
        if not _is_official_library(library):
            continue
        cls = OFFICIAL_CLASSES.get(class_name)
        if cls is None:
            raise ValueError(f"model_index.json: component {name!r} is the official {library}.{class_name}, which "
                             f"gmfm does not provide (it reads {sorted(OFFICIAL_CLASSES)})")
        config[name] = [cls.__module__, cls.__name__]
    return config


class SamplingState:
    """diffusers' pipeline state of the last call, shared by the GMFlow pipelines."""

    _num_timesteps = 0
    _interrupt = False

    @property
    def num_timesteps(self) -> int:
        """Network evaluations of the last call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set by a ``callback_on_step_end`` (``pipe._interrupt = True``) to stop after the current step."""
        return self._interrupt


class GMDiTPipeline(SamplingState, DiffusionPipeline):
    """Class-conditional GMFlow sampling with GM-DiT: GM-ODE or GM-SDE, order 1 or 2, probabilistic guidance.

    Args:
        transformer: the u-GM network; class ``num_embeds_ada_norm`` is the null (unconditional) class.
        spectrum_net: predicts the power spectrum of GM-SDE samples (``output_mode="sample"``); None draws
            every pixel independently.
        scheduler: :class:`FlowEulerODEScheduler` or :class:`GMFlowSDEScheduler` (see the module docstring).
        vae: decodes latents to images; None: the model works in its data space ([-1, 1]).
        id2label: class id (a string or an int) -> comma-separated label words (for :meth:`get_label_ids`).
    """

    model_cpu_offload_seq = "transformer->spectrum_net->vae"
    _optional_components = ["spectrum_net", "vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, transformer: GMDiTTransformer2DModel, spectrum_net: SpectrumMLP | None,
                 scheduler: FlowEulerODEScheduler | GMFlowSDEScheduler, vae: AutoencoderKL | None,
                 id2label: dict[str, str] | None = None) -> None:
        super().__init__()
        _check_scheduler(scheduler)
        if spectrum_net is not None and tuple(spectrum_net.config.base_size)[0] != transformer.out_channels:
            raise ValueError(f"spectrum_net has {spectrum_net.config.base_size[0]} channels, the transformer "
                             f"{transformer.out_channels}")
        if vae is not None and vae.config.latent_channels != transformer.out_channels:
            raise ValueError(f"vae has {vae.config.latent_channels} latent channels, the transformer "
                             f"{transformer.out_channels}")
        self.register_modules(transformer=transformer, spectrum_net=spectrum_net, vae=vae, scheduler=scheduler)
        self.register_to_config(id2label=id2label)
        vae_scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=vae_scale)
        self.labels: dict[str, int] = {}
        for key, value in (id2label or {}).items():
            for word in value.split(","):
                self.labels[word.strip()] = int(key)
        self.labels = dict(sorted(self.labels.items()))
        self._num_timesteps = 0
        self._interrupt = False

    # ----- loading -----------------------------------------------------------------------------------
    @classmethod
    def load_config(cls, *args: Any, **kwargs: Any) -> Any:
        """diffusers' ``load_config``, with the official component classes read as gmfm's
        (:func:`map_official_components`)."""
        loaded = super().load_config(*args, **kwargs)
        map_official_components(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> GMDiTPipeline:
        """Load a local pipeline folder with diffusers' :meth:`DiffusionPipeline.from_pretrained` (every
        keyword of it works: ``torch_dtype``, ``variant``, component overrides such as ``scheduler=``).

        Raises:
            FileNotFoundError: the folder has no ``model_index.json`` (gmfm never downloads).
            ValueError: a component listed in ``model_index.json`` has no folder.
        """
        root = Path(pretrained_model_name_or_path)
        index_path = root / "model_index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{root} is not a pipeline folder: {index_path} does not exist "
                                    "(download the checkpoint first; nothing is fetched at run time)")
        index = json.loads(index_path.read_text())
        for name, value in index.items():
            listed = isinstance(value, list) and len(value) == 2 and value[0] is not None
            if listed and not name.startswith("_") and name not in kwargs and not (root / name).is_dir():
                raise ValueError(f"{root}: model_index.json lists {name} but {root / name} is missing")
        if not is_accelerate_available():  # what diffusers falls back to anyway, without its warning
            kwargs.setdefault("low_cpu_mem_usage", False)
        return super().from_pretrained(str(root), **kwargs)

    # ----- labels ------------------------------------------------------------------------------------
    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class ids of label words (e.g. ImageNet names: 'jay', 'magpie')."""
        words = [label] if isinstance(label, str) else list(label)
        unknown = [w for w in words if w not in self.labels]
        if unknown:
            raise ValueError(f"unknown class words {unknown}; this pipeline knows {len(self.labels)} words "
                             f"(e.g. {list(self.labels)[:5]})")
        return [self.labels[w] for w in words]

    def _class_tensor(self, class_labels: Any, device: torch.device) -> Tensor:
        """class_labels (ids or words) -> (B,) int64; anything else is a ValueError naming class_labels."""
        if isinstance(class_labels, (Tensor, np.ndarray)):
            if class_labels.ndim > 1 or not _is_integer_dtype(class_labels.dtype):
                raise ValueError(f"class_labels must be integer class ids (or label words), got a "
                                 f"{type(class_labels).__name__} of dtype {class_labels.dtype} and shape "
                                 f"{tuple(class_labels.shape)}")
            items: list[Any] = [int(v) for v in class_labels.reshape(-1).tolist()]
        elif isinstance(class_labels, (str, numbers.Integral)) and not isinstance(class_labels, bool):
            items = [class_labels]
        elif isinstance(class_labels, Sequence):
            items = list(class_labels)
        else:
            raise ValueError(f"class_labels must be class ids or label words, got {type(class_labels).__name__}")
        bad = [x for x in items if isinstance(x, bool) or not isinstance(x, (str, numbers.Integral))]
        if bad:
            raise ValueError(f"class_labels must be integer class ids or label words, got {bad} "
                             f"({type(bad[0]).__name__})")
        if not items:
            raise ValueError("class_labels must not be empty")
        ids = [self.get_label_ids(x)[0] if isinstance(x, str) else int(x) for x in items]
        num_classes = self.transformer.config.num_embeds_ada_norm
        out_of_range = [i for i in ids if not 0 <= i < num_classes]
        if out_of_range:
            raise ValueError(f"class_labels {out_of_range} are out of range: the model has classes "
                             f"0..{num_classes - 1}")
        return torch.tensor(ids, dtype=torch.long, device=device)

    # ----- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str] | Tensor,
        guidance_scale: float = 0.45,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 32,
        num_inference_substeps: int = 4,
        output_mode: str = "mean",
        order: int = 2,
        orthogonal_guidance: float = 1.0,
        gm2_coefs: Sequence[float] = DEFAULT_COEFS,
        gm2_correction_steps: int = 0,
        output_type: str = "pil",
        return_dict: bool = True,
        num_images_per_prompt: int = 1,
        latents: Tensor | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        policy_substeps: int = 128,
        final_step_size_scale: float = 1.0,
        temperature: float | str = "auto",
    ) -> ImagePipelineOutput | tuple:
        """Sample ``num_images_per_prompt`` images per class label.

        Args:
            class_labels: class ids or label words (see :meth:`get_label_ids`), B of them.
            guidance_scale: probabilistic guidance w in [0, 1) (0: unguided, no unconditional pass).
            generator: one generator, or a list of B * ``num_images_per_prompt`` (one per image: image i
                then depends on generator i only). It draws x_T (diffusers' ``randn_tensor``), GM samples and
                the scheduler's noise, in that order per step.
            num_inference_steps: network evaluations N.
            num_inference_substeps: scheduler steps per evaluation (the scheduler runs N * substeps steps).
            output_mode: the x0 each scheduler step is given: "mean" of the step's x0-GM (GM-ODE with
                :class:`FlowEulerODEScheduler`) or "sample", a draw of it (GM-SDE with
                :class:`GMFlowSDEScheduler`; spectral sampling when the pipeline has a SpectrumMLP).
            order: 1, or 2 for the 2nd-order GM correction.
            orthogonal_guidance: weight in [0, 1] of the projection removing the guidance bias along the mean.
            gm2_coefs: (ca, cb) damping coefficients of the 2nd-order correction.
            gm2_correction_steps: the official extra loop refining the 2nd-order correction so that the
                corrected GM's mean moves by exactly the damped 2nd-order difference (default 0: off).
            output_type: "pil", "np" (B, H, W, C) or "pt" (B, C, H, W), images in [0, 1]; or "latent": the
                final latents (B, C, h, w), not divided by the VAE's scaling factor.
            return_dict: return an :class:`ImagePipelineOutput` (else a 1-tuple).
            num_images_per_prompt: images per class label (consecutive in the output).
            latents: x_T (B * num_images_per_prompt, C, h, w) to start from instead of drawing it.
            callback_on_step_end: ``callback(pipe, step, timestep, callback_kwargs) -> dict`` called after
                every network step with the tensors named in ``callback_on_step_end_tensor_inputs``; a returned
                "latents" replaces the current one.
            callback_on_step_end_tensor_inputs: names from ``pipe._callback_tensor_inputs``.
            policy_substeps, final_step_size_scale, temperature: ``output_mode="policy"`` only: a pi-Flow
                student (``gmfm distill``) samples in ``num_inference_steps`` network calls, each policy
                integrated with ``policy_substeps`` Euler substeps per unit time (see
                :func:`gmfm.solvers.piflow_sample`); the scheduler gives the time shift; no guidance (the
                teacher's is built into the student).

        Returns:
            :class:`ImagePipelineOutput` with ``images``, or ``(images,)``.
        """
        _check_scheduler(self.scheduler)
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES} ('mean': GM-ODE with FlowEulerODEScheduler, "
                             f"'sample': GM-SDE with GMFlowSDEScheduler), got {output_mode!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        check_positive_int("num_inference_steps", num_inference_steps)
        check_positive_int("num_inference_substeps", num_inference_substeps)
        check_positive_int("num_images_per_prompt", num_images_per_prompt)
        if order not in (1, 2) or isinstance(order, bool):
            raise ValueError(f"order must be 1 or 2, got {order!r}")
        coefs = check_second_order_coefs(gm2_coefs)
        if isinstance(gm2_correction_steps, bool) or not isinstance(gm2_correction_steps, int) \
                or gm2_correction_steps < 0:
            raise ValueError(f"gm2_correction_steps must be an integer >= 0, got {gm2_correction_steps!r}")
        guidance = ProbabilisticGuidance(guidance_scale, orthogonal_guidance)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, "
                             f"got {unknown}")

        device = self._execution_device
        labels = self._class_tensor(class_labels, device).repeat_interleave(num_images_per_prompt)
        batch = labels.shape[0]
        generator = check_generators(generator, batch)
        x = self._initial_latents(latents, batch, generator, device)

        denoiser = GMFlowModel(self.transformer)
        if output_mode == "policy":
            x = policy_sample(self, denoiser, x, num_inference_steps, labels, guidance, policy_substeps,
                              final_step_size_scale, temperature)
            return self._finish(x, output_type, return_dict)
        guidance, condition = guided_condition(guidance, labels, torch.full_like(labels, self.transformer.null_label),
                                               batch)
        x = scheduler_loop(self, denoiser, x, num_inference_steps, num_inference_substeps, output_mode, order,
                           condition=condition, guidance=guidance, coefs=coefs, correction_steps=gm2_correction_steps,
                           generator=generator, spectrum=self.spectrum_net if output_mode == "sample" else None,
                           callback=callback_on_step_end, callback_inputs=callback_on_step_end_tensor_inputs)
        return self._finish(x, output_type, return_dict)

    def _finish(self, x: Tensor, output_type: str, return_dict: bool) -> ImagePipelineOutput | tuple:
        images = self._decode(x, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _initial_latents(self, latents: Tensor | None, batch: int, generator: Any, device: torch.device) -> Tensor:
        config = self.transformer.config
        if latents is None:
            shape = (batch, config.in_channels, config.sample_size, config.sample_size)
            return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        if not isinstance(latents, Tensor) or latents.dim() != 4 or latents.shape[:2] != (batch, config.in_channels):
            raise ValueError(f"latents must be a ({batch}, {config.in_channels}, H, W) tensor (one x_T per image), "
                             f"got {tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__}")
        return latents.to(device=device, dtype=torch.float32)

    def _decode(self, latents: Tensor, output_type: str) -> Any:
        if output_type == "latent":
            return latents
        if self.vae is not None:
            z = latents / self.vae.config.scaling_factor
            if getattr(self.vae.config, "shift_factor", None) is not None:
                z = z + self.vae.config.shift_factor
            images = self.vae.decode(z.to(self.vae.dtype)).sample
        else:
            images = latents
        return self.image_processor.postprocess(images, output_type=output_type)


def policy_sample(pipe: DiffusionPipeline, denoiser: Any, x: Tensor, nfe: int, condition: Any, guidance: Any,
                  total_substeps: int, final_step_size_scale: float, temperature: float | str) -> Tensor:
    """pi-Flow sampling of a distilled student inside a pipeline (``output_mode="policy"``)."""
    from ..solvers.piflow import piflow_sample

    if guidance is not None and guidance.needs_uncond:
        raise ValueError("output_mode='policy' samples a pi-Flow student, whose teacher's guidance is built in: "
                         "use guidance_scale=0")
    pipe._num_timesteps = nfe
    return piflow_sample(denoiser, x, nfe, shift=float(pipe.scheduler.config.shift), total_substeps=total_substeps,
                         final_step_size_scale=final_step_size_scale, temperature=temperature, condition=condition)


def scheduler_loop(pipe: DiffusionPipeline, denoiser: Any, x: Tensor, steps: int, substeps: int, output_mode: str,
                   order: int, *, condition: Any = None, guidance: Any = None,
                   coefs: tuple[float, float] = DEFAULT_COEFS, correction_steps: int = 0, generator: Any = None,
                   spectrum: Any = None, callback: Any = None, callback_inputs: Sequence[str] = ()) -> Tensor:
    """The official sampling loop of a GMFlow pipeline, driven by ``pipe.scheduler`` (see the module
    docstring): ``steps`` network evaluations, each followed by ``substeps`` scheduler steps given the mean
    ("mean") or a draw ("sample") of the step's x0-GM re-conditioned on the current point.

    Args:
        pipe: the pipeline (its scheduler, progress bar, interrupt flag and ``_num_timesteps``).
        denoiser: ``(x_t, sigma, condition) -> u-GM``.
        x: x_T (B, C, H, W), float32.
        condition: the (doubled, under guidance) condition of the denoiser; guidance: an active guidance.

    Returns:
        The final sample (B, C, H, W).
    """
    pipe.scheduler.set_timesteps(steps * substeps, device=x.device)
    timesteps = pipe.scheduler.timesteps
    sigmas = pipe.scheduler.sigmas.tolist()
    if len(timesteps) != steps * substeps:
        raise ValueError(f"the scheduler set {len(timesteps)} timesteps for {steps * substeps} steps")
    previous: SecondOrderState | None = None
    pipe._num_timesteps = steps
    pipe._interrupt = False
    with pipe.progress_bar(total=steps) as progress_bar:
        for i in range(steps):
            if pipe.interrupt:
                break
            first = i * substeps
            prediction, previous = predict_step(
                denoiser, x, sigmas[first], sigmas[first + substeps], condition=condition, guidance=guidance,
                order=order, previous=previous, second_order_coefs=coefs, second_order_refinement=correction_steps,
                step=i)
            for j in range(substeps):
                sigma = sigmas[first + j]
                x0 = prediction.mean_at(x, sigma) if output_mode == "mean" else \
                    prediction.sample_at(x, sigma, generator, spectrum)
                x = pipe.scheduler.step(x0, timesteps[first + j], x, generator=generator, return_dict=False,
                                        prediction_type="x0")[0]
            if callback is not None:
                tensors = {"latents": x}
                outputs = callback(pipe, i, timesteps[first], {k: tensors[k] for k in callback_inputs}) or {}
                x = outputs.pop("latents", x)
            progress_bar.update()
    return x


def _check_scheduler(scheduler: object) -> None:
    """The pipeline drives the two GMFlow schedulers (their ``step`` takes an x0); any other is refused."""
    if isinstance(scheduler, (GMFlowSDEScheduler, FlowEulerODEScheduler)):
        return
    raise ValueError(f"GMDiTPipeline cannot drive a {type(scheduler).__name__}: use FlowEulerODEScheduler (GM-ODE "
                     "with output_mode='mean') or GMFlowSDEScheduler (GM-SDE with output_mode='sample'), e.g. "
                     "pipe.scheduler = FlowEulerODEScheduler.from_config(pipe.scheduler.config)")


def _is_integer_dtype(dtype: Any) -> bool:
    if isinstance(dtype, torch.dtype):
        return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool
    return np.issubdtype(dtype, np.integer)
