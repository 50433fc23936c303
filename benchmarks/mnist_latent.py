"""Latent MNIST: GMFlow vs flow matching in the latent space of a small VAE, trained with torchrun.

    python -m benchmarks.mnist_latent [--work-dir outputs/mnist_latent] [--processes 2]

The paper's setting (a flow model on VAE latents) at a scale that runs on 2 CPU cores:
1. ``gmfm train-vae --dataset mnist --width 16 --iterations 2000``: a small diffusers AutoencoderKL,
   1 x 32 x 32 -> 4 x 8 x 8;
2. ``gmfm cache-latents --dataset mnist --flip none`` (digits are not mirror-symmetric);
3. ``torchrun --nproc_per_node 2 -m gmfm train-images --config mnist_latent_gmflow`` and ``mnist_latent_fm``
   (the same GM-DiT and budget: 3,000 iterations x batch 64);
4. samples of 100 per class at NFE 4 / 8 / 16 / 32 are decoded with the VAE and measured with the MNIST
   FD of bench_mnist.py (the small CNN's features, against the 1,000 held-out digits); the VAE's own
   floor is the FD of the decoded latents of held-out digits.
Every step resumes or is skipped when its output exists. Writes mnist_latent.{json,md} and grids.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from .common import RESULTS_DIR, write_results

from gmfm.data.mnist import load_mnist_splits
from gmfm.experiments import load_run, make_guidance, sample_trained
from gmfm.experiments.images import ClassifierEvaluator
from gmfm.experiments.latents import decode_latents, load_vae
from gmfm.experiments.results import markdown_table
from gmfm.metrics.figures import save_image_grid

NFES = (4, 8, 16, 32)
GM_SOLVERS = ("gmode2", "gmsde2", "euler")
FM_SOLVERS = ("dpmpp2m", "euler")
PER_CLASS = 100


def gmfm(args: list[str], processes: int = 1) -> None:
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // processes))}
    print("$", " ".join(["torchrun" if processes > 1 else "gmfm", *args]), flush=True)
    subprocess.run([*head, "-m", "gmfm", *args], check=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/mnist_latent"))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vae-width", type=int, default=16, help="channels of the VAE's first block")
    parser.add_argument("--vae-iterations", type=int, default=2000, help="VAE training iterations")
    parser.add_argument("--iterations", type=int, default=None,
                        help="flow-model iterations (default: the recipes' 3,000; the same for both models)")
    args = parser.parse_args()
    work = args.work_dir
    vae = work / "vae" / "vae"
    if not (vae / "config.json").exists():
        gmfm(["train-vae", "--dataset", "mnist", "--out", str(work / "vae"), "--width", str(args.vae_width),
              "--iterations", str(args.vae_iterations), "--device", args.device])
    cache = work / "cache"
    if not (cache / "latents.json").exists():
        gmfm(["cache-latents", "--dataset", "mnist", "--vae", str(vae), "--out", str(cache), "--flip", "none",
              "--dtype", "float32", "--device", args.device], args.processes)
    tic = {}
    for kind in ("gmflow", "fm"):
        start = time.perf_counter()
        gmfm(["train-images", "--config", f"mnist_latent_{kind}", "--out", str(work / kind), "--device", args.device,
              *(["--iterations", str(args.iterations)] if args.iterations else [])], args.processes)
        tic[kind] = time.perf_counter() - start

    data = load_mnist_splits()
    evaluate = ClassifierEvaluator(data.train_images, data.train_labels, data.test_images,
                                   cache=work / "classifier.pt")
    scaling = float(load_vae(vae).config.scaling_factor)
    with torch.no_grad():
        vae_model = load_vae(vae)
        held = vae_model.encode(data.test_images).latent_dist.mode() * scaling
    floor = evaluate(decode_latents(held, vae, scaling), data.test_labels).as_dict()
    labels = torch.arange(10).repeat_interleave(PER_CLASS)
    results, grids = {}, {}
    runs = {kind: load_run(work / kind, device=args.device) for kind in ("gmflow", "fm")}
    for kind, solvers in (("gmflow", GM_SOLVERS), ("fm", FM_SOLVERS)):
        for solver in solvers:
            for nfe in NFES:
                start = time.perf_counter()
                z = sample_trained(runs[kind], solver, nfe, labels=labels, seed=0, device=args.device)
                x = decode_latents(z, vae, scaling)
                metrics = evaluate(x, labels).as_dict()
                metrics["seconds"] = time.perf_counter() - start
                results[f"{kind}_{solver}_{nfe}"] = metrics
                grids[f"{kind}_{solver}_{nfe}"] = x
                print(kind, solver, nfe, {k: round(v, 4) for k, v in metrics.items()}, flush=True)
    for w in (0.1, 0.3, 0.5):
        x = decode_latents(sample_trained(runs["gmflow"], "gmode2", 16, labels=labels,
                                          guidance=make_guidance(w), device=args.device), vae, scaling)
        results[f"gmflow_gmode2_16_pg{w}"] = evaluate(x, labels).as_dict()
    for s in (1.5, 2.0, 3.0):
        x = decode_latents(sample_trained(runs["fm"], "dpmpp2m", 16, labels=labels,
                                          guidance=make_guidance(cfg_scale=s), device=args.device), vae, scaling)
        results[f"fm_dpmpp2m_16_cfg{s}"] = evaluate(x, labels).as_dict()
    best = {kind: {nfe: min(results[f"{kind}_{s}_{nfe}"]["fd"] for s in solvers) for nfe in NFES}
            for kind, solvers in (("gmflow", GM_SOLVERS), ("fm", FM_SOLVERS))}
    for key in ("gmflow_gmode2_8", "fm_dpmpp2m_8", "gmflow_gmsde2_4"):
        x = grids[key].reshape(10, PER_CLASS, *grids[key].shape[1:])[:, :10].reshape(-1, *grids[key].shape[1:])
        save_image_grid(x, args.out / f"mnist_latent_{key}.png", nrow=10, row_labels=[str(c) for c in range(10)],
                        title=f"latent MNIST: {key}")
    target = best["gmflow"][8] < best["fm"][8]
    cols = ["fd", "precision", "recall", "accuracy"]
    md = (f"VAE: {vae} (latents {tuple(held.shape[1:])}, scaling factor {scaling:.4f}); its reconstruction floor "
          f"(decoded latents of the held-out digits): FD {floor['fd']:.3f}, accuracy {floor['accuracy']:.3f}. "
          f"Training: {args.processes} processes (torchrun, gloo), {runs['gmflow'].recipe.train.iterations:,} iterations x "
          f"batch {runs['gmflow'].recipe.train.batch_size} each (FM: {runs['fm'].recipe.train.iterations:,}); VAE "
          f"{args.vae_iterations:,} iterations, width {args.vae_width}; wall time "
          f"GMFlow {tic['gmflow'] / 60:.1f} min, FM {tic['fm'] / 60:.1f} min (0 when resumed complete).\n\n"
          "Best FD per NFE: " + ", ".join(f"NFE {n}: GMFlow {best['gmflow'][n]:.2f} / FM {best['fm'][n]:.2f}"
                                          for n in NFES) +
          f"\n\nTarget (GMFlow's best FD at 8 NFE below FM's): {'met' if target else 'NOT met'}.\n\n" +
          markdown_table(results, list(results), cols))
    write_results("mnist_latent", {"device": args.device, "results": results, "best_fd": best,
                                   "vae_floor": floor, "target_met": target, "processes": args.processes,
                                   "train_wall_seconds": tic}, md, args.out)
    print((args.out / "mnist_latent.md").read_text())


if __name__ == "__main__":
    main()
