"""The two distribution containers every GMFlow operation works on.

Shapes follow the official GMFlow layout, which keeps official checkpoints loadable. ``...`` is any
number of leading batch dimensions (usually one, ``B``).

``GaussianMixture`` (a per-pixel, factorised GM over a tensor of shape ``(..., C, H, W)``):
    means       (..., K, C, H, W)   one mean per component, channel and pixel
    logweights  (..., K, 1, H, W)   log-softmaxed over K; shared by the channels of a pixel
    logstds     (..., 1, 1, 1, 1)   ONE standard deviation per sample, shared by everything else

``IsoGaussian`` (an isotropic Gaussian per pixel):
    mean        (..., C, H, W)
    var         (..., 1, H, W) or (..., 1, 1, 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .validation import check_broadcastable, check_finite, check_tensor


def _check_common(name: str, values: dict[str, Tensor]) -> None:
    ref_name, ref = next(iter(values.items()))
    for key, value in values.items():
        if value.dtype != ref.dtype:
            raise ValueError(f"{name}.{key} has dtype {value.dtype} but {name}.{ref_name} has {ref.dtype}")
        if value.device != ref.device:
            raise ValueError(f"{name}.{key} is on {value.device} but {name}.{ref_name} is on {ref.device}")


def _unchecked(cls: type, **fields: Tensor) -> Any:
    """An instance of the frozen container ``cls`` holding ``fields``, without ``__post_init__``."""
    obj = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """A per-pixel Gaussian mixture with one shared isotropic std per sample (see module docstring).

    Construction validates shapes (K >= 1), dtypes and devices and raises ``ValueError`` naming the field;
    ``logweights`` are normalised on construction (log-softmax over K), so unnormalised log-weights or
    logits give the same mixture as :meth:`from_logits`.
    """

    means: Tensor
    logweights: Tensor
    logstds: Tensor

    def __post_init__(self) -> None:
        means = check_tensor("GaussianMixture.means", self.means, min_dim=4)
        logweights = check_tensor("GaussianMixture.logweights", self.logweights)
        logstds = check_tensor("GaussianMixture.logstds", self.logstds)
        *batch, k, c, h, w = means.shape
        expected_lw = (*batch, k, 1, h, w)
        if tuple(logweights.shape) != expected_lw:
            raise ValueError(
                f"GaussianMixture.logweights must have shape (..., K, 1, H, W) = {expected_lw} to match means "
                f"{tuple(means.shape)}, got {tuple(logweights.shape)}"
            )
        if logstds.dim() != means.dim() or tuple(logstds.shape[-4:]) != (1, 1, 1, 1):
            raise ValueError(
                f"GaussianMixture.logstds must have shape (..., 1, 1, 1, 1) with {means.dim()} dimensions "
                f"(one std per sample), got {tuple(logstds.shape)}"
            )
        if tuple(logstds.shape[:-4]) != tuple(batch):
            check_broadcastable("GaussianMixture.logstds", logstds, batch, 4)
        if k < 1:
            raise ValueError(f"GaussianMixture.means must have K >= 1 components, got shape {tuple(means.shape)}")
        _check_common("GaussianMixture", {"means": means, "logweights": logweights, "logstds": logstds})
        object.__setattr__(self, "logweights", torch.log_softmax(logweights, dim=-4))

    @classmethod
    def from_logits(cls, means: Tensor, logits: Tensor, logstds: Tensor) -> GaussianMixture:
        """Build a GM from unnormalised component logits (normalised with log-softmax over K).

        Args:
            means: (..., K, C, H, W).
            logits: (..., K, 1, H, W) unnormalised log-weights.
            logstds: (..., 1, 1, 1, 1), one log-std per sample.

        Returns:
            The validated GM.

        Raises:
            ValueError: if a field has the wrong type, shape, dtype or device.
        """
        check_tensor("logits", logits, min_dim=4)
        return cls(means, logits, logstds)

    @classmethod
    def trusted(cls, means: Tensor, logweights: Tensor, logstds: Tensor) -> GaussianMixture:
        """A GM from fields that are valid by construction: no checks, no normalisation.

        For the outputs of gmfm's own operations (shapes, dtypes, normalised log-weights already right);
        users construct normally.

        Args:
            means: (..., K, C, H, W).
            logweights: (..., K, 1, H, W), normalised over K.
            logstds: (..., 1, 1, 1, 1).

        Returns:
            The GM, holding the given tensors.
        """
        return _unchecked(cls, means=means, logweights=logweights, logstds=logstds)

    # ----- shape information -------------------------------------------------------------------------
    @property
    def batch_shape(self) -> torch.Size:
        """The batch dims ``...`` of the means."""
        return self.means.shape[:-4]

    @property
    def event_shape(self) -> torch.Size:
        """(C, H, W): the shape of one sample."""
        return self.means.shape[-3:]

    @property
    def num_components(self) -> int:
        """K, the number of components."""
        return self.means.shape[-4]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the means."""
        return self.means.dtype

    @property
    def device(self) -> torch.device:
        """The device of the means."""
        return self.means.device

    def __repr__(self) -> str:
        return (f"GaussianMixture(batch_shape={tuple(self.batch_shape)}, K={self.num_components}, "
                f"event_shape={tuple(self.event_shape)}, dtype={self.dtype}, device={self.device})")

    # ----- tensor-like helpers -----------------------------------------------------------------------
    def map(self, fn: Any) -> GaussianMixture:
        """Apply ``fn`` to the three tensors (after expanding logstds to the full batch shape).

        Args:
            fn: a function Tensor -> Tensor that keeps the trailing (K, C, H, W) / (K, 1, H, W) /
                (1, 1, 1, 1) dims.

        Returns:
            The GM of the results (not validated).
        """
        logstds = self.logstds.expand(*self.batch_shape, 1, 1, 1, 1)
        return GaussianMixture.trusted(fn(self.means), fn(self.logweights), fn(logstds))

    def to(self, *args: Any, **kwargs: Any) -> GaussianMixture:
        """The GM with ``Tensor.to(*args, **kwargs)`` applied to every field (dtype and / or device)."""
        return GaussianMixture.trusted(
            self.means.to(*args, **kwargs), self.logweights.to(*args, **kwargs), self.logstds.to(*args, **kwargs)
        )

    def detach(self) -> GaussianMixture:
        """The GM with every field detached from the autograd graph."""
        return GaussianMixture.trusted(self.means.detach(), self.logweights.detach(), self.logstds.detach())

    def __getitem__(self, index: Any) -> GaussianMixture:
        """Index the batch dimensions, e.g. ``gm[:4]`` (the index must not reach the K, C, H, W dims)."""
        return self.map(lambda t: t[index])

    @staticmethod
    def cat(gms: list[GaussianMixture], dim: int = 0) -> GaussianMixture:
        """Concatenate mixtures along a batch dimension.

        Args:
            gms: the mixtures, each (..., K, C, H, W) with the same K.
            dim: the batch dimension, counted from the front (>= 0).

        Returns:
            The concatenated GM (logstds expanded to the full batch shape).

        Raises:
            ValueError: if ``gms`` is empty, the mixtures differ in K, event shape or dtype, or ``dim`` is not
                a batch dimension.
        """
        if not gms:
            raise ValueError("gms must be a non-empty list of GaussianMixture")
        first = gms[0]
        if any(g.num_components != first.num_components or g.event_shape != first.event_shape
               or g.dtype != first.dtype for g in gms):
            raise ValueError("gms must all have the same number of components K, event shape (C, H, W) and dtype")
        if not 0 <= dim < len(first.batch_shape):
            raise ValueError(f"dim must index a batch dimension in [0, {len(first.batch_shape)}), got {dim}")
        full = [g.map(lambda t: t) for g in gms]
        return GaussianMixture.trusted(
            torch.cat([g.means for g in full], dim),
            torch.cat([g.logweights for g in full], dim),
            torch.cat([g.logstds for g in full], dim),
        )

    def check_finite(self, name: str = "gm") -> GaussianMixture:
        """Check that no field holds NaN or inf; one device synchronisation when everything is fine.

        ``-inf`` log-weights are allowed unless a pixel has no component left.

        Args:
            name: the GM's name in error messages.

        Returns:
            The GM itself.

        Raises:
            ValueError: naming the field, if means or logstds hold NaN or inf, log-weights hold NaN or +inf,
                or every component of some pixel has log-weight -inf.
        """
        lw = self.logweights
        ok = (
            torch.isfinite(self.means).all()
            & torch.isfinite(self.logstds).all()
            & ~(torch.isnan(lw) | torch.isposinf(lw)).any()
            & ~torch.isneginf(lw).all(dim=-4).any()
        )
        if bool(ok):
            return self
        check_finite(f"{name}.means", self.means)
        check_finite(f"{name}.logstds", self.logstds)
        if bool(torch.isnan(lw).any() or torch.isposinf(lw).any()):
            raise ValueError(f"{name}.logweights contains NaN or +inf")
        raise ValueError(f"{name}.logweights gives zero weight to every component of some pixel")


@dataclass(frozen=True, eq=False)
class IsoGaussian:
    """An isotropic Gaussian per pixel: ``mean`` (..., C, H, W), ``var`` (..., 1, H, W) or (..., 1, 1, 1)."""

    mean: Tensor
    var: Tensor

    def __post_init__(self) -> None:
        mean = check_tensor("IsoGaussian.mean", self.mean, min_dim=3)
        var = check_tensor("IsoGaussian.var", self.var)
        if var.dim() != mean.dim() or var.shape[-3] != 1:
            raise ValueError(
                f"IsoGaussian.var must have shape (..., 1, H, W) or (..., 1, 1, 1) with {mean.dim()} dimensions "
                f"to match mean {tuple(mean.shape)}, got {tuple(var.shape)}"
            )
        for axis in (-2, -1):
            if var.shape[axis] not in (1, mean.shape[axis]):
                raise ValueError(
                    f"IsoGaussian.var spatial size {tuple(var.shape[-2:])} must be 1 or match mean "
                    f"{tuple(mean.shape[-2:])}"
                )
        if var.shape[:-3] != mean.shape[:-3]:
            check_broadcastable("IsoGaussian.var", var, mean.shape[:-3], 3)
        _check_common("IsoGaussian", {"mean": mean, "var": var})

    @classmethod
    def trusted(cls, mean: Tensor, var: Tensor) -> IsoGaussian:
        """A Gaussian from fields that are valid by construction (outputs of gmfm's own operations): no
        checks.

        Args:
            mean: (..., C, H, W).
            var: (..., 1, H, W) or (..., 1, 1, 1), in the dtype and on the device of ``mean``.

        Returns:
            The Gaussian, holding the given tensors.
        """
        return _unchecked(cls, mean=mean, var=var)

    @property
    def batch_shape(self) -> torch.Size:
        """The batch dims ``...`` of the mean."""
        return self.mean.shape[:-3]

    def __repr__(self) -> str:
        return (f"IsoGaussian(mean_shape={tuple(self.mean.shape)}, var_shape={tuple(self.var.shape)}, "
                f"dtype={self.mean.dtype}, device={self.mean.device})")

    def to(self, *args: Any, **kwargs: Any) -> IsoGaussian:
        """The Gaussian with ``Tensor.to(*args, **kwargs)`` applied to mean and var (dtype and / or device)."""
        return IsoGaussian(self.mean.to(*args, **kwargs), self.var.to(*args, **kwargs))
