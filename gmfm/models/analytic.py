"""The exact GMFlow denoiser for per-pixel GM data: a testing oracle for solvers and guidance.

If every pixel of x0 is an independent GM with a shared isotropic std s0, the denoising posterior
p(x0 | x_t) is again such a GM, so a solver driven by this class can be compared with the exact data
distribution. Not part of the official code; SPEC "The analytic GM denoiser".
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..math.containers import GaussianMixture
from ..math.flow import x0_to_u
from ..math.gm_ops import EPS, gm_sample
from ..math.validation import as_sigma, check_tensor, pad_right


class AnalyticGMDenoiser(nn.Module):
    """Exact u-GM denoiser for class-conditional per-pixel GM data.

    Args:
        means: (N, K, C, H, W) data GM means, one GM per class (N classes; N = 1 for unconditional data).
            A (K, C, H, W) tensor is one class.
        logweights: (N, K, 1, H, W) data GM log-weights (normalised here with log-softmax).
        logstd: log of the shared data std s0 (a number or 0-d tensor).

    Call ``denoiser(x_t, sigma, condition)`` with x_t (B, C, H, W), sigma a number or (B,), and condition
    a LongTensor (B,) of class ids in [0, N) (``None`` needs N = 1). Returns the exact u-GM
    (B, K, C, H, W), the same contract as a trained GMFlow network.

    Raises:
        ValueError: on construction, if ``means`` is not (N, K, C, H, W) or (K, C, H, W), ``logweights``
            does not match it, or ``logstd`` is not one finite number.
    """

    def __init__(self, means: Tensor, logweights: Tensor, logstd: float | Tensor) -> None:
        super().__init__()
        check_tensor("means", means, min_dim=4)
        if means.dim() == 4:
            means, logweights = means.unsqueeze(0), logweights.unsqueeze(0)
        if means.dim() != 5:
            raise ValueError(f"means must have shape (N, K, C, H, W), got {tuple(means.shape)}")
        GaussianMixture(means, logweights, torch.zeros(means.shape[0], 1, 1, 1, 1, dtype=means.dtype))
        logstd = torch.as_tensor(logstd, dtype=means.dtype)
        if logstd.numel() != 1 or not bool(torch.isfinite(logstd)):
            raise ValueError(f"logstd must be one finite number, got {logstd}")
        self.register_buffer("means", means)
        self.register_buffer("logweights", torch.log_softmax(logweights, dim=1))
        self.register_buffer("logstd", logstd.reshape(()))

    @property
    def num_classes(self) -> int:
        """N, the number of classes."""
        return self.means.shape[0]

    def _class_index(self, condition: Tensor | None, batch_size: int) -> Tensor:
        if condition is None:
            if self.num_classes != 1:
                raise ValueError(f"condition (class ids) is required: the data has {self.num_classes} classes")
            return torch.zeros(batch_size, dtype=torch.long, device=self.means.device)
        if not isinstance(condition, Tensor) or condition.is_floating_point() or condition.dtype == torch.bool:
            raise ValueError("condition must be an integer tensor of class ids, shape (B,)")
        if condition.shape != (batch_size,):
            raise ValueError(f"condition must have shape ({batch_size},), got {tuple(condition.shape)}")
        if bool(((condition < 0) | (condition >= self.num_classes)).any()):
            raise ValueError(f"condition holds class ids outside [0, {self.num_classes})")
        return condition.to(self.means.device).long()

    def data_gm(self, condition: Tensor | None = None, batch_size: int = 1) -> GaussianMixture:
        """The data GM of each requested class.

        Args:
            condition: integer class ids (B,) in [0, N), or None (needs N = 1).
            batch_size: B; ``condition`` must have B entries.

        Returns:
            The data GM (B, K, C, H, W).

        Raises:
            ValueError: if ``condition`` is None with N > 1, or not an integer (B,) tensor of ids in [0, N).
        """
        index = self._class_index(condition, batch_size)
        logstds = self.logstd.expand(len(index), 1, 1, 1, 1)
        return GaussianMixture(self.means[index], self.logweights[index], logstds)

    def sample_data(
        self, num: int, condition: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Exact data samples of the given classes.

        Args:
            num: the number of samples.
            condition: integer class ids (num,) in [0, N), or None (needs N = 1).
            generator: drives the draws (None: the global generator).

        Returns:
            The samples (num, C, H, W).

        Raises:
            ValueError: if ``condition`` is invalid.
        """
        return gm_sample(self.data_gm(condition, num), generator)

    def x0_posterior(self, x_t: Tensor, sigma: object, condition: Tensor | None = None) -> GaussianMixture:
        """Exact p(x0 | x_t) as an x0-GM, computed in the dtype of the data GM.

        Args:
            x_t: noisy samples (B, C, H, W).
            sigma: their noise level in [0, 1], a number or (B,); clamped at ``EPS``.
            condition: integer class ids (B,) in [0, N), or None (needs N = 1).

        Returns:
            The x0-GM (B, K, C, H, W).

        Raises:
            ValueError: if ``x_t``, ``sigma`` or ``condition`` is invalid.
        """
        check_tensor("x_t", x_t, min_dim=4)
        data = self.data_gm(condition, x_t.shape[0])
        if tuple(x_t.shape[1:]) != tuple(data.event_shape):
            raise ValueError(f"x_t must have shape (B, {tuple(data.event_shape)}), got {tuple(x_t.shape)}")
        x = x_t.to(self.means.dtype)
        s = pad_right(as_sigma("sigma", sigma, x.shape[:1], x), 5).clamp(min=EPS)
        a = 1 - s
        var0 = torch.exp(2 * self.logstd)
        marginal_var = a.square() * var0 + s.square()  # variance of x_t given a component
        post_var = var0 * s.square() / marginal_var
        xk = x.unsqueeze(1)
        means = post_var * (data.means / var0 + a * xk / s.square())
        delta = -(xk - a * data.means).square().sum(dim=2, keepdim=True) / (2 * marginal_var)
        logweights = torch.log_softmax(data.logweights + delta, dim=1)
        return GaussianMixture.trusted(means, logweights, 0.5 * torch.log(post_var))

    def forward(self, x_t: Tensor, sigma: object, condition: Tensor | None = None) -> GaussianMixture:
        """Exact u-GM at (x_t, sigma), in the dtype of x_t.

        Args:
            x_t: noisy samples (B, C, H, W).
            sigma: their noise level in [0, 1], a number or (B,).
            condition: integer class ids (B,) in [0, N), or None (needs N = 1).

        Returns:
            The u-GM (B, K, C, H, W).

        Raises:
            ValueError: if ``x_t``, ``sigma`` or ``condition`` is invalid.
        """
        gm = x0_to_u(self.x0_posterior(x_t, sigma, condition), x_t.to(self.means.dtype), sigma)
        return gm.to(x_t.dtype)
