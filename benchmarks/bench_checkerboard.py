"""The fixed-budget 2-D checkerboard benchmark (paper Sec. 4.1, Fig. 2), same as ``gmfm bench-2d``.

    python -m benchmarks.bench_checkerboard [--device cuda] [--out benchmarks/results] [--work-dir DIR]

Trains GMFlow (K = 64, transition ratio 0.9) and the flow-matching baseline (same 5 x 512 MLP, L2) for
15,000 iterations at batch 1024 (Adam 2e-4, uniform t, no EMA, seed 0), samples 100,000 points with every
solver at NFE 1, 2, 4, 8, 16, 32 and writes checkerboard.json/.md, checkerboard.png (histograms in the
style of the paper's Fig. 2) and checkerboard_tv.png.
"""

import sys

from gmfm.cli.main import main

if __name__ == "__main__":
    main(["bench-2d", *sys.argv[1:]])
