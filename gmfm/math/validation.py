"""Argument checks shared by the public functions.

Every check raises ``ValueError`` whose message names the argument and what was expected, so that a
user sees "sigma must lie in [0, 1]" instead of a NaN three calls later.
"""

from __future__ import annotations

import contextvars
import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Union

import numpy as np
import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_VALUE_CHECKS = contextvars.ContextVar("gmfm_value_checks", default=True)


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Turn the checks of tensor *values* (noise levels in [0, 1], their order) on or off in a block.

    Those checks read values back from the device, which synchronises a GPU. Code that builds its noise
    levels itself (the training losses) turns them off; shape, dtype and argument checks always run.
    """
    token = _VALUE_CHECKS.set(enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def value_checks_enabled() -> bool:
    return _VALUE_CHECKS.get()


def check_tensor(name: str, value: object, *, min_dim: int = 0) -> Tensor:
    """Return ``value`` if it is a floating-point tensor (half, bfloat16, float or double) with at least
    ``min_dim`` dimensions."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), got {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape {tuple(value.shape)}")
    return value


def check_finite(name: str, value: Tensor) -> Tensor:
    """Raise if ``value`` holds NaN or infinity."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return value


def check_same_trailing(name: str, value: Tensor, shape: Sequence[int], what: str) -> None:
    """Raise unless the last ``len(shape)`` dimensions of ``value`` equal ``shape``."""
    n = len(shape)
    if value.dim() < n or tuple(value.shape[value.dim() - n:]) != tuple(shape):
        raise ValueError(f"{name} must have trailing shape {tuple(shape)} ({what}), got {tuple(value.shape)}")


def check_same_dtype(name: str, value: Tensor, dist: object) -> None:
    """Raise unless ``value`` has the dtype of the distribution ``dist`` (a GM or Gaussian): mixing float32
    and float64 would silently promote one part of the result."""
    dtype = getattr(dist, "dtype", None) or getattr(getattr(dist, "mean", None), "dtype", None)
    if dtype is not None and value.dtype != dtype:
        raise ValueError(f"{name} has dtype {value.dtype} but the distribution is {dtype}: convert one of them "
                         f"(e.g. {name}.to({dtype}))")


def check_broadcastable(name: str, value: Tensor, batch_shape: Sequence[int], event_dims: int) -> None:
    """Raise unless the leading (batch) dimensions of ``value`` broadcast to ``batch_shape``."""
    lead = tuple(value.shape[: value.dim() - event_dims])
    try:
        out = torch.broadcast_shapes(lead, tuple(batch_shape))
    except RuntimeError:
        out = None
    if out != tuple(batch_shape):
        raise ValueError(
            f"{name} has batch shape {lead}, which does not broadcast to the expected batch shape "
            f"{tuple(batch_shape)} (full shape {tuple(value.shape)})"
        )


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int if it is an integer (Python or numpy) >= ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float_in(
    name: str, value: object, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> float:
    """Check that ``value`` is a finite real number in the given interval (bounds may be open)."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{name} must be in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return float(value)


def as_sigma(name: str, sigma: object, batch_shape: Sequence[int], like: Tensor) -> Tensor:
    """Turn a noise level into a tensor of shape ``batch_shape`` with the dtype and device of ``like``.

    ``sigma`` may be a Python number, a 0-d tensor or a tensor whose shape broadcasts to ``batch_shape``
    (typically ``(B,)``). It must be finite and lie in [0, 1].
    """
    if isinstance(sigma, Tensor):
        if tuple(sigma.shape) != tuple(batch_shape):
            check_broadcastable(name, sigma, batch_shape, 0)
        s = sigma.to(device=like.device, dtype=like.dtype)
        if s.numel() and value_checks_enabled():
            low, high = torch.aminmax(s)
            if not (float(low) >= 0.0 and float(high) <= 1.0):  # NaN fails both comparisons
                bad = s[~((s >= 0) & (s <= 1))]
                raise ValueError(f"{name} must be in [0, 1] and finite, got values outside: {bad[:4].tolist()}")
        return s.expand(tuple(batch_shape))
    value = check_float_in(name, sigma, 0.0, 1.0)
    return torch.full(tuple(batch_shape), value, dtype=like.dtype, device=like.device)


def pad_right(t: Tensor, ndim: int) -> Tensor:
    """Append singleton dimensions so that ``t`` broadcasts against tensors with ``ndim`` dimensions."""
    return t.reshape(*t.shape, *([1] * (ndim - t.dim())))


#: A validated noise level: a Python float (scalar arithmetic, no device work) or a tensor shaped to
#: broadcast against the samples, (..., 1, 1, 1).
Level = Union[float, Tensor]


def as_level(name: str, sigma: object, x: Tensor) -> Level:
    """Check a noise level for samples ``x`` (..., C, H, W): numbers stay floats, per-sample tensors
    (batch shape ``...``) become (..., 1, 1, 1). Values must be finite and in [0, 1]."""
    if isinstance(sigma, Tensor) and sigma.dim() > 0:
        return pad_right(as_sigma(name, sigma, x.shape[:-3], x), x.dim())
    return check_float_in(name, sigma, 0.0, 1.0)
