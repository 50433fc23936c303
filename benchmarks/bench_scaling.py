"""Training throughput: 1 vs N processes under torchrun (CPU: gloo), and GMFlow vs flow matching per step.

    python -m benchmarks.bench_scaling                      # CPU: MNIST GM-DiT, 1 and 2 processes
    python -m benchmarks.bench_scaling --device cuda --configs imagenet_gmflow_k8_s2 imagenet_fm_s2 \
        imagenet_gmflow_k8_b2 imagenet_fm_b2 --processes 1  # a GPU: DiT-S/2 and B/2, bf16 + checkpointing

Each measurement runs ``gmfm train-images`` for ``--iterations`` iterations into a scratch folder and reads
the trainer's timing log (seconds per global iteration, the first window dropped as warm-up).
iterations/s, samples/s (global batch / second) and, for N processes, the scaling efficiency
throughput(N) / (N x throughput(1)) with one thread per process. The ImageNet recipes train on a
synthetic latent cache of random 4 x 32 x 32 latents (the step time does not depend on the values).
Writes results/scaling.{json,md} (or scaling_cuda.*).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .common import RESULTS_DIR, write_results


def synthetic_cache(folder: Path, count: int = 4096, shape=(4, 32, 32), classes: int = 1000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(folder / "latents.npy", rng.standard_normal((count, *shape), dtype=np.float32).astype(np.float16))
    np.save(folder / "labels.npy", rng.integers(0, classes, count).astype(np.int64))
    (folder / "latents.json").write_text(json.dumps({"count": count, "latent_shape": list(shape),
                                                     "num_classes": classes, "scaling_factor": 1.0}))
    return folder


def have_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def measure(config: str, processes: int, threads: int, iterations: int, device: str, batch: int | None,
            data: Path | None, work: Path) -> dict:
    out = work / f"{config}_{processes}x{threads}"
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    args = [*head, "-m", "gmfm", "train-images", "--config", config, "--out", str(out), "--iterations",
            str(iterations), "--log-every", str(max(1, iterations // 5)), "--checkpoint-every", str(10**9),
            "--device", device, "--no-resume"]
    if batch:  # one micro-batch per process: the step time of the batch itself, without accumulation
        args += ["--batch-size", str(batch), "--micro-batch-size", str(batch // processes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if data is not None:
        recipe = out.parent / f"{config}.toml"
        from gmfm.experiments import load_recipe

        text = Path(load_recipe(config).source).read_text().replace('path = "data/imagenet/latents"',
                                                                    f'path = "{data}"')
        recipe.write_text(text if device != "cpu" and have_bitsandbytes() else
                          text.replace('optimizer = "adamw8bit"', 'optimizer = "adamw"'))
        args[args.index(config)] = str(recipe)
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    with open(out / "timing.csv") as f:
        rows = [float(r["seconds_per_iter"]) for r in csv.DictReader(f)][1:]  # the first window is warm-up
    from gmfm.experiments import load_run

    batch_size = load_run(out).recipe.train.batch_size
    seconds = float(np.median(rows))
    return {"config": config, "processes": processes, "threads_per_process": threads, "seconds_per_iter": seconds,
            "iterations_per_s": 1 / seconds, "samples_per_s": batch_size / seconds, "batch_size": batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["mnist_gmflow", "mnist_fm"])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=None, help="override the recipes' global batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = synthetic_cache(work / "latents") if any(c.startswith("imagenet") for c in args.configs) else None
        for config in args.configs:
            for processes in args.processes:
                threads = 1 if args.device == "cpu" else 4
                rows.append(measure(config, processes, threads, args.iterations, args.device, args.batch_size,
                                    data if config.startswith("imagenet") else None, work))
                print(rows[-1], flush=True)
            if args.device == "cpu" and 1 in args.processes:  # one process may use every core
                rows.append(measure(config, 1, os.cpu_count() or 1, args.iterations, args.device, args.batch_size,
                                    None, work))
                print(rows[-1], flush=True)
    single = {r["config"]: r for r in rows if r["processes"] == 1 and r["threads_per_process"] == (1 if args.device == "cpu" else 4)}
    for r in rows:
        base = single.get(r["config"])
        r["scaling_efficiency"] = (r["samples_per_s"] / (r["processes"] * base["samples_per_s"])
                                   if base and r["threads_per_process"] == base["threads_per_process"] else None)
    ratios = {}
    for gm_name in [c for c in args.configs if "gmflow" in c]:
        fm_name = gm_name.replace("gmflow_k8", "fm").replace("gmflow", "fm")
        for r in rows:
            if r["config"] == gm_name:
                match = [q for q in rows if q["config"] == fm_name and q["processes"] == r["processes"]
                         and q["threads_per_process"] == r["threads_per_process"]]
                if match:
                    ratios[f"{gm_name} / {fm_name}, {r['processes']}x{r['threads_per_process']}"] = \
                        r["seconds_per_iter"] / match[0]["seconds_per_iter"]
    md = ("| config | processes x threads | s / iteration | iterations / s | samples / s | scaling efficiency |\n"
          "|---|---|---:|---:|---:|---:|\n" +
          "".join(f"| {r['config']} | {r['processes']} x {r['threads_per_process']} | {r['seconds_per_iter']:.3f} | "
                  f"{r['iterations_per_s']:.3f} | {r['samples_per_s']:.1f} | "
                  f"{'' if r['scaling_efficiency'] is None else format(r['scaling_efficiency'], '.2f')} |\n"
                  for r in rows) +
          "\nGMFlow step time / FM step time (target <= 1.1):\n\n" +
          "".join(f"- {k}: {v:.3f} ({'met' if v <= 1.1 else 'NOT met'})\n" for k, v in ratios.items()))
    name = "scaling" + ("" if args.device == "cpu" else f"_{args.device}")
    write_results(name, {"device": args.device, "rows": rows, "gmflow_over_fm": ratios,
                         "iterations": args.iterations}, md, args.out)
    print((args.out / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
