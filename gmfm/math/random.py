"""Random draws that honour a user's ``torch.Generator``.

A generator may live on another device than the tensors (a CPU generator driving CUDA sampling is the
common, reproducible choice, as in diffusers): the draw then happens on the generator's device and is
moved.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _draw(fn, shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    device = like.device if generator is None else generator.device
    out = fn(tuple(shape), generator=generator, device=device, dtype=like.dtype)
    return out.to(like.device)


def randn(shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Standard normal draws of ``shape`` with the dtype and device of ``like``."""
    return _draw(torch.randn, shape, generator, like)


def rand(shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Uniform [0, 1) draws of ``shape`` with the dtype and device of ``like``."""
    return _draw(torch.rand, shape, generator, like)
