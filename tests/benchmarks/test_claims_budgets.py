"""The claims study keeps what a run showed at an earlier budget when it is trained further, and never puts
seeds trained to different budgets into one target."""

import json
from pathlib import Path

import pytest

from benchmarks import claims

TESTBED = claims.TESTBEDS["mnist_latent"]


def write_point(folder: Path, key: str, iteration: int, fd: float) -> None:
    """A minimal point file: a val point of the solver sweep or a test point (``key`` starts with the split)."""
    split, solver, nfe = key.split("_")
    point = {"key": key, "iteration": iteration, "solver": solver, "nfe": int(nfe), "guidance": None}
    if split == "val":
        point["val"] = {"fd": fd}
    else:
        point["test"] = {"fd": fd, "fd_sd": 1.0, "precision": 0.9, "recall": 0.8}
        point["accuracy"] = 0.95
    (folder / "points").mkdir(parents=True, exist_ok=True)
    (folder / "points" / f"{key}.json").write_text(json.dumps(point))
    (folder / "points" / f"{key}.npz").write_bytes(b"samples")


@pytest.fixture
def steps(monkeypatch):
    """{run folder: its checkpoint's training step}, read by the study instead of a checkpoint file."""
    table: dict[Path, int] = {}
    monkeypatch.setattr(claims, "checkpoint_step", lambda folder: table.get(Path(folder)))
    return table


def test_points_of_an_earlier_checkpoint_are_archived_and_still_readable(tmp_path, steps):
    run = tmp_path / "gmflow_s0"
    write_point(run, "val_gmode2_8", 3000, 20.0)
    write_point(run, "val_gmode_8", 4000, 18.0)
    steps[run] = 4000
    claims.archive_points(run)
    assert sorted(p.name for p in (run / "points_it3000").iterdir()) == ["val_gmode2_8.json", "val_gmode2_8.npz"]
    assert [p["key"] for p in claims.load_points(run, "val_")] == ["val_gmode_8"]
    assert [p["key"] for p in claims.load_points(run, "val_", 3000)] == ["val_gmode2_8"]
    assert claims.best_solver(run, claims.GM_SOLVERS, 8) == "gmode"
    assert claims.best_solver(run, claims.GM_SOLVERS, 8, step=3000) == "gmode2"
    claims.archive_points(run)  # idempotent: the current points stay where they are
    assert (run / "points" / "val_gmode_8.json").is_file()


def test_targets_combine_only_seeds_at_the_same_budget(tmp_path, steps):
    folder = tmp_path / TESTBED.name
    # Seed 0 trained to 4,000 iterations (its 3,000-iteration points archived), seed 1 still at 3,000.
    for seed, fds in ((0, {3000: (30.0, 25.0), 4000: (10.0, 12.0)}), (1, {3000: (21.0, 20.0)})):
        for m, i in (("gmflow", 0), ("fm", 1)):
            run = folder / f"{m}_s{seed}"
            solver = "gmode2" if m == "gmflow" else "euler"
            for iteration, pair in sorted(fds.items()):  # as ``evaluate`` does: archive, then measure
                steps[run] = iteration
                claims.archive_points(run)
                write_point(run, f"val_{solver}_8", iteration, pair[i])
                write_point(run, f"test_{solver}_8", iteration, pair[i])
    gm0, fm0 = folder / "gmflow_s0", folder / "fm_s0"
    budget = claims.pair_budget(gm0, fm0)
    assert budget == 4000
    assert claims.earlier_budgets(gm0, fm0, budget) == [3000]

    now = claims.seeds_at(TESTBED.name, tmp_path, TESTBED, budget)
    assert list(now) == [0]
    assert now[0][1]["T1_nfe8"]["value"] == 10.0 and now[0][1]["T1_nfe8"]["met"] is True

    before = claims.seeds_at(TESTBED.name, tmp_path, TESTBED, 3000)
    assert list(before) == [0, 1]
    combined = claims.combine_seeds({s: r[1] for s, r in before.items()})["T1_nfe8"]
    assert combined["value"] == pytest.approx(25.5) and combined["bound"] == pytest.approx(22.5)
    assert combined["met"] is False
    assert {s: e["met"] for s, e in combined["seeds"].items()} == {"0": False, "1": False}


def test_a_pair_mid_curve_has_no_common_budget(tmp_path, steps):
    steps[tmp_path / "a"], steps[tmp_path / "b"] = 5000, 4000
    assert claims.pair_budget(tmp_path / "a", tmp_path / "b") is None
