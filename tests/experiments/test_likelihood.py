"""The validation NLL (``gmfm eval-nll``): closed form at K = 1, seeded and independent of batching and of
the number of processes, clear errors for runs without a likelihood."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from gmfm.experiments import load_recipe, load_run, train_recipe
from gmfm.experiments.likelihood import draw_levels_and_noise, validation_nll, x0_gm_nll_nats


@pytest.fixture(scope="module")
def k1_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nll") / "k1"
    recipe = load_recipe("mnist_tiny", model={"num_components": 1}, data={"val_per_class": 3},
                         train={"device": "cpu", "iterations": 3})
    train_recipe(recipe, out, progress=False)
    return out


def test_for_k1_the_nll_is_the_closed_form_gaussian_nll(k1_run):
    trained = load_run(k1_run)
    data = trained.recipe  # the run's held-out digits
    from gmfm.experiments import load_dataset

    val = load_dataset(data).split("val")
    x0, labels = val.images[:6], val.labels[:6]
    t, noise = draw_levels_and_noise(range(6), 0, 0, (1, 32, 32))
    nats, _ = x0_gm_nll_nats(trained.model, x0, labels, t, noise)
    # by hand: x0 | x_t ~ N(x_t - t mu_u, (t s)^2) per pixel
    x_t = (1 - t).reshape(-1, 1, 1, 1) * x0.double() + t.reshape(-1, 1, 1, 1) * noise
    with torch.no_grad():
        gm = trained.model(x_t.float(), t.float(), labels)
    mean = x_t - t.reshape(-1, 1, 1, 1) * gm.means[:, 0].double()
    std = t.reshape(-1, 1, 1, 1) * gm.logstds[:, 0].double().exp()
    expected = (0.5 * math.log(2 * math.pi) + std.log() + 0.5 * ((x0.double() - mean) / std).square()).flatten(1).sum(1)
    torch.testing.assert_close(nats, expected, rtol=1e-9, atol=1e-6)


def test_the_nll_is_seeded_and_does_not_depend_on_batching_or_processes(k1_run, tmp_path):
    one = validation_nll(k1_run, split="val", draws=2, batch_size=7, device="cpu", progress=False)
    again = validation_nll(k1_run, split="val", draws=2, batch_size=30, device="cpu", progress=False)
    other = validation_nll(k1_run, split="val", draws=2, seed=1, batch_size=30, device="cpu", progress=False)
    assert one.num_images == 30 and one.dims == 1024 and one.bits_per_dim_spectral is not None
    assert again.bits_per_dim == pytest.approx(one.bits_per_dim, rel=1e-9)
    assert other.bits_per_dim != pytest.approx(one.bits_per_dim, rel=1e-6)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gmfm",
                    "eval-nll", str(k1_run), "--split", "val", "--draws", "2", "--batch-size", "4", "--device", "cpu",
                    "--out", str(tmp_path / "two.json")], check=True, capture_output=True)
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["bits_per_dim"] == pytest.approx(one.bits_per_dim, rel=1e-9)
    assert two["bits_per_dim_spectral"] == pytest.approx(one.bits_per_dim_spectral, rel=1e-9)


def test_runs_without_a_likelihood_get_one_clear_line(tmp_path, capsys):
    from gmfm.cli.main import main

    train_recipe(load_recipe("mnist_fm", model={"patch_size": 8, "num_layers": 1, "num_attention_heads": 1,
                                                "attention_head_dim": 8},
                             train={"device": "cpu", "iterations": 1, "batch_size": 2}), tmp_path / "fm",
                 progress=False)
    with pytest.raises(SystemExit):
        main(["eval-nll", str(tmp_path / "fm"), "--device", "cpu"])
    assert "eval-nll needs a GMFlow run" in capsys.readouterr().err
    train_recipe(load_recipe("mnist_tiny", train={"device": "cpu", "iterations": 1}), tmp_path / "gm", progress=False)
    with pytest.raises(SystemExit):
        main(["eval-nll", str(tmp_path / "gm"), "--split", "val", "--device", "cpu"])
    assert "eval-nll needs the run's held-out data: dataset 'mnist' has no split 'val'" in capsys.readouterr().err
