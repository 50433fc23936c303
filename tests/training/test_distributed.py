"""Distributed training under torchrun (2 processes, gloo on the CPU): the same weights as one process,
world-size independent checkpoints, gradient accumulation, stop signals and dying peers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from gmfm.training import CHECKPOINT_NAME, load_checkpoint, weights_relative_difference

TINY = ["train-images", "--config", "mnist_tiny", "--device", "cpu"]


def gmfm(*args: str, processes: int = 1, check: bool = True, **kw) -> subprocess.CompletedProcess:
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    env = {"OMP_NUM_THREADS": "1", **__import__("os").environ}
    return subprocess.run([*head, "-m", "gmfm", *args], capture_output=True, text=True, check=check, env=env, **kw)


from stats import WORLD_SIZE_BOUND as BOUND  # noqa: E402  (measured spread: see stats.py)
MUTANT = Path(__file__).with_name("mutant_trainer.py")


def logged(folder: Path) -> list[dict[str, float]]:
    import csv

    with open(folder / "log.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def assert_same_log(a: Path, b: Path) -> None:
    """Every column of log.csv (loss, lr, grad norm and the loss's logs) agrees: each is reduced over processes."""
    rows_a, rows_b = logged(a), logged(b)
    assert [r.keys() for r in rows_a] == [r.keys() for r in rows_b] and len(rows_a) > 0
    for ra, rb in zip(rows_a, rows_b):
        for key in ra:
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-7), key


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "one"
    gmfm(*TINY, "--out", str(out))
    return out


def test_two_processes_give_the_weights_and_log_of_one(one_process, tmp_path):
    run = gmfm(*TINY, "--out", str(tmp_path / "two"), processes=2)
    assert run.stdout.count("trained to iteration 6") == 1  # rank 0 reports, once
    assert weights_relative_difference(one_process, tmp_path / "two") < BOUND
    assert_same_log(one_process, tmp_path / "two")
    assert load_checkpoint(tmp_path / "two" / CHECKPOINT_NAME).step == 6


@pytest.mark.parametrize("mutation", ["drop_row", "per_rank_noise"])
def test_the_comparison_catches_a_broken_trainer(one_process, tmp_path, mutation):
    """The bound is not loose: a trainer that loses one row of a process's share, or draws its noise per
    process, lands far outside it."""
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(MUTANT),
                    mutation, *TINY, "--out", str(tmp_path / "bad")], check=True, capture_output=True,
                   env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
    assert weights_relative_difference(one_process, tmp_path / "bad") > 10 * BOUND


def test_every_gradient_is_the_same_for_one_or_two_shards():
    """The losses, the spectral one included, are world-size invariant at equal weights: the gradient of
    the whole batch equals the mean of its two halves' (what 2 processes all-reduce) up to rounding, for
    the network and the SpectrumMLP alike. (The SpectrumMLP's weights still drift more than the network's
    between world sizes: Adam's per-element normalisation amplifies rounding in its sign-flipping noisy
    gradients; with SGD the two drift alike: benchmarks/results/distributed_spread.md.)"""
    from gmfm.experiments import build_loss, build_model, load_dataset, load_recipe
    from gmfm.math.random import BatchDraws
    from gmfm.training import LossModule, step_generator

    recipe = load_recipe("mnist_tiny")
    dataset = load_dataset(recipe)
    model = build_model(recipe, dataset.event_shape, dataset.num_classes)
    with torch.no_grad():  # a non-zero spectrum head, so that its whole MLP gets gradients
        model.spectrum_net.mlp[-1].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    module, batch = LossModule(model, build_loss(recipe, dataset.num_classes)), recipe.train.batch_size

    def gradients(parts: list[slice]) -> dict[str, torch.Tensor]:
        module.zero_grad()
        for part in parts:
            out = module(dataset.train.batch(batch, step_generator(0, 3, 0), part),
                         BatchDraws(step_generator(0, 3, 1), batch, part))
            (out.loss / len(parts)).backward()
        return {k: p.grad.double().clone() for k, p in module.named_parameters() if p.grad is not None}

    whole, halves = gradients([slice(0, batch)]), gradients([slice(0, batch // 2), slice(batch // 2, batch)])
    for part in ("model.net.", "model.spectrum_net."):
        keys = [k for k in whole if k.startswith(part)]
        norm = sum(float(whole[k].square().sum()) for k in keys) ** 0.5
        assert norm > 0, part
        diff = sum(float((whole[k] - halves[k]).square().sum()) for k in keys) ** 0.5
        assert diff / norm < 1e-5, part  # measured: ~1e-7 for both


def test_a_two_process_checkpoint_resumes_in_one_process(one_process, tmp_path):
    gmfm(*TINY, "--out", str(tmp_path / "run"), "--iterations", "3", processes=2)
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME).step == 3
    gmfm(*TINY, "--out", str(tmp_path / "run"))  # the recipe's 6 iterations, one process
    assert weights_relative_difference(one_process, tmp_path / "run") < BOUND
    assert_same_log(one_process, tmp_path / "run")


def test_gradient_accumulation_is_the_same_step(one_process, tmp_path):
    gmfm(*TINY, "--out", str(tmp_path / "micro"), "--micro-batch-size", "2")
    assert_same_log(one_process, tmp_path / "micro")
    assert weights_relative_difference(one_process, tmp_path / "micro") < BOUND


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gmfm", *TINY, "--out", str(out), "--iterations", "100000",
                             "--checkpoint-every", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "log.csv").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "stopped at iteration" in stdout
    step = load_checkpoint(out / CHECKPOINT_NAME).step
    assert f"stopped at iteration {step} by a signal" in stdout and step > 0


def test_a_dying_process_stops_the_others_with_a_message(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gmfm", *TINY,
           "--out", str(out), "--iterations", "100000", "--checkpoint-every", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / CHECKPOINT_NAME).exists() and time.time() < deadline:
        time.sleep(0.1)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    subprocess.run(["kill", "-9", workers[-1]])
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert "lost the other processes of the run" in output or "exitcode: -9" in output
    assert load_checkpoint(out / CHECKPOINT_NAME).step % 5 == 0  # the last checkpoint is intact


def test_bf16_autocast_trains_float32_weights(tmp_path):
    gmfm(*TINY, "--out", str(tmp_path / "bf16"), "--iterations", "3", "--mixed-precision", "bf16")
    ckpt = load_checkpoint(tmp_path / "bf16" / CHECKPOINT_NAME)
    weights = [t for k, t in ckpt.tensors.items() if k.startswith(("model/", "ema/"))]
    assert weights and all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in weights)
