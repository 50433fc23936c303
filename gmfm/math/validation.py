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

    Args:
        enabled: whether the value checks run inside the block.
    """
    token = _VALUE_CHECKS.set(enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def value_checks_enabled() -> bool:
    """Whether the checks of tensor values are on (see :func:`value_checks`; on by default)."""
    return _VALUE_CHECKS.get()


def check_tensor(name: str, value: object, *, min_dim: int = 0) -> Tensor:
    """Return ``value`` if it is a floating-point tensor with at least ``min_dim`` dimensions.

    Args:
        name: the argument's name in error messages.
        value: the object to check.
        min_dim: the minimum number of dimensions.

    Returns:
        ``value``.

    Raises:
        ValueError: if ``value`` is not a tensor, its dtype is not float16, bfloat16, float32 or float64,
            or it has fewer than ``min_dim`` dimensions.
    """
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), got {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape {tuple(value.shape)}")
    return value


def check_finite(name: str, value: Tensor) -> Tensor:
    """Check that ``value`` holds no NaN or infinity.

    Args:
        name: the argument's name in error messages.
        value: the tensor to check.

    Returns:
        ``value``.

    Raises:
        ValueError: if ``value`` holds NaN or infinity.
    """
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return value


def check_same_trailing(name: str, value: Tensor, shape: Sequence[int], what: str) -> None:
    """Check that the last ``len(shape)`` dimensions of ``value`` equal ``shape``.

    Args:
        name: the argument's name in error messages.
        value: the tensor to check.
        shape: the expected trailing shape.
        what: what the trailing shape is, for the error message (e.g. "the GM's (C, H, W)").

    Raises:
        ValueError: if the trailing dimensions differ.
    """
    n = len(shape)
    if value.dim() < n or tuple(value.shape[value.dim() - n:]) != tuple(shape):
        raise ValueError(f"{name} must have trailing shape {tuple(shape)} ({what}), got {tuple(value.shape)}")


def check_same_dtype(name: str, value: Tensor, dist: object) -> None:
    """Check that ``value`` has the dtype of the distribution ``dist``.

    Mixing float32 and float64 would silently promote one part of the result.

    Args:
        name: the argument's name in error messages.
        value: the tensor to check.
        dist: a GaussianMixture or IsoGaussian; an object without a dtype passes.

    Raises:
        ValueError: if the dtypes differ.
    """
    dtype = getattr(dist, "dtype", None) or getattr(getattr(dist, "mean", None), "dtype", None)
    if dtype is not None and value.dtype != dtype:
        raise ValueError(f"{name} has dtype {value.dtype} but the distribution is {dtype}: convert one of them "
                         f"(e.g. {name}.to({dtype}))")


def check_broadcastable(name: str, value: Tensor, batch_shape: Sequence[int], event_dims: int) -> None:
    """Check that the leading (batch) dimensions of ``value`` broadcast to ``batch_shape``.

    Args:
        name: the argument's name in error messages.
        value: the tensor to check.
        batch_shape: the expected batch shape.
        event_dims: the number of trailing (event) dimensions of ``value`` that are not batch dimensions.

    Raises:
        ValueError: if the batch dimensions do not broadcast to exactly ``batch_shape``.
    """
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
    """``value`` as an int if it is an integer (Python or numpy) >= ``minimum``.

    Args:
        name: the argument's name in error messages.
        value: the object to check; booleans are refused.
        minimum: the smallest allowed value.

    Returns:
        ``value`` as an int.

    Raises:
        ValueError: if ``value`` is not an integer or is below ``minimum``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float_in(
    name: str, value: object, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> float:
    """Check that ``value`` is a finite real number in the given interval (bounds may be open).

    Args:
        name: the argument's name in error messages.
        value: a real number or a one-element tensor; booleans are refused.
        low: the lower bound.
        high: the upper bound.
        low_open: whether ``low`` itself is excluded.
        high_open: whether ``high`` itself is excluded.

    Returns:
        ``value`` as a float.

    Raises:
        ValueError: if ``value`` is not a finite real number or lies outside the interval.
    """
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


def as_sigma(name: str, sigma: float | Tensor, batch_shape: Sequence[int], like: Tensor) -> Tensor:
    """Turn a noise level into a tensor of shape ``batch_shape`` with the dtype and device of ``like``.

    Args:
        name: the argument's name in error messages.
        sigma: a Python number, a 0-d tensor or a tensor whose shape broadcasts to ``batch_shape``; finite
            and in [0, 1] (tensor values are checked while value checks are enabled).
        batch_shape: the batch shape, typically ``(B,)``.
        like: tensor giving the dtype and device.

    Returns:
        The noise levels, of shape ``batch_shape``.

    Raises:
        ValueError: if ``sigma`` does not broadcast to ``batch_shape``, or is not finite or not in [0, 1].
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
    """Append singleton dimensions so that ``t`` broadcasts against tensors with ``ndim`` dimensions.

    Args:
        t: the tensor (...).
        ndim: the number of dimensions of the result (``t`` is returned as is if it has at least as many).

    Returns:
        ``t`` reshaped to (..., 1, ..., 1).
    """
    return t.reshape(*t.shape, *([1] * (ndim - t.dim())))


#: A validated noise level: a Python float (scalar arithmetic, no device work) or a tensor shaped to
#: broadcast against the samples, (..., 1, 1, 1).
Level = Union[float, Tensor]


def as_level(name: str, sigma: float | Tensor, x: Tensor) -> Level:
    """Check a noise level for samples ``x``: numbers stay floats, per-sample tensors become (..., 1, 1, 1).

    Args:
        name: the argument's name in error messages.
        sigma: a number or 0-d tensor, or a tensor broadcasting to the batch shape ``(...)`` of ``x``; finite
            and in [0, 1].
        x: the samples (..., C, H, W).

    Returns:
        A float (for a number or 0-d tensor), else a tensor (..., 1, 1, 1) in the dtype and on the device of
        ``x``.

    Raises:
        ValueError: if ``sigma`` does not broadcast to the batch shape, or is not finite or not in [0, 1].
    """
    if isinstance(sigma, Tensor) and sigma.dim() > 0:
        return pad_right(as_sigma(name, sigma, x.shape[:-3], x), x.dim())
    return check_float_in(name, sigma, 0.0, 1.0)
