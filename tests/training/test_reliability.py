"""A run folder belongs to one run; checkpoints are verified; seeded runs are bitwise reproducible, also
when killed with SIGKILL and resumed through the command line."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gmfm.cli.main import main
from gmfm.data import ToyTrainingData, make_toy_dataset
from gmfm.losses import GMFlowLoss
from gmfm.models import GMFlowMLP2D
from gmfm.training import (
    CHECKPOINT_NAME,
    RunLock,
    SettingsChangedError,
    TrainConfig,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
    train,
)

TINY = ["--hidden", "32", "--layers", "2", "--components", "4", "--batch-size", "128", "--checkpoint-every", "40",
        "--log-every", "10", "--device", "cpu", "--warmup", "5", "--seed", "7"]
BOARD = ToyTrainingData(make_toy_dataset("checkerboard"))


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def assert_same_run(a: Path, b: Path) -> None:
    ta, tb = tensors(a / CHECKPOINT_NAME), tensors(b / CHECKPOINT_NAME)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name
    assert (a / "log.csv").read_text() == (b / "log.csv").read_text()


def cli(out: Path, iterations: int) -> list[str]:
    return [sys.executable, "-m", "gmfm", "train-2d", "--out", str(out), "--iterations", str(iterations), *TINY]


def test_identical_seeded_runs_are_bitwise_equal(tmp_path):
    for name in ("a", "b"):
        main(["train-2d", "--out", str(tmp_path / name), "--iterations", "30", *TINY])
    assert_same_run(tmp_path / "a", tmp_path / "b")
    main(["train-2d", "--out", str(tmp_path / "c"), "--iterations", "30", *TINY[:-1], "8"])
    assert not torch.equal(tensors(tmp_path / "a" / CHECKPOINT_NAME)["model/proj.weight"],
                           tensors(tmp_path / "c" / CHECKPOINT_NAME)["model/proj.weight"])  # --seed seeds the init


def test_a_run_killed_with_sigkill_and_resumed_ends_as_the_uninterrupted_one(tmp_path):
    iterations = 400
    subprocess.run(cli(tmp_path / "full", iterations), check=True, capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(cli(cut, iterations), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (cut / CHECKPOINT_NAME).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 0.5))  # a random point after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(cut / CHECKPOINT_NAME).step
    assert killed_at < iterations, "the run finished before it was killed: make it longer"
    subprocess.run(cli(cut, iterations), check=True, capture_output=True)  # takes over the dead run's lock
    assert_same_run(tmp_path / "full", cut)


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, capsys):
    with RunLock(tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            main(["train-2d", "--out", str(tmp_path), "--iterations", "5", *TINY])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and f"is in use by another training run (process {os.getpid()}" in err
    with RunLock(tmp_path):  # released: the folder can be locked again
        pass


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".gmfm-run.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    main(["train-2d", "--out", str(tmp_path), "--iterations", "5", *TINY])
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME).step == 5 and not (tmp_path / ".gmfm-run.lock").exists()


def test_resuming_with_other_settings_lists_the_differences(tmp_path, capsys):
    main(["train-2d", "--out", str(tmp_path), "--iterations", "5", *TINY])
    with pytest.raises(SystemExit):
        main(["train-2d", "--out", str(tmp_path), "--iterations", "10", *TINY, "--transition-ratio", "0.5",
              "--dataset", "rings"])
    err = capsys.readouterr().err
    assert "holds a run with other settings: data.name: 'checkerboard' -> 'rings'; loss.transition_ratio: 0.9 -> 0.5" in err
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME).step == 5  # untouched
    main(["train-2d", "--out", str(tmp_path), "--iterations", "10", *TINY])  # the same settings, longer: fine
    with pytest.raises(SettingsChangedError):
        train(GMFlowMLP2D(num_components=4, hidden_dim=32, num_layers=2), GMFlowLoss(), BOARD,
              TrainConfig(iterations=12, batch_size=8), tmp_path, settings={"other": 1}, progress=False)
    with pytest.raises(SystemExit):  # another seed is another run too
        main(["train-2d", "--out", str(tmp_path), "--iterations", "12", *TINY, "--seed", "3"])
    assert "holds a run with other settings: train.seed: 7 -> 3" in capsys.readouterr().err
    main(["train-2d", "--out", str(tmp_path), "--iterations", "12", *TINY, "--seed", "3", "--allow-changed-settings"])
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME).step == 12


def test_a_flipped_bit_in_a_checkpoint_is_detected(tmp_path):
    model = GMFlowMLP2D(num_components=4, hidden_dim=32, num_layers=2)
    path = save_checkpoint(tmp_path / "c.safetensors", model, 3)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # an exponent bit of the last weight
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="c.safetensors is damaged: its tensor data does not match the checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize("read", [load_checkpoint, read_checkpoint_metadata])
@pytest.mark.parametrize("step", [-1, [], "7", None])
def test_invalid_metadata_is_an_error_naming_the_file(tmp_path, step, read):
    path = tmp_path / "c.safetensors"
    save_file({"model/w": torch.zeros(2)}, str(path),
              metadata={"format": json.dumps("gmfm-checkpoint-v1"), "step": json.dumps(step)})
    with pytest.raises(ValueError, match=r"c.safetensors has an invalid step .* \(expected an integer >= 0\)"):
        read(path)


def test_the_metadata_reader_agrees_with_the_full_load_and_refuses_other_files(tmp_path):
    model = GMFlowMLP2D(num_components=4, hidden_dim=32, num_layers=2)
    path = save_checkpoint(tmp_path / "c.safetensors", model, 17, metadata={"note": "x"})
    assert read_checkpoint_metadata(path) == load_checkpoint(path).metadata
    assert read_checkpoint_metadata(path)["step"] == 17
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="other.safetensors is not a gmfm checkpoint"):
        read_checkpoint_metadata(tmp_path / "other.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="cut.safetensors is truncated or corrupt"):
        read_checkpoint_metadata(tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        read_checkpoint_metadata(tmp_path / "missing.safetensors")


def test_weights_that_are_not_finite_are_never_saved_or_loaded(tmp_path):
    model = GMFlowMLP2D(num_components=4, hidden_dim=32, num_layers=2)
    with torch.no_grad():
        model.proj.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="refusing to save .* weight model/proj.weight holds NaN or inf"):
        save_checkpoint(tmp_path / "c.safetensors", model, 1)
    assert not (tmp_path / "c.safetensors").exists()


def test_leftovers_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".{CHECKPOINT_NAME}.tmp-{dead.pid}"
    leftover.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / CHECKPOINT_NAME, GMFlowMLP2D(num_components=2, hidden_dim=8, num_layers=1), 1)
    assert not leftover.exists()


def test_a_non_finite_loss_stops_with_one_line_naming_the_verified_checkpoint(tmp_path, capsys, monkeypatch):
    from gmfm.losses import flow_losses

    original = flow_losses.GMFlowLoss.__call__
    calls = {"n": 0}

    def exploding(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        return out if calls["n"] < 25 else flow_losses.LossOutput(out.loss * float("nan"), out.logs)

    monkeypatch.setattr(flow_losses.GMFlowLoss, "__call__", exploding)
    with pytest.raises(SystemExit) as exit_info:
        main(["train-2d", "--out", str(tmp_path), "--iterations", "40", *TINY[:-6], "--checkpoint-every", "10",
              "--log-every", "10", "--device", "cpu"])
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("gmfm")]  # the rest is the progress bar
    assert exit_info.value.code == 1 and len(err) == 1 and "Traceback" not in stderr
    assert "the loss is nan at iteration 24; the last checkpoint verified to be finite and loadable is" in err[0]
    assert "(iteration 20)" in err[0] and load_checkpoint(tmp_path / CHECKPOINT_NAME).step == 20
