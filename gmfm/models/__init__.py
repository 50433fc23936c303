"""Denoisers that return a u-GM: the analytic oracle (networks come with the training issues)."""

from .analytic import AnalyticGMDenoiser

__all__ = ["AnalyticGMDenoiser"]
