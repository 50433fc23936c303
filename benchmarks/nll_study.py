"""The validation NLL vs K (paper Table 3) on latent MNIST, at equal budget.

    python -m benchmarks.nll_study train --components 1 4 8 16   # resumable
    python -m benchmarks.nll_study report

The latent testbed of the claims study (``python -m benchmarks.claims prepare-latents``: a small VAE, the
4,000 training digits as 4 x 8 x 8 latents). Every model is ``mnist_latent_gmflow`` (GM-DiT, patch 1, 6 layers,
width 128, SpectrumMLP, transition ratio 0.5) with K = 1, 4, 8 or 16, the same iterations, batch and seed,
trained on the cache minus 500 held-out latents (a seeded, class-stratified split); the NLL
(:func:`gmfm.experiments.likelihood.validation_nll`, t uniform, 4 draws per latent) is measured on those
500, and for K = 16 also with the spectral prior. (The paper's Table 3 models were trained with random
transition ratios; these use the recipe's fixed 0.5.) Writes ``nll.{json,md,png}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gmfm.experiments import load_recipe, train_recipe
from gmfm.experiments.likelihood import validation_nll
from gmfm.metrics.figures import pyplot, save_figure

from .claims import WORK as CLAIMS_WORK
from .common import RESULTS_DIR, stop_if_interrupted, write_results

WORK = Path("benchmarks/runs/nll")
CACHE = CLAIMS_WORK / "mnist_latent" / "cache"
HOLDOUT = 500


def recipe(k: int, iterations: int):
    return load_recipe("mnist_latent_gmflow", model={"num_components": k},
                       data={"path": str(CACHE), "holdout": HOLDOUT},
                       train={"iterations": iterations, "device": "cpu", "seed": 0})


def train(args) -> None:
    torch.set_num_threads(args.threads)
    for k in args.components:
        stop_if_interrupted(train_recipe(recipe(k, args.iterations), args.work_dir / f"k{k}"))


def report(args) -> None:
    torch.set_num_threads(args.threads)
    results, details = {}, {}
    for k in (1, 4, 8, 16):
        folder = args.work_dir / f"k{k}"
        if not (folder / "checkpoint.safetensors").exists():
            continue
        nll = validation_nll(folder, split="test", draws=args.draws, device="cpu", spectral=(k == 16))
        results[f"K{k}"] = nll.bits_per_dim
        details[f"K{k}"] = nll.as_dict()
        if k == 16 and nll.bits_per_dim_spectral is not None:
            results["K16_spectral"] = nll.bits_per_dim_spectral
        print(k, nll)
    order = [key for key in ("K1", "K4", "K8", "K16") if key in results]
    targets = {}
    for a, b in zip(order, order[1:]):
        targets[f"{b}_below_{a}"] = {"value": results[b], "bound": results[a], "better": "lower",
                                     "met": bool(results[b] <= results[a])}
    if "K16_spectral" in results:
        targets["K16_spectral_below_K16"] = {"value": results["K16_spectral"], "bound": results["K16"],
                                             "better": "lower", "met": bool(results["K16_spectral"] <= results["K16"])}
    paper = {"K1": 0.346, "K4": 0.263, "K8": 0.242, "K16": 0.224, "K16_spectral": 0.173}
    lines = ["Validation NLL (bits/dim) of 500 held-out latent-MNIST latents (4 x 8 x 8), t uniform, "
             f"{args.draws} draws per latent; every model {recipe(1, args.iterations).train.iterations:,} iterations x "
             "batch 64, seed 0 (`mnist_latent_gmflow` with K changed). Paper (ImageNet latents) beside.", "",
             "| model | NLL (bits/dim) | paper |", "|---|---:|---:|"]
    lines += [f"| {key} | {value:.4f} | {paper[key]:.3f} |" for key, value in results.items()]
    lines += ["", "| target | value | bound | met |", "|---|---:|---:|---|"]
    lines += [f"| {tid} | {t['value']:.4f} | {t['bound']:.4f} | {t['met']} |" for tid, t in targets.items()]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ks = [int(key[1:]) for key in order]
    ax.plot(ks, [results[key] for key in order], "-o", label="gmfm, latent MNIST")
    if "K16_spectral" in results:
        ax.plot([16], [results["K16_spectral"]], "*", markersize=12, label="K = 16 + spectral prior")
    ax.set(xscale="log", xlabel="K", ylabel="validation NLL (bits/dim)", title="NLL vs K (Table 3 protocol)")
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, args.out / "nll.png")
    write_results("nll", {"device": "cpu", "results": results, "details": details, "targets": targets,
                          "paper_imagenet": paper}, "\n".join(lines) + "\n\n![nll](nll.png)\n", args.out)
    print((args.out / "nll.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=WORK)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=2000)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("--components", type=int, nargs="+", default=[1, 4, 8, 16])
    p = sub.add_parser("report")
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    {"train": train, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
