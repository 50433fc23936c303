"""Save a trained image model as a diffusers pipeline folder in the official layout."""

from __future__ import annotations

from pathlib import Path

from .run import TrainedModel


def export_pipeline(trained: TrainedModel, folder: str | Path) -> Path:
    """Write ``folder`` so that :class:`gmfm.pipelines.GMDiTPipeline` (GM-DiT runs: model_index.json,
    transformer/, spectrum_net/, scheduler/; no VAE: the model works in the data's own space) or
    :class:`gmfm.pipelines.GMUNetPipeline` (GM-UNet runs: unet/ instead of transformer/) loads it. GMFlow runs
    get the GM-SDE scheduler (``output_mode="sample"`` gives GM-SDE), FM runs the Euler ODE scheduler."""
    from ..models.gmflow_model import GMFlowModel
    from ..models.unet import GMUNet2DModel
    from ..pipelines.gmdit_pipeline import GMDiTPipeline
    from ..pipelines.schedulers import FlowEulerODEScheduler, GMFlowSDEScheduler

    model = trained.model
    if not isinstance(model, GMFlowModel):
        raise ValueError(f"only image models (GM-DiT, GM-UNet) export to a pipeline, this run has a "
                         f"{type(model).__name__}")
    scheduler = GMFlowSDEScheduler() if trained.kind == "gmflow" else FlowEulerODEScheduler()
    if isinstance(model.net, GMUNet2DModel):
        from ..pipelines.gmunet_pipeline import GMUNetPipeline

        GMUNetPipeline(model.net.cpu(), model.spectrum_net.cpu() if model.spectrum_net is not None else None,
                       scheduler).save_pretrained(folder)
        return Path(folder)
    labels = dict(enumerate(trained.class_names)) if trained.class_names else None
    pipe = GMDiTPipeline(model.net.cpu(), model.spectrum_net.cpu() if model.spectrum_net is not None else None,
                         scheduler, None, labels)
    pipe.save_pretrained(folder)
    return Path(folder)
