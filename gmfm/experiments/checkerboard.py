"""The 2-D checkerboard experiments of the paper (Sec. 4.1, Fig. 2): evaluation, the demo and the
fixed-budget benchmark."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data.toy_distributions import Toy2D, make_toy_dataset
from ..metrics.figures import save_histogram_grid, save_metric_plot
from ..metrics.points2d import Toy2DMetrics, evaluate_toy2d, noise_floor
from ..solvers.catalog import GM_SOLVERS
from ..solvers.flow_solvers import FLOW_SOLVERS
from .recipe import Recipe, load_recipe
from .results import write_json
from .run import TrainedModel, load_run, train_recipe
from .sampling import SamplingPlan, sample_trained

SOLVER_LABELS = {"gmsde": "GM-SDE", "gmsde2": "GM-SDE 2", "gmode": "GM-ODE", "gmode2": "GM-ODE 2",
                 "euler": "FM Euler", "ddpm_small": "FM DDPM small", "ddpm_large": "FM DDPM large",
                 "dpmpp2m": "FM DPM++ 2M", "dpmpp2m_sde": "FM DPM++ 2M SDE", "unipc": "FM UniPC"}


def evaluate_solvers(trained: TrainedModel, dataset: Toy2D, solvers: list[str], nfes: list[int], num_samples: int,
                     *, seed: int = 0, device: str = "cpu", keep_samples: int = 0,
                     progress: bool = True) -> tuple[dict[str, dict[str, float]], dict[str, Tensor]]:
    """Sample a 2-D run with every solver and NFE and measure against the exact density.

    Args:
        trained: the 2-D run; dataset: its toy distribution.
        solvers, nfes: what to run; num_samples: points per run (seeded with ``seed``).
        keep_samples: how many points of each run to return (0: none).

    Returns:
        ({"<solver>_<nfe>": {tv, precision, swd, sample_seconds}}, {"<solver>_<nfe>": points (n, 2)}).
    """
    reference = dataset.sample(num_samples, torch.Generator().manual_seed(seed + 10_000))
    results, kept = {}, {}
    jobs = [(s, n) for s in solvers for n in nfes]
    for solver, nfe in tqdm(jobs, desc="evaluating", disable=not progress):
        tic = time.perf_counter()
        points = sample_trained(trained, solver, nfe, num_samples=num_samples, seed=seed, batch_size=100_000,
                                device=device).reshape(-1, 2)
        metrics = evaluate_toy2d(points, dataset, reference).as_dict()
        metrics["sample_seconds"] = time.perf_counter() - tic
        results[f"{solver}_{nfe}"] = metrics
        if keep_samples:
            kept[f"{solver}_{nfe}"] = points[:keep_samples]
    return results, kept


def metric_table(results: dict, solvers: list[str], nfes: list[int], metric: str, floor: float | None) -> str:
    """A markdown table of one metric: one row per solver, one column per NFE, and the data's noise floor."""
    lines = [f"| {metric} | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---:|" * len(nfes)]
    for s in solvers:
        lines.append(f"| {SOLVER_LABELS[s]} (`{s}`) | " +
                     " | ".join(f"{results[f'{s}_{n}'][metric]:.4f}" for n in nfes) + " |")
    if floor is not None:
        lines.append("| data noise floor | " + " | ".join(f"{floor:.4f}" for _ in nfes) + " |")
    return "\n".join(lines) + "\n"


def train_twins(recipe: Recipe, out: Path, progress: bool) -> dict[str, float]:
    """Train ``recipe`` into out/gmflow and its flow-matching twin (kind "fm") into out/fm; seconds per
    iteration of each (NaN when nothing was left to train)."""
    seconds = {}
    for kind in ("gmflow", "fm"):
        tic = time.perf_counter()
        result = train_recipe(recipe.with_overrides(kind=kind), out / kind, progress=progress)
        seconds[kind] = (time.perf_counter() - tic) / len(result.losses) if result.losses else float("nan")
    return seconds


def run_demo(out_dir: str | Path = "outputs/demo", iterations: int | None = None, num_samples: int = 20_000,
             device: str = "cpu", seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """Train the ``checkerboard_demo`` recipe (K = 64) and its flow-matching twin, then compare few-step
    samples. Writes ``samples.png`` (rows GM-SDE 2, GM-ODE 2, FM Euler, FM DPM++ 2M; columns NFE 1, 2, 4, 8),
    ``metrics.md`` and ``metrics.json`` to ``out_dir``. Runs are resumed when rerun."""
    out = Path(out_dir)
    recipe = load_recipe("checkerboard_demo", train={"iterations": iterations, "device": device, "seed": seed})
    seconds = train_twins(recipe, out, progress)
    dataset = make_toy_dataset(recipe.dataset_name)
    rows = [("gmflow", "gmsde2"), ("gmflow", "gmode2"), ("fm", "euler"), ("fm", "dpmpp2m")]
    nfes = [1, 2, 4, 8]
    results, cells = {}, []
    for kind, solver in rows:
        trained = load_run(out / kind, device=device)
        res, kept = evaluate_solvers(trained, dataset, [solver], nfes, num_samples, seed=seed, device=device,
                                     keep_samples=num_samples, progress=progress)
        results.update(res)
        cells.append([kept[f"{solver}_{n}"] for n in nfes])
    floor = noise_floor(dataset, num_samples, seed)
    model = recipe.model
    figure = save_histogram_grid(cells, [SOLVER_LABELS[s] for _, s in rows], [f"NFE {n}" for n in nfes],
                                 out / "samples.png", extent=dataset.extent,
                                 title=f"Checkerboard, {recipe.train.iterations} training iterations, "
                                       f"{num_samples} samples")
    solvers = [s for _, s in rows]
    table = (f"# 2-D checkerboard demo\n\nMLP {model['num_layers']} x {model['hidden_dim']}, K = "
             f"{model['num_components']} (GMFlow) vs K = 1 (flow matching, L2), {recipe.train.iterations} iterations "
             f"each, batch {recipe.train.batch_size}; {num_samples} samples per cell.\n\n"
             "Total variation to the exact density (32 x 32 grid, lower is better):\n\n"
             + metric_table(results, solvers, nfes, "tv", floor.tv)
             + "\nPrecision (fraction of samples in the filled squares, higher is better):\n\n"
             + metric_table(results, solvers, nfes, "precision", floor.precision))
    (out / "metrics.md").write_text(table)
    write_json(out / "metrics.json", {"results": results, "data_floor": floor.as_dict(),
                                      "train_seconds_per_iter": seconds})
    return {"figure": figure, "table": out / "metrics.md", "json": out / "metrics.json"}


def run_checkerboard_benchmark(out_dir: str | Path, *, iterations: int | None = None, batch_size: int | None = None,
                               num_samples: int = 100_000, nfes: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
                               device: str = "cpu", seed: int = 0, work_dir: str | Path | None = None,
                               progress: bool = True) -> dict:
    """The fixed-budget checkerboard benchmark (recipe ``checkerboard_bench``): GMFlow sampled with gmsde,
    gmsde2, gmode, gmode2 (GM-ODE with ceil(128/NFE) substeps), the flow-matching twin with every baseline
    solver. Returns the payload, a markdown table and the figure paths."""
    out = Path(out_dir)
    work = Path(work_dir) if work_dir else out / "checkerboard_runs"
    recipe = load_recipe("checkerboard_bench", train={"iterations": iterations, "batch_size": batch_size,
                                                      "device": device, "seed": seed})
    if iterations is not None:
        recipe = recipe.with_overrides(train={"checkpoint_every": max(1, iterations // 5)})
    seconds = train_twins(recipe, work, progress)
    dataset = make_toy_dataset(recipe.dataset_name)
    floor = noise_floor(dataset, num_samples, seed)
    results, kept = {}, {}
    for kind, solvers in (("gmflow", list(GM_SOLVERS)), ("fm", list(FLOW_SOLVERS))):
        trained = load_run(work / kind, use_ema=False, device=device)
        res, k = evaluate_solvers(trained, dataset, solvers, list(nfes), num_samples, seed=seed, device=device,
                                  keep_samples=num_samples, progress=progress)
        results.update(res)
        kept.update(k)
    payload = {"data_floor": floor.as_dict(), "results": results, "train_seconds_per_iter": seconds,
               "recipe": recipe.as_dict(), "settings": {"num_samples": num_samples, "seed": seed, "device": device,
                                                        "gm_ode_substeps": "ceil(128 / NFE)"}}
    payload["targets"] = _targets(results, seconds, nfes)
    solvers = list(GM_SOLVERS) + list(FLOW_SOLVERS)
    fig_rows = ["gmsde2", "gmode2", "euler", "dpmpp2m", "unipc"]
    train = recipe.train
    save_histogram_grid([[kept[f"{s}_{n}"] for n in nfes] for s in fig_rows], [SOLVER_LABELS[s] for s in fig_rows],
                        [f"NFE {n}" for n in nfes], out / "checkerboard.png", extent=dataset.extent,
                        title=f"Checkerboard, {train.iterations} iterations x batch {train.batch_size}, "
                              f"{num_samples} samples")
    save_metric_plot({s: {n: results[f"{s}_{n}"]["tv"] for n in nfes} for s in solvers},
                     out / "checkerboard_tv.png", "total variation", floor=floor.tv, log_y=True,
                     title="Checkerboard: TV to the exact density vs NFE")
    markdown = (metric_table(results, solvers, list(nfes), "tv", floor.tv) + "\n"
                + metric_table(results, solvers, list(nfes), "precision", floor.precision) + "\n"
                + metric_table(results, solvers, list(nfes), "swd", floor.swd))
    return {"payload": payload, "markdown": markdown, "figures": [out / "checkerboard.png",
                                                                   out / "checkerboard_tv.png"]}


def _targets(results: dict, seconds: dict, nfes) -> dict:
    best_fm16 = min(results[f"{s}_16"]["tv"] for s in FLOW_SOLVERS) if 16 in nfes else math.nan
    best_gm4 = min(results[f"{s}_4"]["tv"] for s in GM_SOLVERS) if 4 in nfes else math.nan
    ratio = seconds["gmflow"] / seconds["fm"] if seconds.get("fm") else math.nan
    return {"gmflow_best_tv_at_4": best_gm4, "fm_best_tv_at_16": best_fm16,
            "gmflow_4_beats_fm_16": bool(best_gm4 < best_fm16),
            "train_step_ratio_gmflow_over_fm": ratio, "train_step_ratio_within_1.1": bool(ratio <= 1.1)}


@dataclass(frozen=True)
class PointsEvaluation:
    """What :func:`sample_2d_run` measured: the plan it sampled with, the metrics of its samples, the data's
    own noise floor at that sample count, and the histogram it wrote."""

    plan: SamplingPlan
    num_samples: int
    metrics: Toy2DMetrics
    floor: Toy2DMetrics
    figure: Path


def sample_2d_run(run: str | Path, *, num_samples: int = 100_000, label: int | None = None, seed: int = 0,
                  out: str | Path | None = None, use_ema: bool = True, device: str = "cpu",
                  progress: bool = True, **choices: Any) -> PointsEvaluation:
    """``gmfm sample-2d``: sample a 2-D run, write a histogram and measure the samples against the exact
    density (TV, precision, SWD) beside the data's noise floor.

    Args:
        run: a 2-D run folder or checkpoint.
        label: the class to sample (conditional datasets; None: random classes).
        out: the histogram PNG (default ``<run folder>/samples_<plan tag>.png``).
        **choices: sampling choices for :meth:`gmfm.experiments.SamplingPlan.resolve` (``solver``, ``nfe``,
            ``substeps``, ``guidance_scale``, ...; None: the recipe's).

    Raises:
        ValueError: the run is not a 2-D run, or ``label`` is not one of its classes.
    """
    trained = load_run(run, use_ema=use_ema, device=device)
    if trained.event_shape != (2, 1, 1):
        raise ValueError(f"{run} is not a 2-D run (samples of shape {trained.event_shape}); use sample-images")
    plan = SamplingPlan.resolve(trained, **choices)
    dataset = make_toy_dataset(trained.recipe.dataset_name)
    labels = None
    if label is not None:
        if not dataset.num_classes or label >= dataset.num_classes:
            raise ValueError(f"--label must be a class of {dataset.name} in [0, {max(dataset.num_classes, 1) - 1}]"
                             if dataset.num_classes else f"--label: {dataset.name} has no classes")
        labels = torch.full((num_samples,), label)
    points = sample_trained(trained, plan=plan, labels=labels, num_samples=num_samples, seed=seed,
                            batch_size=100_000, device=device, progress=progress).reshape(-1, 2)
    reference = dataset.sample(num_samples, torch.Generator().manual_seed(seed + 1), labels)
    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    figure = Path(out) if out is not None else folder / f"samples_{plan.tag()}.png"
    save_histogram_grid([[points]], [plan.solver], [f"NFE {plan.nfe}"], figure, extent=dataset.extent)
    return PointsEvaluation(plan, num_samples, evaluate_toy2d(points, dataset, reference),
                            noise_floor(dataset, num_samples, seed), figure)
