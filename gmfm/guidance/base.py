"""The guidance contract: a value that turns a conditional / unconditional x0-GM pair into a guided GM.

A solver takes ``guidance=`` (``None`` = unguided). It asks the value one question before sampling,
:attr:`Guidance.needs_uncond` (run the doubled [cond; uncond] batch or not), and at every step calls
:meth:`Guidance.guide_gm` (GM solvers) or :meth:`Guidance.guide_prediction` (plain flow solvers).

What a guidance returns, :class:`GuidedGM`, also says how the guided GM relates to the conditional one,
so that the 2nd-order correction of :mod:`gmfm.solvers.second_order` can apply its own mean shift in the
same single reweighting without knowing which guidance produced it.

Adding a guidance method = one new module with a :class:`Guidance` subclass (and its tests).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from torch import Tensor

from ..math.containers import GaussianMixture, IsoGaussian
from ..math.gm_ops import gm_mean, gm_mul_iso_gaussian, gm_to_iso_gaussian, iso_gaussian_mul_iso_gaussian


def mean_over_event(t: Tensor) -> Tensor:
    """Mean over (C, H, W), kept.

    Args:
        t: tensor (..., C, H, W).

    Returns:
        The mean, (..., 1, 1, 1).
    """
    return t.mean(dim=(-3, -2, -1), keepdim=True)


def pixel_averaged_gaussian(gm: GaussianMixture) -> IsoGaussian:
    """Moment-matched isotropic Gaussian (:func:`gmfm.math.gm_to_iso_gaussian`) with its variance averaged over pixels.

    Args:
        gm: the mixture (..., K, C, H, W).

    Returns:
        IsoGaussian with mean (..., C, H, W) and var (..., 1, 1, 1).
    """
    g = gm_to_iso_gaussian(gm)
    return IsoGaussian(g.mean, g.var.mean(dim=(-2, -1), keepdim=True))


def reweight_towards(base: GaussianMixture, surrogate: IsoGaussian, target: IsoGaussian) -> GaussianMixture:
    """Multiply ``base`` by target / surrogate (renormalised): moves its moment-matched Gaussian to ``target``.

    Every shape as in :func:`gmfm.math.gm_mul_iso_gaussian`.

    Args:
        base: the mixture (..., K, C, H, W).
        surrogate: the moment-matched Gaussian of ``base``: mean (..., C, H, W), var (..., 1, 1, 1).
        target: the Gaussian to move it to, same shapes.

    Returns:
        The reweighted mixture, (..., K, C, H, W).

    Raises:
        ValueError: if the variances are not one value per sample, or a mean's shape or dtype does not match
            ``base``.
    """
    return gm_mul_iso_gaussian(base, iso_gaussian_mul_iso_gaussian(target, surrogate, 1.0, -1.0), 1.0, 1.0)


@dataclass(frozen=True, eq=False)
class GuidedGM:
    """A guided x0-GM and how it was made (batch dims ``...`` as in the inputs, usually (B,)).

    Attributes:
        gm: the x0-GM to sample with, (..., K, C, H, W).
        base: the GM that further corrections reweight: the conditional GM when the guidance is itself a
            reweighting (``bias`` given), else ``gm``.
        surrogate: N(mu_c, v_c), the moment-matched Gaussian of ``base`` with its variance averaged over
            pixels: mean (..., C, H, W), var (..., 1, 1, 1).
        bias: the mean shift a reweighting of ``base`` applies, (..., C, H, W); None when ``gm`` is
            ``base`` (no reweighting).
        target: the Gaussian ``base`` was moved to (None without a reweighting).
        damping_scale: the w that damps the 2nd-order mean difference (the official code uses the
            probabilistic-guidance scale; 0 for anything else).
    """

    gm: GaussianMixture
    base: GaussianMixture
    surrogate: IsoGaussian
    bias: Tensor | None = None
    target: IsoGaussian | None = None
    damping_scale: float = 0.0

    @classmethod
    def unguided(cls, gm: GaussianMixture) -> GuidedGM:
        """``gm`` itself, as the result of no guidance (its own surrogate, no bias).

        Args:
            gm: the x0-GM (..., K, C, H, W).

        Returns:
            The GuidedGM with ``gm`` and ``base`` both ``gm``.
        """
        return cls(gm, gm, pixel_averaged_gaussian(gm))

    @cached_property
    def avg_var(self) -> Tensor:
        """v_c averaged over C, H, W: (..., 1, 1, 1)."""
        return mean_over_event(self.surrogate.var)

    @cached_property
    def mean(self) -> Tensor:
        """Mean of ``gm``, (..., C, H, W) (the surrogate's mean when ``gm`` is ``base``)."""
        return self.surrogate.mean if self.bias is None else gm_mean(self.gm)


class Guidance(ABC):
    """How a conditional prediction is guided away from the unconditional one."""

    #: Whether :meth:`guide_prediction` is implemented (plain flow solvers need it).
    guides_point_predictions: ClassVar[bool] = False

    @property
    @abstractmethod
    def needs_uncond(self) -> bool:
        """Whether the solver must also evaluate the unconditional input (a scale that leaves the
        conditional prediction unchanged says False, and the solver then runs the plain batch)."""

    @abstractmethod
    def guide_gm(self, cond: GaussianMixture, uncond: GaussianMixture) -> GuidedGM:
        """Guide the conditional x0-GM ``cond`` with the unconditional ``uncond``.

        Args:
            cond: the conditional x0-GM (..., K, C, H, W).
            uncond: the unconditional x0-GM, same shapes.

        Returns:
            The guided GM and how it relates to ``cond``.
        """

    def guide_prediction(self, cond: Tensor, uncond: Tensor) -> Tensor:
        """Guide a plain flow model's point prediction (velocity or x0).

        Only guidance methods that act on means implement it.

        Args:
            cond: the conditional prediction (..., C, H, W).
            uncond: the unconditional prediction, same shape.

        Returns:
            The guided prediction, (..., C, H, W).

        Raises:
            ValueError: in this base implementation (the guidance acts on Gaussian mixtures only).
        """
        raise ValueError(point_prediction_error(self))


def point_prediction_error(guidance: Guidance) -> str:
    """The error message for a guidance that cannot guide point predictions.

    Args:
        guidance: the guidance.

    Returns:
        The message, naming its class.
    """
    return (f"{type(guidance).__name__} guides Gaussian mixtures only: use a GM solver, or "
            "ClassifierFreeGuidance with a plain flow solver")


def active_guidance(guidance: Guidance | None) -> Guidance | None:
    """``guidance`` if it needs the unconditional pass, else None.

    The one place where a solver decides whether to run the doubled batch.

    Args:
        guidance: a :class:`Guidance` or None.

    Returns:
        ``guidance`` or None.

    Raises:
        ValueError: if ``guidance`` is neither None nor a :class:`Guidance`.
    """
    if guidance is None:
        return None
    if not isinstance(guidance, Guidance):
        raise ValueError(f"guidance must be a gmfm.guidance.Guidance (e.g. ProbabilisticGuidance(0.3)) or None, "
                         f"got {type(guidance).__name__}")
    return guidance if guidance.needs_uncond else None
