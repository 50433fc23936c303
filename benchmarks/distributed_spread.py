"""How far apart are the weights of 1 and 2 processes? The spread behind the bound of the distributed tests.

For each seed and thread count: train ``mnist_tiny`` (the tests' recipe, 6 iterations) on 1 process and on
2 processes (torchrun, gloo), and compare the checkpoints with
:func:`gmfm.training.weights_relative_difference` (global relative L2 of model + EMA weights). The same is
done for deliberately broken trainers (``tests/training/mutant_trainer.py``): one row dropped from a
process's share, and noise drawn per process. The test bound must lie far above the first and far below
the second.

It also shows where the SpectrumMLP's larger drift (about 50x the network's) comes from: the same
tiny model trained in one process, its gradient computed from the whole batch or from two halves (what 2
processes do), with SGD and with Adam. With SGD both parts drift alike; Adam divides each gradient element
by its running RMS, which turns the spectrum net's rounding differences in elements whose gradient keeps
changing sign (the spectral loss's gradient is mostly chi-square noise) into larger weight differences.

    python -m benchmarks.distributed_spread --seeds 10
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gmfm.training import weights_relative_difference

from .common import RESULTS_DIR, write_results

ROOT = Path(__file__).resolve().parent.parent
MUTANT = ROOT / "tests" / "training" / "mutant_trainer.py"


def run(out: Path, processes: int, seed: int, threads: int, mutation: str = "none", config: str = "mnist_tiny") -> Path:
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([*head, str(MUTANT), mutation, "train-images", "--config", config, "--device", "cpu",
                    "--out", str(out), "--seed", str(seed)], check=True, capture_output=True, env=env)
    return out


def optimizer_amplification(steps: int = 10) -> list[dict]:
    """Relative L2 drift of the network and the spectrum net between whole-batch and two-half gradients,
    per optimizer (one process, the same weights and draws)."""
    import torch

    from gmfm.experiments import build_loss, build_model, load_dataset, load_recipe
    from gmfm.math.random import BatchDraws
    from gmfm.training import LossModule, step_generator

    recipe = load_recipe("mnist_tiny")
    dataset = load_dataset(recipe)
    batch = recipe.train.batch_size

    def train(optimizer: str, parts: list[slice]) -> dict[str, torch.Tensor]:
        model = build_model(recipe, dataset.event_shape, dataset.num_classes)
        module = LossModule(model, build_loss(recipe, dataset.num_classes))
        opt = (torch.optim.Adam(model.parameters(), lr=1e-3) if optimizer == "adam"
               else torch.optim.SGD(model.parameters(), lr=1e-2))
        for step in range(steps):
            opt.zero_grad()
            for part in parts:
                out = module(dataset.train.batch(batch, step_generator(0, step, 0), part),
                             BatchDraws(step_generator(0, step, 1), batch, part))
                (out.loss / len(parts)).backward()
            opt.step()
        return {k: v.detach().double() for k, v in model.state_dict().items()}

    rows = []
    for optimizer in ("sgd", "adam"):
        whole, halves = train(optimizer, [slice(0, batch)]), train(optimizer, [slice(0, batch // 2),
                                                                               slice(batch // 2, batch)])
        row = {"optimizer": optimizer}
        for part in ("net", "spectrum_net"):
            keys = [k for k in whole if k.startswith(part + ".")]
            diff = sum(float((whole[k] - halves[k]).square().sum()) for k in keys)
            row[part] = (diff / sum(float(whole[k].square().sum()) for k in keys)) ** 0.5
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="training seeds 0 .. N-1")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="OMP threads per process")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="results folder")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed in range(args.seeds):
            for threads in args.threads:
                one = run(work / f"one_{seed}_{threads}", 1, seed, threads)
                two = run(work / f"two_{seed}_{threads}", 2, seed, threads)
                rows.append({"seed": seed, "threads": threads, "trainer": "real",
                             "relative_l2": weights_relative_difference(one, two)})
                print(rows[-1], flush=True)
                if threads == args.threads[0] and seed < 3:
                    for mutation in ("drop_row", "per_rank_noise"):
                        bad = run(work / f"{mutation}_{seed}", 2, seed, threads, mutation)
                        rows.append({"seed": seed, "threads": threads, "trainer": mutation,
                                     "relative_l2": weights_relative_difference(one, bad)})
                        print(rows[-1], flush=True)
    amplification = optimizer_amplification()
    summary = {}
    for trainer in ("real", "drop_row", "per_rank_noise"):
        values = [r["relative_l2"] for r in rows if r["trainer"] == trainer]
        summary[trainer] = {"runs": len(values), "min": min(values), "max": max(values)}
    lines = ["Global relative L2 distance of the weights (model + EMA) of `mnist_tiny` (6 iterations) trained on 2 "
             "processes against 1 process, same seed; the broken trainers are `tests/training/mutant_trainer.py`.",
             "", "| trainer | runs | min | max |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['runs']} | {v['min']:.3e} | {v['max']:.3e} |" for k, v in summary.items()]
    lines += ["", "| seed | threads | trainer | relative L2 |", "|---:|---:|---|---:|"]
    lines += [f"| {r['seed']} | {r['threads']} | {r['trainer']} | {r['relative_l2']:.3e} |" for r in rows]
    lines += ["", "Where the SpectrumMLP's drift comes from (one process, `mnist_tiny`, 10 steps; gradient of the whole "
              "batch vs the mean of its two halves; relative L2 of the weights):", "",
              "| optimizer | network | spectrum net |", "|---|---:|---:|"]
    lines += [f"| {r['optimizer']} | {r['net']:.2e} | {r['spectrum_net']:.2e} |" for r in amplification]
    write_results("distributed_spread", {"device": "cpu", "summary": summary, "rows": rows,
                                         "optimizer_amplification": amplification}, "\n".join(lines) + "\n",
                  Path(args.out))
    print("\n".join(lines[:8]))


if __name__ == "__main__":
    main()
