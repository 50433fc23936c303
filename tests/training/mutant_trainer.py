"""``gmfm`` with a deliberately broken trainer, to show that the distributed tests can fail.

    python -m torch.distributed.run --nproc_per_node=2 tests/training/mutant_trainer.py MUTATION <gmfm args>

MUTATION:
    drop_row        the last process trains on its share minus one row
    per_rank_noise  each process draws its loss randomness (noise, noise levels, label dropout) from a
                    generator of its own instead of slicing the global batch's draws
    none            the real trainer
"""

from __future__ import annotations

import os
import sys

import gmfm.training.trainer as trainer
from gmfm.cli.main import main

MUTATIONS = ("drop_row", "per_rank_noise", "none")


def mutate(name: str) -> None:
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if name == "drop_row":
        local_rows = trainer._local_rows

        def fewer_rows(config, dist):
            rows = local_rows(config, dist)
            if dist.rank == dist.world_size - 1:
                rows[-1] = slice(rows[-1].start, rows[-1].stop - 1)
            return rows

        trainer._local_rows = fewer_rows
    elif name == "per_rank_noise":
        step_generator = trainer.step_generator

        def own_generator(seed, step, stream=0, device="cpu"):
            return step_generator(seed + (rank + 1) * world * (stream == 1), step, stream, device)

        trainer.step_generator = own_generator
    elif name != "none":
        raise SystemExit(f"unknown mutation {name!r}; one of {MUTATIONS}")


if __name__ == "__main__":
    mutate(sys.argv[1])
    main(sys.argv[2:])
