"""Random draws that honour a user's ``torch.Generator``.

A generator may live on another device than the tensors (a CPU generator driving CUDA sampling is the
common, reproducible choice, as in diffusers): the draw then happens on the generator's device and is
moved. A list of generators, one per row of the leading dimension, makes row i depend on generator i
only (diffusers' convention for per-image generators).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor


#: One generator, one per row of the leading dimension, or None (the global generator).
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def _draw(fn, shape: Sequence[int], generator: Generators, like: Tensor) -> Tensor:
    shape = tuple(shape)
    if generator is not None and not isinstance(generator, torch.Generator):
        generators = list(generator)
        if not shape or len(generators) != shape[0]:
            raise ValueError(f"a list of generators needs one generator per row: got {len(generators)} for "
                             f"{shape[0] if shape else 0} rows")
        return torch.stack([_draw(fn, shape[1:], g, like) for g in generators])
    device = like.device if generator is None else generator.device
    out = fn(shape, generator=generator, device=device, dtype=like.dtype)
    return out.to(like.device)


def randn(shape: Sequence[int], generator: Generators, like: Tensor) -> Tensor:
    """Standard normal draws of ``shape`` with the dtype and device of ``like``.

    Args:
        shape: the output shape.
        generator: one ``torch.Generator`` (the draw happens on its device), one per row of ``shape[0]``,
            or None (the global generator, on ``like``'s device).
        like: tensor giving the dtype and device of the result.

    Returns:
        The draws, of shape ``shape``.

    Raises:
        ValueError: if a list of generators does not have one per row.
    """
    return _draw(torch.randn, shape, generator, like)


def rand(shape: Sequence[int], generator: Generators, like: Tensor) -> Tensor:
    """Uniform [0, 1) draws of ``shape`` with the dtype and device of ``like``.

    Args:
        shape: the output shape.
        generator: one ``torch.Generator`` (the draw happens on its device), one per row of ``shape[0]``,
            or None (the global generator, on ``like``'s device).
        like: tensor giving the dtype and device of the result.

    Returns:
        The draws, of shape ``shape``.

    Raises:
        ValueError: if a list of generators does not have one per row.
    """
    return _draw(torch.rand, shape, generator, like)


def check_generators(generator: Generators, batch_size: int, name: str = "generator") -> Generators:
    """Validate a generator argument for a batch of ``batch_size`` samples.

    Args:
        generator: None, one ``torch.Generator``, or a list / tuple of them, one per sample.
        batch_size: the number of samples B.
        name: the argument's name in error messages.

    Returns:
        ``generator`` unchanged if None or one generator, else the generators as a list.

    Raises:
        ValueError: if ``generator`` is of another type, or a list / tuple whose length is not ``batch_size``.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch_size:
            raise ValueError(f"{name} must be one torch.Generator or a list of {batch_size} (one per sample), "
                             f"got a list of {len(generator)}")
        return list(generator)
    raise ValueError(f"{name} must be a torch.Generator, a list of them or None, got {type(generator).__name__}")


class BatchDraws:
    """Random draws for rows ``rows`` of a global batch of ``batch_size`` samples.

    Every draw is made for the whole global batch from ``generator`` and then sliced, so the numbers a
    sample gets do not depend on how the batch is split over processes or micro-batches (distributed
    training gives the same result as one process). Draws happen on the generator's device (a CPU
    generator by default) and are moved to ``like``'s device.
    """

    def __init__(self, generator: torch.Generator | None, batch_size: int, rows: slice | None = None) -> None:
        """Set up the draws.

        Args:
            generator: the generator of the whole global batch (None: the global generator).
            batch_size: the global batch size.
            rows: this process's rows of the global batch, a slice with explicit start and stop
                (None: all rows).

        Raises:
            ValueError: if ``rows`` does not lie in [0, batch_size].
        """
        self.generator = generator
        self.batch_size = int(batch_size)
        rows = rows if rows is not None else slice(0, self.batch_size)
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise ValueError(f"rows must be a contiguous slice of the batch, got {rows!r}")
        start = 0 if rows.start is None else rows.start
        stop = self.batch_size if rows.stop is None else rows.stop
        if not 0 <= start <= stop <= self.batch_size:
            raise ValueError(f"rows {rows} must lie in [0, {self.batch_size}]")
        self.rows = slice(start, stop)

    @classmethod
    def of(cls, randomness: BatchDraws | torch.Generator | None, batch_size: int) -> BatchDraws:
        """``randomness`` if it already is a BatchDraws, else draws for a whole batch of ``batch_size``.

        Args:
            randomness: a BatchDraws, a generator, or None (the global generator).
            batch_size: the number of rows the caller draws for.

        Returns:
            The BatchDraws.

        Raises:
            ValueError: if ``randomness`` is a BatchDraws covering a number of rows other than ``batch_size``.
        """
        if isinstance(randomness, BatchDraws):
            if randomness.local_size != batch_size:
                raise ValueError(f"the draws cover {randomness.local_size} rows but the batch has {batch_size}")
            return randomness
        return cls(randomness, batch_size)

    @property
    def local_size(self) -> int:
        """The number of rows drawn for (``rows.stop - rows.start``)."""
        return self.rows.stop - self.rows.start

    def rand(self, tail: Sequence[int], like: Tensor) -> Tensor:
        """Uniform [0, 1) draws for this process's rows.

        Args:
            tail: the shape of one row's draws.
            like: tensor giving the dtype and device of the result.

        Returns:
            The draws, (local_size, *tail).
        """
        return rand((self.batch_size, *tail), self.generator, like)[self.rows]

    def randn(self, tail: Sequence[int], like: Tensor) -> Tensor:
        """Standard normal draws for this process's rows.

        Args:
            tail: the shape of one row's draws.
            like: tensor giving the dtype and device of the result.

        Returns:
            The draws, (local_size, *tail).
        """
        return randn((self.batch_size, *tail), self.generator, like)[self.rows]
