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
from safetensors import safe_open

from gmfm.training import CHECKPOINT_NAME, load_checkpoint

TINY = ["train-images", "--config", "mnist_tiny", "--device", "cpu"]


def gmfm(*args: str, processes: int = 1, check: bool = True, **kw) -> subprocess.CompletedProcess:
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    env = {"OMP_NUM_THREADS": "1", **__import__("os").environ}
    return subprocess.run([*head, "-m", "gmfm", *args], capture_output=True, text=True, check=check, env=env, **kw)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / CHECKPOINT_NAME), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(("model/", "ema/"))}  # noqa: SIM118


def max_relative_difference(a: Path, b: Path) -> float:
    """max |w_a - w_b| / max(max |w_a|, 1e-3) over every weight tensor (model and EMA)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) / max(float(wa[k].abs().max()), 1e-3) for k in wa)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "one"
    gmfm(*TINY, "--out", str(out))
    return out


def test_two_processes_give_the_weights_of_one(one_process, tmp_path):
    run = gmfm(*TINY, "--out", str(tmp_path / "two"), processes=2)
    assert run.stdout.count("trained to iteration 6") == 1  # rank 0 reports, once
    assert max_relative_difference(one_process, tmp_path / "two") < 1e-4
    assert load_checkpoint(tmp_path / "two" / CHECKPOINT_NAME).step == 6


def test_a_two_process_checkpoint_resumes_in_one_process(one_process, tmp_path):
    gmfm(*TINY, "--out", str(tmp_path / "run"), "--iterations", "3", processes=2)
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME).step == 3
    gmfm(*TINY, "--out", str(tmp_path / "run"))  # the recipe's 6 iterations, one process
    assert max_relative_difference(one_process, tmp_path / "run") < 1e-4


def logged_losses(folder: Path) -> list[float]:
    import csv

    with open(folder / "log.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_gradient_accumulation_is_the_same_step(one_process, tmp_path):
    gmfm(*TINY, "--out", str(tmp_path / "micro"), "--micro-batch-size", "2")
    assert logged_losses(tmp_path / "micro") == pytest.approx(logged_losses(one_process), rel=1e-5)
    # four micro-batches sum in another order; Adam turns near-zero gradients into full-size steps, so
    # the weights agree less tightly than the losses
    assert max_relative_difference(one_process, tmp_path / "micro") < 1e-3


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
    w = weights(tmp_path / "bf16")
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in w.values())
