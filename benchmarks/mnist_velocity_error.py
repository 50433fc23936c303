"""Mean-velocity error of the two trained MNIST models on held-out digits, per noise level.

    python -m benchmarks.mnist_velocity_error [--work-dir outputs/mnist] [--out benchmarks/results]

Needs the runs of bench_mnist.py. For 500 held-out digits and a fixed noise draw, the mean squared error
between the predicted mean velocity (the GM mean for GMFlow) and u = noise - x0 at x_t = (1 - sigma) x0 +
sigma noise, with the true labels and with the null label. Tells whether a gap between the models lies in
the network or in the sampler. Writes mnist_velocity_error.json / .md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gmfm.data.mnist import load_mnist_splits
from gmfm.experiments import load_run

from .common import RESULTS_DIR, mean_velocity_error, write_results

SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.97)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="outputs/mnist")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument("--num", type=int, default=500, help="held-out digits")
    args = parser.parse_args()
    data = load_mnist_splits()
    x0, labels = data.test_images[: args.num], data.test_labels[: args.num]
    null = torch.full_like(labels, 10)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    models = {kind: load_run(Path(args.work_dir) / kind).model for kind in ("gmflow", "fm")}
    rows = []
    for s in SIGMAS:
        row = {"sigma": s}
        for kind, model in models.items():
            for tag, lab in (("cond", labels), ("uncond", null)):
                row[f"{kind}_{tag}"] = mean_velocity_error(model, x0, lab, noise, s)
        row["gmflow_over_fm_cond"] = row["gmflow_cond"] / row["fm_cond"]
        rows.append(row)
        print(row, flush=True)
    cols = list(rows[0])
    md = ("| " + " | ".join(cols) + " |\n|" + "---:|" * len(cols) + "\n" +
          "".join("| " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |\n" for r in rows))
    write_results("mnist_velocity_error", {"rows": rows, "num": args.num}, md, Path(args.out))


if __name__ == "__main__":
    main()
