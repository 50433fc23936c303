"""Runs the reference cases computed with the official GMFlow implementation (SPEC "Reference case format").

Each ``ops/*.npz`` holds ``meta`` (JSON: op, params, description), float64 inputs ``in.*`` and expected
outputs ``out.*``. :data:`OPS` maps an op name to a function taking (inputs, params) and returning the
outputs by name; an op missing from it is an error, so that new cases cannot be skipped silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gmfm import AnalyticGMDenoiser, GaussianMixture, IsoGaussian, ProbabilisticGuidance, gmflow_sample, probabilistic_guidance
from gmfm.math import (
    convert_denoising_gm_mean,
    euler_step,
    forward_transition,
    gm_mean,
    gm_mul_iso_gaussian,
    gm_nll,
    gm_to_iso_gaussian,
    iso_gaussian_mul_iso_gaussian,
    reverse_transition,
    sde_step,
    u_to_x0,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def reference_root() -> Path:
    """GMFM_REFERENCE_DIR, else ../shared/reference next to the repository."""
    env = os.environ.get("GMFM_REFERENCE_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "reference"


def load_case(path: Path) -> tuple[dict, dict[str, Tensor], dict[str, np.ndarray]]:
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        inputs = {k[3:]: torch.from_numpy(np.array(data[k])) for k in data.files if k.startswith("in.")}
        outputs = {k[4:]: np.array(data[k]) for k in data.files if k.startswith("out.")}
    return meta, inputs, outputs


def _gm(inputs: dict[str, Tensor], prefix: str = "") -> GaussianMixture:
    return GaussianMixture(inputs[prefix + "means"], inputs[prefix + "logweights"], inputs[prefix + "logstds"])


def _gm_out(gm: GaussianMixture) -> dict[str, Tensor]:
    return {"means": gm.means, "logweights": gm.logweights, "logstds": gm.logstds}


def _gm_mul_iso_gaussian(i: dict[str, Tensor], p: dict) -> dict[str, Tensor]:
    gaussian = IsoGaussian(i["g_mean"], i["g_var"])
    return _gm_out(gm_mul_iso_gaussian(_gm(i), gaussian, p["gm_power"], p["gaussian_power"]))


def _iso_gaussian_mul(i: dict[str, Tensor], p: dict) -> dict[str, Tensor]:
    g = iso_gaussian_mul_iso_gaussian(
        IsoGaussian(i["mean_1"], i["var_1"]), IsoGaussian(i["mean_2"], i["var_2"]), p["power_1"], p["power_2"]
    )
    return {"mean": g.mean, "var": g.var}


def _gm_to_iso_gaussian(i: dict[str, Tensor], p: dict) -> dict[str, Tensor]:
    g = gm_to_iso_gaussian(_gm(i))
    return {"mean": g.mean, "var": g.var}


def _oracle_loop(i: dict[str, Tensor], p: dict) -> dict[str, Tensor]:
    """The official GM-ODE loop driven by the exact denoiser of per-sample data GMs.

    Sample b is conditioned on its own data GM ``cond[b]`` (class b) and guided away from ``uncond[b]``
    (class B + b) of one oracle holding all 2B data GMs.
    """
    noise = i["noise"]
    batch = noise.shape[0]
    means = torch.cat([i["cond.means"], i["uncond.means"]])
    logweights = torch.cat([i["cond.logweights"], i["uncond.logweights"]])
    oracle = AnalyticGMDenoiser(means, logweights, p["data_logstd"])
    out = gmflow_sample(
        oracle,
        noise,
        p["steps"],
        method="ode",
        order=p["order"],
        substeps=p["substeps"],
        shift=p["shift"],
        condition=torch.arange(batch),
        uncond_condition=torch.arange(batch, 2 * batch),
        guidance=ProbabilisticGuidance(p["guidance_scale"], p["orthogonal"]),
    )
    return {"x0": out.sample}


OPS: dict[str, Callable[[dict[str, Tensor], dict], dict[str, Tensor]]] = {
    "gm_mean": lambda i, p: {"mean": gm_mean(_gm(i))},
    "gm_to_iso_gaussian": _gm_to_iso_gaussian,
    "gm_nll": lambda i, p: {"nll": gm_nll(_gm(i), i["target"])},
    "iso_gaussian_mul_iso_gaussian": _iso_gaussian_mul,
    "gm_mul_iso_gaussian": _gm_mul_iso_gaussian,
    "u_to_x0": lambda i, p: _gm_out(u_to_x0(_gm(i), i["x_t"], i["sigma"])),
    "reverse_transition": lambda i, p: _gm_out(
        reverse_transition(_gm(i), i["x_t_high"], i["sigma_high"], i["sigma_low"], p["prediction_type"])
    ),
    "forward_transition": lambda i, p: {
        "x_t_high": forward_transition(i["x_t_low"], i["sigma_low"], i["sigma_high"], i["noise"])
    },
    "denoising_convert_mean": lambda i, p: {
        "mean": convert_denoising_gm_mean(_gm(i), i["x_src"], i["sigma_src"], i["x_tgt"], i["sigma_tgt"])
    },
    "probabilistic_guidance": lambda i, p: _gm_out(
        probabilistic_guidance(_gm(i, "cond."), _gm(i, "uncond."), p["guidance_scale"], p["orthogonal"]).gm
    ),
    "sde_step": lambda i, p: {"x_to": sde_step(i["x0"], i["x_t"], i["sigma"], i["sigma_to"], i["noise"])},
    "euler_step": lambda i, p: {"x_to": euler_step(i["x0"], i["x_t"], i["sigma"], i["sigma_to"])},
    "gm_ode_sample_oracle": _oracle_loop,
}

#: SPEC tolerances: (rtol, atol) per op; everything else uses the ops tolerance.
OPS_TOLERANCE = (1e-6, 1e-8)
TOLERANCES = {"gm_ode_sample_oracle": (0.0, 1e-5)}


def compare_logweights(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> None:
    """Log-weights of vanishing components may differ in a huge negative value: compare them as
    weights where the weight is negligible, as log-weights elsewhere."""
    significant = expected > -30
    np.testing.assert_allclose(actual[significant], expected[significant], rtol=rtol, atol=atol)
    np.testing.assert_allclose(np.exp(actual), np.exp(expected), rtol=rtol, atol=atol)
