"""The 2-D checkerboard experiments of the paper (Sec. 4.1, Fig. 2): the demo and the few-step benchmark."""

from __future__ import annotations

import math
import time
from pathlib import Path

from ..data.toy2d import make_toy_dataset
from ..metrics.figures import save_histogram_grid, save_metric_plot
from ..metrics.toy2d import noise_floor
from ..models.mlp2d import MLP2DConfig
from ..solvers.by_name import GM_SOLVERS
from ..solvers.flow_solvers import FLOW_SOLVERS
from ..training import TrainConfig
from .toy2d import Toy2DRecipe, evaluate_solvers, load_toy2d_model, train_toy2d, write_json

SOLVER_LABELS = {"gmsde": "GM-SDE", "gmsde2": "GM-SDE 2", "gmode": "GM-ODE", "gmode2": "GM-ODE 2",
                 "euler": "FM Euler", "ddpm_small": "FM DDPM small", "ddpm_large": "FM DDPM large",
                 "dpmpp2m": "FM DPM++ 2M", "dpmpp2m_sde": "FM DPM++ 2M SDE", "unipc": "FM UniPC"}


def _markdown_table(results: dict, solvers: list[str], nfes: list[int], metric: str, floor: float | None) -> str:
    lines = [f"| {metric} | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|" + "---:|" * len(nfes)]
    for s in solvers:
        lines.append(f"| {SOLVER_LABELS[s]} (`{s}`) | " +
                     " | ".join(f"{results[f'{s}_{n}'][metric]:.4f}" for n in nfes) + " |")
    if floor is not None:
        lines.append("| data noise floor | " + " | ".join(f"{floor:.4f}" for _ in nfes) + " |")
    return "\n".join(lines) + "\n"


def _train_pair(gm_recipe: Toy2DRecipe, fm_recipe: Toy2DRecipe, out: Path, progress: bool) -> dict[str, float]:
    seconds = {}
    for name, recipe in (("gmflow", gm_recipe), ("fm", fm_recipe)):
        tic = time.perf_counter()
        result = train_toy2d(recipe, out / name, progress=progress)
        ran = max(len(result.losses), 1)
        seconds[name] = (time.perf_counter() - tic) / ran if result.losses else float("nan")
    return seconds


def run_demo(out_dir: str | Path = "outputs/demo", iterations: int = 4000, num_samples: int = 20_000,
             device: str = "cpu", seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """Train a small checkerboard GMFlow (K = 64) and its flow-matching twin, then compare few-step samples.

    Writes ``samples.png`` (rows GM-SDE 2, GM-ODE 2, FM Euler, FM DPM++ 2M; columns NFE 1, 2, 4, 8),
    ``metrics.md`` and ``metrics.json`` to ``out_dir``. Checkpoints are reused when rerun.
    """
    out = Path(out_dir)
    model = MLP2DConfig(num_components=64, hidden_dim=256, num_layers=4)
    schedule = TrainConfig(iterations=iterations, batch_size=1024, lr=1e-3, optimizer="adam",
                           warmup_iters=200, ema="karras", checkpoint_every=1000, log_every=250, seed=seed,
                           device=device)
    gm = Toy2DRecipe(kind="gmflow", model=model, train=schedule)
    fm = Toy2DRecipe(kind="fm", model=model, train=schedule)
    seconds = _train_pair(gm, fm, out, progress)

    dataset = make_toy_dataset("checkerboard")
    rows = [("gmflow", "gmsde2"), ("gmflow", "gmode2"), ("fm", "euler"), ("fm", "dpmpp2m")]
    nfes = [1, 2, 4, 8]
    results, cells = {}, []
    for kind, solver in rows:
        net, _ = load_toy2d_model(out / kind, device=device)
        res, kept = evaluate_solvers(net, dataset, [solver], nfes, num_samples, seed=seed, device=device,
                                     keep_samples=num_samples, progress=progress)
        results.update(res)
        cells.append([kept[f"{solver}_{n}"] for n in nfes])
    floor = noise_floor(dataset, num_samples, seed)
    figure = save_histogram_grid(cells, [SOLVER_LABELS[s] for _, s in rows], [f"NFE {n}" for n in nfes],
                                 out / "samples.png", extent=dataset.extent,
                                 title=f"Checkerboard, {iterations} training iterations, {num_samples} samples")
    solvers = [s for _, s in rows]
    table = (f"# 2-D checkerboard demo\n\nMLP {model.num_layers} x {model.hidden_dim}, K = 64 (GMFlow) vs K = 1 "
             f"(flow matching, L2), {iterations} iterations each, batch 1024; {num_samples} samples per cell.\n\n"
             "Total variation to the exact density (32 x 32 grid, lower is better):\n\n"
             + _markdown_table(results, solvers, nfes, "tv", floor.tv)
             + "\nPrecision (fraction of samples in the filled squares, higher is better):\n\n"
             + _markdown_table(results, solvers, nfes, "precision", floor.precision))
    (out / "metrics.md").write_text(table)
    write_json(out / "metrics.json", {"results": results, "data_floor": floor.as_dict(),
                                      "train_seconds_per_iter": seconds})
    return {"figure": figure, "table": out / "metrics.md", "json": out / "metrics.json"}


def run_checkerboard_benchmark(out_dir: str | Path, *, iterations: int = 15_000, batch_size: int = 1024,
                               num_samples: int = 100_000, nfes: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
                               device: str = "cpu", seed: int = 0, work_dir: str | Path | None = None,
                               progress: bool = True) -> dict:
    """The issue's fixed-budget checkerboard benchmark.

    K = 64, transition ratio 0.9, batch 1024, Adam lr 2e-4, uniform t, no EMA, seed 0; the paper's MLP
    (5 x 512). GMFlow is sampled with gmsde, gmsde2, gmode, gmode2 (GM-ODE with ceil(128/NFE) substeps),
    the flow-matching twin (same MLP, K = 1, L2) with every baseline solver.
    """
    out = Path(out_dir)
    work = Path(work_dir) if work_dir else out / "checkerboard_runs"
    schedule = TrainConfig(iterations=iterations, batch_size=batch_size, lr=2e-4, optimizer="adam",
                           warmup_iters=0, ema="none", checkpoint_every=max(1, iterations // 5), log_every=500,
                           seed=seed, device=device)
    gm = Toy2DRecipe(kind="gmflow", model=MLP2DConfig(num_components=64), transition_ratio=0.9, train=schedule)
    fm = Toy2DRecipe(kind="fm", model=MLP2DConfig(), train=schedule)
    seconds = _train_pair(gm, fm, work, progress)

    dataset = make_toy_dataset("checkerboard")
    floor = noise_floor(dataset, num_samples, seed)
    results, kept = {}, {}
    for kind, solvers in (("gmflow", list(GM_SOLVERS)), ("fm", list(FLOW_SOLVERS))):
        net, _ = load_toy2d_model(work / kind, use_ema=False, device=device)
        res, k = evaluate_solvers(net, dataset, solvers, list(nfes), num_samples, seed=seed, device=device,
                                  keep_samples=num_samples, progress=progress)
        results.update(res)
        kept.update(k)
    payload = {"data_floor": {"tv": floor.tv, "precision": floor.precision, "swd": floor.swd},
               "results": results, "train_seconds_per_iter": seconds,
               "settings": {"iterations": iterations, "batch_size": batch_size, "num_samples": num_samples,
                            "K": 64, "transition_ratio": 0.9, "lr": 2e-4, "optimizer": "adam", "ema": "none",
                            "time_sampler": "uniform", "seed": seed, "device": device,
                            "mlp": "5 x 512 SiLU", "gm_ode_substeps": "ceil(128 / NFE)"}}
    payload["targets"] = _targets(results, seconds, nfes)
    solvers = list(GM_SOLVERS) + list(FLOW_SOLVERS)
    fig_rows = ["gmsde2", "gmode2", "euler", "dpmpp2m", "unipc"]
    save_histogram_grid([[kept[f"{s}_{n}"] for n in nfes] for s in fig_rows], [SOLVER_LABELS[s] for s in fig_rows],
                        [f"NFE {n}" for n in nfes], out / "checkerboard.png", extent=dataset.extent,
                        title=f"Checkerboard, {iterations} iterations x batch {batch_size}, {num_samples} samples")
    save_metric_plot({s: {n: results[f"{s}_{n}"]["tv"] for n in nfes} for s in solvers},
                     out / "checkerboard_tv.png", "total variation", floor=floor.tv, log_y=True,
                     title="Checkerboard: TV to the exact density vs NFE")
    markdown = (_markdown_table(results, solvers, list(nfes), "tv", floor.tv) + "\n"
                + _markdown_table(results, solvers, list(nfes), "precision", floor.precision) + "\n"
                + _markdown_table(results, solvers, list(nfes), "swd", floor.swd))
    return {"payload": payload, "markdown": markdown, "figures": [out / "checkerboard.png",
                                                                   out / "checkerboard_tv.png"]}


def _targets(results: dict, seconds: dict, nfes) -> dict:
    best_fm16 = min(results[f"{s}_16"]["tv"] for s in FLOW_SOLVERS) if 16 in nfes else math.nan
    best_gm4 = min(results[f"{s}_4"]["tv"] for s in GM_SOLVERS) if 4 in nfes else math.nan
    ratio = seconds["gmflow"] / seconds["fm"] if seconds.get("fm") else math.nan
    return {"gmflow_best_tv_at_4": best_gm4, "fm_best_tv_at_16": best_fm16,
            "gmflow_4_beats_fm_16": bool(best_gm4 < best_fm16),
            "train_step_ratio_gmflow_over_fm": ratio, "train_step_ratio_within_1.1": bool(ratio <= 1.1)}

