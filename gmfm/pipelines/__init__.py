"""diffusers pipelines: class-conditional GM-DiT sampling from the official layout, GM-UNet sampling
(unconditional, called like DDPMPipeline), and their schedulers
(imported on first use: they load diffusers' pipeline machinery)."""

__all__ = ["FlowEulerODEScheduler", "GMDiTPipeline", "GMFlowSDEScheduler", "GMUNetPipeline"]

_LAZY = {"GMDiTPipeline": ".gmdit_pipeline", "GMUNetPipeline": ".gmunet_pipeline", "GMFlowSDEScheduler": ".schedulers", "FlowEulerODEScheduler": ".schedulers"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
