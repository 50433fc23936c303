"""Argument types and option groups shared by the commands: every number is checked where it is parsed."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``gmfm <command>: error: ...``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    interval = f"{lo}{low:g}, {high:g}{hi}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}") from None
        if not math.isfinite(value) or (value <= low if low_open else value < low) or \
                (value >= high if high_open else value > high):
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text}")
        return value

    parse.__name__ = f"number in {interval}"
    return parse


POSITIVE = int_at_least(1)
NON_NEGATIVE = int_at_least(0)
UNIT_OPEN = float_in(0.0, 1.0, high_open=True)


def add_device(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--device", default=None,
                   help=f"cpu or cuda (default: {what or 'cuda when available, else cpu'})")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """Guidance, weights and seed of the sampling commands."""
    p.add_argument("--guidance-scale", type=UNIT_OPEN, default=None,
                   help="probabilistic guidance w in [0, 1) (default: the recipe's [sample])")
    p.add_argument("--orthogonal-guidance", type=float_in(0.0, 1.0), default=None,
                   help="projection weight of probabilistic guidance in [0, 1] (default: the recipe's, 1)")
    p.add_argument("--cfg-scale", type=float_in(0.0, 1e3), default=None,
                   help="vanilla CFG scale, 1 = off (default: the recipe's [sample])")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="sampling seed")


def sampling_choices(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The sampling options of a command as keyword arguments of
    :meth:`gmfm.experiments.SamplingPlan.resolve` (None: the recipe's value)."""
    return {"solver": args.solver, "nfe": args.nfe, "guidance_scale": args.guidance_scale,
            "orthogonal_guidance": args.orthogonal_guidance, "cfg_scale": args.cfg_scale, **extra}


def checked_device(requested: str | None) -> str:
    """The --device of a command: checked (cuda must exist here), default cuda when available."""
    from ..training.distributed import resolve_device

    return str(resolve_device(requested or "auto"))


def png_path(path: str | None) -> Path | None:
    """An --out that must name a .png file (None stays None)."""
    if path is not None and Path(path).suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {path}")
    return Path(path) if path is not None else None


def run_folder(path: str) -> Path:
    """An --out folder: not a file, and not below a file."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file, not a folder")
    for parent in folder.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"--out {folder} lies below {parent}, which is a file")
    return folder
