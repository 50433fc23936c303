"""A diffusers pipeline for GM-UNet models (unconditional or class-conditional), called as diffusers'
``DDPMPipeline`` is:

    pipe = GMUNetPipeline.from_pretrained("runs/cifar10_gmflow/pipeline")
    images = pipe(batch_size=16, generator=torch.manual_seed(0), num_inference_steps=10).images

The folder holds ``model_index.json``, ``unet/`` (a :class:`gmfm.models.GMUNet2DModel`), ``scheduler/`` and
optionally ``spectrum_net/``. Sampling is the loop of :class:`gmfm.pipelines.GMDiTPipeline`
(:func:`gmfm.pipelines.gmdit_pipeline.scheduler_loop`): with the default :class:`GMFlowSDEScheduler` and
``output_mode="sample"`` it is GM-SDE (the paper's CIFAR-10 solver, App. B.3), with
:class:`FlowEulerODEScheduler` and ``output_mode="mean"`` GM-ODE.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils import is_accelerate_available
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from ..guidance import ProbabilisticGuidance
from ..math.random import check_generators
from ..math.validation import check_positive_int
from ..models.gmdit import SpectrumMLP
from ..models.gmflow_model import GMFlowModel
from ..models.unet import GMUNet2DModel
from ..solvers.gm_solver import guided_condition
from ..solvers.second_order import DEFAULT_COEFS, check_second_order_coefs
from .gmdit_pipeline import OUTPUT_MODES, OUTPUT_TYPES, SamplingState, _check_scheduler, policy_sample, scheduler_loop
from .schedulers import FlowEulerODEScheduler, GMFlowSDEScheduler


class GMUNetPipeline(SamplingState, DiffusionPipeline):
    """GMFlow sampling with a GM-UNet: GM-SDE or GM-ODE, order 1 or 2.

    Args:
        unet: the u-GM network.
        spectrum_net: predicts the power spectrum of GM-SDE samples; None draws every pixel independently.
        scheduler: :class:`GMFlowSDEScheduler` or :class:`FlowEulerODEScheduler`.
    """

    model_cpu_offload_seq = "unet->spectrum_net"
    _optional_components = ["spectrum_net"]

    def __init__(self, unet: GMUNet2DModel, spectrum_net: SpectrumMLP | None,
                 scheduler: FlowEulerODEScheduler | GMFlowSDEScheduler) -> None:
        super().__init__()
        _check_scheduler(scheduler)
        if spectrum_net is not None and tuple(spectrum_net.config.base_size)[0] != unet.config.in_channels:
            raise ValueError(f"spectrum_net has {spectrum_net.config.base_size[0]} channels, the unet "
                             f"{unet.config.in_channels}")
        self.register_modules(unet=unet, spectrum_net=spectrum_net, scheduler=scheduler)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1)
        self._num_timesteps = 0
        self._interrupt = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> GMUNetPipeline:
        """Load a local pipeline folder (diffusers' ``from_pretrained``; nothing is downloaded)."""
        root = Path(pretrained_model_name_or_path)
        if not (root / "model_index.json").is_file():
            raise FileNotFoundError(f"{root} is not a pipeline folder: {root / 'model_index.json'} does not exist")
        if not is_accelerate_available():
            kwargs.setdefault("low_cpu_mem_usage", False)
        return super().from_pretrained(str(root), **kwargs)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 10,
        num_inference_substeps: int = 1,
        output_mode: str = "sample",
        order: int = 2,
        class_labels: Sequence[int] | Tensor | None = None,
        guidance_scale: float = 0.0,
        gm2_coefs: Sequence[float] = DEFAULT_COEFS,
        output_type: str = "pil",
        return_dict: bool = True,
        latents: Tensor | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` images (or one per class id of ``class_labels`` for a class-conditional
        model).

        Args:
            generator: one generator, or one per image (image i then depends on generator i only).
            num_inference_steps: network evaluations; num_inference_substeps: scheduler steps per evaluation.
            output_mode: "sample" (GM-SDE with :class:`GMFlowSDEScheduler`) or "mean" (GM-ODE with
                :class:`FlowEulerODEScheduler`).
            order: 1, or 2 for the 2nd-order GM correction.
            class_labels: class ids, for a class-conditional model only.
            guidance_scale: probabilistic guidance w in [0, 1) (class-conditional models only).
            output_type: "pil", "np", "pt" (images in [0, 1]) or "latent" (the raw samples).
            latents: x_T to start from instead of drawing it.
        """
        _check_scheduler(self.scheduler)
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if order not in (1, 2) or isinstance(order, bool):
            raise ValueError(f"order must be 1 or 2, got {order!r}")
        check_positive_int("num_inference_steps", num_inference_steps)
        check_positive_int("num_inference_substeps", num_inference_substeps)
        coefs = check_second_order_coefs(gm2_coefs)
        guidance = ProbabilisticGuidance(guidance_scale)
        device = self._execution_device
        conditional = bool(self.unet.num_classes)
        if conditional:
            if class_labels is None:
                raise ValueError("this GM-UNet is class-conditional: give class_labels (class ids)")
            labels = torch.as_tensor(class_labels, device=device).reshape(-1).long()
            batch_size = labels.shape[0]
        else:
            if class_labels is not None or guidance.needs_uncond:
                raise ValueError("this GM-UNet is unconditional: class_labels and guidance_scale do not apply")
            check_positive_int("batch_size", batch_size)
            labels = None
        generator = check_generators(generator, batch_size)
        config = self.unet.config
        shape = (batch_size, config.in_channels, config.sample_size, config.sample_size)
        if latents is None:
            x = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        else:
            x = latents.to(device=device, dtype=torch.float32)
        if output_mode == "policy":
            x = policy_sample(self, GMFlowModel(self.unet), x, num_inference_steps, labels, guidance, 128, 1.0, "auto")
            images = x if output_type == "latent" else self.image_processor.postprocess(x, output_type=output_type)
            return ImagePipelineOutput(images=images) if return_dict else (images,)
        uncond = torch.full_like(labels, self.unet.null_label) if conditional else None
        guidance, condition = guided_condition(guidance, labels, uncond, batch_size)
        x = scheduler_loop(self, GMFlowModel(self.unet), x, num_inference_steps, num_inference_substeps, output_mode,
                           order, condition=condition, guidance=guidance, coefs=coefs, generator=generator,
                           spectrum=self.spectrum_net if output_mode == "sample" else None)
        images = x if output_type == "latent" else self.image_processor.postprocess(x, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
