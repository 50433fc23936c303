"""The trainer: exact resume, atomic checkpoints with clear errors, non-finite losses, EMA schedules."""

from __future__ import annotations

import csv

import pytest
import torch

from gmfm.data import ToyTrainingData, make_toy_dataset
from gmfm.losses import GMFlowLoss
from gmfm.models import GMFlowMLP2D
from gmfm.training import (
    CHECKPOINT_NAME,
    EMA,
    NonFiniteLossError,
    TrainConfig,
    karras_ema_beta,
    load_checkpoint,
    rampup_ema_beta,
    save_checkpoint,
    train,
)

BOARD = ToyTrainingData(make_toy_dataset("checkerboard"))
batches = BOARD


class DyingData:
    """Training data that raises when asked for the batch of one iteration (a killed run)."""

    def __init__(self, die_at_batch: int) -> None:
        self.calls, self.die_at = 0, die_at_batch

    def batch(self, batch_size, generator, rows):
        self.calls += 1
        if self.calls == self.die_at:
            raise Interrupt
        return BOARD.batch(batch_size, generator, rows)


def small_model():
    torch.manual_seed(0)
    return GMFlowMLP2D(num_components=4, hidden_dim=32, num_layers=2)


def config(**kw):
    base = dict(iterations=20, batch_size=64, lr=1e-3, checkpoint_every=5, log_every=5, ema="karras",
                warmup_iters=4, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


class Interrupt(Exception):
    pass


def test_resume_continues_with_exactly_the_uninterrupted_losses(tmp_path):
    full = train(small_model(), GMFlowLoss(), batches, config(), tmp_path / "full", progress=False)
    with pytest.raises(Interrupt):  # killed in iteration 13, after the checkpoint at step 10
        train(small_model(), GMFlowLoss(), DyingData(14), config(), tmp_path / "cut", progress=False)
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME).step == 10  # lost less than one interval
    resumed = train(small_model(), GMFlowLoss(), batches, config(), tmp_path / "cut", progress=False)
    assert sorted(resumed.losses) == list(range(10, 20))
    assert [resumed.losses[s] for s in range(10, 20)] == [full.losses[s] for s in range(10, 20)]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        assert torch.equal(a, b)
    with open(tmp_path / "cut" / "log.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [5, 10, 15, 20]  # rows after the checkpoint were rewritten, not duplicated


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = small_model()
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, model, 7)
    import gmfm.training.checkpoint as ckpt_module

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, 8)
    assert load_checkpoint(path).step == 7
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # no temporary file left behind


def test_checkpoint_errors_name_the_file_and_the_problem(tmp_path):
    model = small_model()
    path = save_checkpoint(tmp_path / "a.safetensors", model, 3)
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.safetensors is truncated or corrupt"):
        load_checkpoint(truncated)
    other = GMFlowMLP2D(num_components=8, hidden_dim=32, num_layers=2)
    with pytest.raises(ValueError, match=r"a.safetensors does not match the GMFlowMLP2D \(model\): shape mismatch "
                                         r"proj.weight: checkpoint \(13, 32\) vs model \(25, 32\)"):
        load_checkpoint(path).load_into(other)
    deeper = GMFlowMLP2D(num_components=4, hidden_dim=32, num_layers=3)
    with pytest.raises(ValueError, match=r"missing \['net.4.bias', 'net.4.weight'\]"):
        load_checkpoint(path).load_into(deeper)
    with pytest.raises(ValueError, match="has no 'ema' weights"):
        load_checkpoint(path).load_into(model, "ema")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def loss_with_nan(model, batch, draws):
        out = GMFlowLoss()(model, batch, draws)
        if loss_with_nan.calls == 12:
            out = type(out)(out.loss * float("nan"), out.logs)
        loss_with_nan.calls += 1
        return out

    loss_with_nan.calls = 0
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at iteration 12; the last checkpoint verified to be "
                                                 r"finite and loadable is .*" + CHECKPOINT_NAME + r" \(iteration 10\)"):
        train(small_model(), loss_with_nan, batches, config(), tmp_path, progress=False)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME).step == 10


def test_ema_schedules():
    assert karras_ema_beta(0) == 0.0  # the first update copies the weights
    assert karras_ema_beta(99, gamma=7.0) == pytest.approx((1 - 1 / 100) ** 8)
    # ramp-up: half-life min(ema_kimg * 1000, images_seen * rampup)
    assert rampup_ema_beta(9, batch_size=100, ema_kimg=30_000, rampup=0.05) == pytest.approx(0.5 ** (100 / 50))
    assert rampup_ema_beta(10**9, 100, 10, 0.05) == pytest.approx(0.5 ** (100 / 10_000))
    model = torch.nn.Linear(2, 2)
    ema = EMA(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.model.weight.clone()
    ema.update(model, 0.75)
    torch.testing.assert_close(ema.model.weight, 0.75 * before + 0.25 * model.weight)


def test_warmup_and_config_validation():
    cfg = TrainConfig(iterations=10, batch_size=4, lr=1.0, warmup_iters=10)
    assert cfg.lr_at(0) == pytest.approx(1e-3) and cfg.lr_at(5) == pytest.approx(1e-3 + 0.999 * 0.5)
    assert cfg.lr_at(20) == 1.0
    with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
        TrainConfig(iterations=0, batch_size=4)
    with pytest.raises(ValueError, match="ema must be"):
        TrainConfig(iterations=1, batch_size=4, ema="fast")


def test_training_reduces_the_loss():
    result = train(small_model(), GMFlowLoss(), batches, config(iterations=150, checkpoint_every=1000,
                                                                 log_every=1000), None, progress=False)
    early = sum(result.losses[s] for s in range(10)) / 10
    late = sum(result.losses[s] for s in range(140, 150)) / 10
    assert late < early - 0.2


def test_weight_decay_spares_biases_and_norms_and_8bit_adamw_needs_bitsandbytes():
    from gmfm.training import make_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    optimizer = make_optimizer(model, TrainConfig(iterations=1, batch_size=1, weight_decay=0.05))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and {p.dim() for p in decay["params"]} == {2}
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 4  # 2 biases, LayerNorm weight and bias
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"optimizer 'adamw8bit' needs bitsandbytes: pip install 'gmfm\[bnb\]'"):
            make_optimizer(model, TrainConfig(iterations=1, batch_size=1, optimizer="adamw8bit"))
