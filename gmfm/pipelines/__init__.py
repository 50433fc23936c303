"""diffusers pipelines: class-conditional GM-DiT sampling from the official layout."""


def __getattr__(name: str):
    if name == "GMDiTPipeline":  # imports diffusers' pipeline machinery only when used
        from .gmdit_pipeline import GMDiTPipeline

        return GMDiTPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GMDiTPipeline"]
