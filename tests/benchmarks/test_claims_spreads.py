"""Every target of the claims study carries a spread: the saturation's standard error, and an estimated spread
per compared precision of the FD-at-equal-precision curve."""

import json
import math

import numpy as np
import pytest
import torch

from benchmarks import claims


def test_saturation_sd_is_the_standard_error_of_the_per_image_mean():
    # Grey images have saturation 0, pure red ones 1: a half-half set has per-image sd sqrt(1/2 * n / (n - 1)).
    n = 10
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 4, 4)
    images = torch.stack([red if i % 2 else torch.zeros(3, 4, 4) for i in range(n)])
    expected = math.sqrt(0.25 * n / (n - 1))
    assert claims.saturation_sd(images, n) == pytest.approx(expected / math.sqrt(n))
    # A subset stands for more samples: the error shrinks with the number of samples it represents.
    assert claims.saturation_sd(images, 4 * n) == pytest.approx(expected / math.sqrt(4 * n))


def test_kept_images_give_the_saturation_sd_of_an_older_point(tmp_path):
    run = tmp_path / "gmflow_s0"
    (run / "points").mkdir(parents=True)
    rng = np.random.default_rng(0)
    kept = rng.integers(0, 256, size=(20, 3, 8, 8), dtype=np.uint8)
    np.savez_compressed(run / "points" / "test_gmode_6.npz", images=kept)
    old = {"key": "test_gmode_6", "iteration": 100, "num_samples": 1000}
    from_images = torch.from_numpy(kept).float() / 127.5 - 1
    assert claims.kept_saturation_sd(run, old) == pytest.approx(claims.saturation_sd(from_images, 1000))
    assert claims.kept_saturation_sd(run, {**old, "saturation_sd": 0.5}) == 0.5  # a stored spread wins
    assert claims.kept_saturation_sd(run, {**old, "key": "missing"}) is None


def sweep_points(curve):
    return [{"test": {"precision": p, "fd": fd}} for p, fd in curve]


def test_curve_rows_call_a_gap_significant_only_beyond_twice_its_estimated_spread():
    pg = sweep_points([(0.80, 10.0), (0.90, 40.0)])
    cfg = sweep_points([(0.80, 12.0), (0.90, 400.0)])
    dominated, rows = claims.curve_dominance(pg, cfg, pg_sd=1.0, cfg_sd=1.0)
    assert dominated is True and len(rows) == 9
    first, last = rows[0], rows[-1]
    assert first["spread"] == pytest.approx(math.hypot(math.sqrt(10.0), math.sqrt(12.0)))
    assert first["significant"] is False  # 2 apart, spread about 4.7
    assert last["spread"] == pytest.approx(math.hypot(math.sqrt(40.0), math.sqrt(400.0)))
    assert last["significant"] is True  # 360 apart, spread about 21
    summary = claims.curve_summary({"0": rows})
    assert summary.startswith("s0: PG's FD above CFG's at 0 of 9 precisions (0 significant), at or below at 9 (")
    # Without the coefficients the rows carry no spread, and none is called significant.
    _, bare = claims.curve_dominance(pg, cfg)
    assert "spread" not in bare[0] and "(0 significant), at or below at 9 (0 significant)" in claims.curve_summary(bare)


def test_fd_sd_coefficient_is_the_median_over_the_chosen_solvers_test_points(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "checkpoint_step", lambda folder: 100)
    run = tmp_path / "fm_s0"
    points = {"val_euler_8": {"val": {"fd": 20.0}},
              "test_euler_8": {"test": {"fd": 16.0, "fd_sd": 8.0}},  # 8 / 4 = 2
              "test_euler_8_cfg1.5": {"test": {"fd": 25.0, "fd_sd": 15.0}},  # 3
              "test_euler_8_cfg2": {"test": {"fd": 100.0, "fd_sd": 40.0}},  # 4
              "test_unipc_8": {"test": {"fd": 1.0, "fd_sd": 100.0}}}  # another solver: not counted
    (run / "points").mkdir(parents=True)
    for key, body in points.items():
        solver = "unipc" if "unipc" in key else "euler"
        guidance = {"cfg": 1.5} if "cfg" in key else None
        body.update(key=key, iteration=100, solver=solver, nfe=8, guidance=guidance)
        (run / "points" / f"{key}.json").write_text(json.dumps(body))
    assert claims.fd_sd_coefficient(run, 8) == pytest.approx(3.0)
    assert claims.fd_sd_coefficient(run, 6) is None


def test_paired_bootstrap_shares_the_real_resamples_so_their_noise_cancels():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 4, generator=g)
    near, far = torch.randn(300, 4, generator=g) + 0.1, torch.randn(300, 4, generator=g) + 0.5
    a, b = claims.bootstrap_spread(real, near, 20), claims.bootstrap_spread(real, far, 20)
    assert len(a["fd_boot"]) == 20 and a["fd_sd"] == pytest.approx(float(np.std(a["fd_boot"], ddof=1)))
    point = lambda s: {"test": s}  # noqa: E731
    # The same generated set against itself: every replicate resamples both sides identically, whatever the
    # number of replicates (the first 20 of 40 are the 20).
    assert claims.difference_sd(point(a), point(claims.bootstrap_spread(real, near, 40))) == (0.0, True)
    paired, is_paired = claims.difference_sd(point(a), point(b))
    assert is_paired and paired == pytest.approx(float(np.std(np.subtract(a["fd_boot"], b["fd_boot"]), ddof=1)))
    # Points without replicates (measured before they were kept) fall back to the independent combination.
    old = {k: v for k, v in b.items() if not k.endswith("_boot")}
    assert claims.difference_sd(point(a), point(old)) == (pytest.approx(math.hypot(a["fd_sd"], b["fd_sd"])), False)
    assert claims.difference_sd(point(a), None) == (None, False)
    precision, _ = claims.difference_sd(point(a), point(b), "precision")
    assert precision == pytest.approx(float(np.std(np.subtract(a["precision_boot"], b["precision_boot"]), ddof=1)))


def test_a_target_says_whether_its_spread_is_paired_and_seeds_keep_it():
    t = claims.target(10.0, 14.0, "lower", 1.5, paired=True)
    assert t["met"] and t["significant"] and t["spread_paired"]
    combined = claims.combine_seeds({0: {"T1": t}, 1: {"T1": claims.target(12.0, 13.0, "lower", 2.0)}})["T1"]
    assert combined["spread_paired"] is False  # one seed's spread is not paired
    assert combined["seeds"]["0"]["spread_paired"] is True and combined["seeds"]["1"]["spread_paired"] is False
    assert "(paired)" in claims.targets_md({"T1": t}) and "(paired)" not in claims.targets_md({"T1": combined})


def test_the_verdict_table_gives_each_testbeds_verdict_with_its_numbers_and_seeds():
    two_seeds = claims.combine_seeds({0: {"T1_nfe4": claims.target(10.0, 20.0, "lower", 2.0, paired=True)},
                                      1: {"T1_nfe4": claims.target(12.0, 22.0, "lower", 2.0, paired=True)}})
    curve = {"value": [{"pg_fd": 5.0, "cfg_fd": 4.0}], "bound": "CFG", "better": "lower", "met": False,
             "seeds": {"0": {"met": False}}}
    testbeds = {"a": {"targets": {"T4_x": claims.target(3.0, 2.0, "lower", 4.0), **two_seeds}},
                "b": {"targets": {"T3_curve": curve}}, "untrained": {}}
    rows = {line.split(" | ")[0].strip("| "): line for line in claims.verdicts_md(testbeds).splitlines()}
    assert "untrained" not in rows["target"]
    assert list(rows)[2:] == ["T1_nfe4", "T3_curve", "T4_x"]  # sorted by target, whatever order a testbed has
    assert "**met**: 11 vs 21" in rows["T1_nfe4"] and "significant (2 seeds)" in rows["T1_nfe4"]
    assert "not met: 3 vs 2 +- 4 (1 seed)" in rows["T4_x"] and "significant" not in rows["T4_x"]
    assert "not met (curve; 1 seed)" in rows["T3_curve"] and rows["T3_curve"].count("|") == 4
    assert claims.verdicts_md({"untrained": {}}) == ""
