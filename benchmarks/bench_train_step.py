"""Seconds per training iteration of GMFlow (K = 64, transition loss) vs its flow-matching twin (K = 1, L2).

    python -m benchmarks.bench_train_step [--device cpu] [--batch-size 1024] [--iterations 60]

Same 5 x 512 MLP, batch, optimizer (Adam) and data for both; the target is GMFlow <= 1.1 x FM. Writes
benchmarks/results/train_step.json and .md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .common import RESULTS_DIR, write_results

from gmfm.experiments import build_loss, build_model, load_dataset, load_recipe
from gmfm.math.random import BatchDraws
from gmfm.training import make_optimizer, step_generator


def make_step(kind: str, batch_size: int, device: str):
    """One training iteration of the GMFlow (K = 64) or FM (K = 1) 5 x 512 MLP, as a closure."""
    recipe = load_recipe("checkerboard", kind=kind, train={"batch_size": batch_size})
    data = load_dataset(recipe)
    model = build_model(recipe, data.event_shape, data.num_classes).to(device)
    loss_fn = build_loss(recipe, data.num_classes)
    optimizer = make_optimizer(model, recipe.train)
    rows = slice(0, batch_size)

    def step(i: int) -> None:
        batch = {k: v.to(device) for k, v in data.train.batch(batch_size, step_generator(0, i, 0), rows).items()}
        loss = loss_fn(model, batch, BatchDraws(step_generator(0, i, 1), batch_size)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        float(loss)  # the trainer reads the loss back every step

    return step


def block_seconds(step, start: int, iterations: int, device: str) -> float:
    tic = time.perf_counter()
    for i in range(iterations):
        step(start + i)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - tic) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=10, help="iterations per timed block")
    parser.add_argument("--rounds", type=int, default=20, help="alternating blocks per model; the median is reported")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    args = parser.parse_args()
    steps = {kind: make_step(kind, args.batch_size, args.device) for kind in ("gmflow", "fm")}
    for step in steps.values():  # warm-up
        block_seconds(step, 0, 5, args.device)
    times = {kind: [] for kind in steps}
    for r in range(args.rounds):  # short alternating blocks: both see the same machine state
        for kind, step in steps.items():
            times[kind].append(block_seconds(step, 5 + r * args.iterations, args.iterations, args.device))
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    ratio = median["gmflow"] / median["fm"]
    payload = {"device": args.device, "batch_size": args.batch_size, "seconds_per_iter": median,
               "all_rounds": times, "ratio_gmflow_over_fm": ratio, "target_ratio": 1.1, "met": ratio <= 1.1}
    md = ("| model | seconds / iteration |\n|---|---:|\n"
          f"| GMFlow (K = 64, transition loss) | {median['gmflow']:.4f} |\n"
          f"| flow matching (K = 1, L2) | {median['fm']:.4f} |\n\n"
          f"Ratio GMFlow / FM: {ratio:.3f} (target <= 1.1: {'met' if ratio <= 1.1 else 'NOT met'}); 5 x 512 MLP, "
          f"batch {args.batch_size}, Adam, median over {args.rounds} alternating blocks of {args.iterations} "
          f"iterations on {args.device}.\n")
    _, md_path = write_results("train_step" + ("" if args.device == "cpu" else f"_{args.device}"), payload, md,
                               Path(args.out))
    print(md_path.read_text())


if __name__ == "__main__":
    main()
