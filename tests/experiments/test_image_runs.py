"""Image runs end to end on tiny settings: train, reload, sample with every solver, export a pipeline."""

from __future__ import annotations

import pytest
import torch

from gmfm.data.mnist import load_mnist_splits
from gmfm.experiments import build_loss, build_model, load_recipe, load_run, make_guidance, sample_trained, train_recipe
from gmfm.experiments.export import export_pipeline
from gmfm.losses import GMFlowLoss


def test_spectral_loss_trains_only_the_spectrum_net():
    digits = load_mnist_splits()
    recipe = load_recipe("mnist_tiny")
    model = build_model(recipe, (1, 32, 32), 10)
    batch = {"x0": digits.train_images[:8], "labels": digits.train_labels[:8]}
    with_spectrum = build_loss(recipe, 10)
    without = GMFlowLoss(**{**with_spectrum.__dict__, "spectral_weight": 0.0})
    out = with_spectrum(model, batch, torch.Generator().manual_seed(1))
    assert "spectral" in out.logs
    out.loss.backward()
    grads = [p.grad.clone() for p in model.net.parameters()]
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.spectrum_net.parameters())
    model.zero_grad()
    without(model, batch, torch.Generator().manual_seed(1)).loss.backward()
    for g_with, p in zip(grads, model.net.parameters()):
        torch.testing.assert_close(g_with, p.grad)  # the spectral term adds no gradient to the network


def test_tiny_training_sampling_and_pipeline_export(tmp_path):
    recipe = load_recipe("mnist_tiny", train={"device": "cpu"})
    result = train_recipe(recipe, tmp_path / "run", progress=False)
    assert result.step == 6 and all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    trained = load_run(tmp_path / "run")
    assert trained.kind == "gmflow" and trained.spectrum_net is not None and trained.recipe == recipe
    assert trained.event_shape == (1, 32, 32) and trained.num_classes == 10 and trained.class_names[3] == "three"
    labels = torch.tensor([3, 7])
    for solver in ("gmsde2", "gmode2", "euler"):
        guidance = make_guidance(0.3) if solver != "euler" else make_guidance(cfg_scale=2.0)
        x = sample_trained(trained, solver, 2, labels=labels, guidance=guidance)
        assert x.shape == (2, 1, 32, 32) and bool(torch.isfinite(x).all())
    from gmfm.pipelines import GMDiTPipeline

    pipe = GMDiTPipeline.from_pretrained(export_pipeline(trained, tmp_path / "pipe"))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["seven", "one"], num_inference_steps=2, output_mode="sample", output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 1, 32, 32)


def test_a_seeded_sample_set_does_not_depend_on_the_batching(tmp_path):
    train_recipe(load_recipe("mnist_tiny", train={"device": "cpu", "iterations": 2}), tmp_path / "run", progress=False)
    trained = load_run(tmp_path / "run")
    labels = torch.arange(6) % 10
    for solver in ("gmsde2", "gmode2"):
        whole = sample_trained(trained, solver, 2, labels=labels, seed=5, batch_size=6)
        parts = torch.cat([sample_trained(trained, solver, 2, labels=labels[i:i + 2], seed=5, first_index=i,
                                          batch_size=2) for i in (0, 2, 4)])
        torch.testing.assert_close(whole, parts, atol=1e-4, rtol=0)  # float summation order only


def test_a_slim_checkpoint_loads_as_the_full_one_and_cannot_be_mistaken_for_it(tmp_path):
    from gmfm.training import load_checkpoint, slim_checkpoint

    train_recipe(load_recipe("mnist_tiny", train={"device": "cpu", "iterations": 2, "ema": "karras"}), tmp_path / "run",
                 progress=False)
    full = load_run(tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").state_dict("ema")
    labels = torch.arange(4) % 10
    reference = sample_trained(full, "gmsde2", 2, labels=labels, seed=3)
    same = slim_checkpoint(tmp_path / "run", tmp_path / "slim" / "checkpoint.safetensors")
    half = slim_checkpoint(tmp_path / "run", tmp_path / "half" / "checkpoint.safetensors", dtype=torch.float16)
    slim = load_checkpoint(same)
    assert slim.step == full.checkpoint.step
    assert {k.split("/")[0] for k in slim.tensors} == {"ema"}  # no raw weights, no optimizer state
    torch.testing.assert_close(sample_trained(load_run(same), "gmsde2", 2, labels=labels, seed=3), reference,
                               rtol=0, atol=0)  # the EMA weights, bit for bit
    assert load_checkpoint(half).metadata["weights_dtype"] == "float16"
    assert (tmp_path / "half" / "checkpoint.safetensors").stat().st_size < 0.6 * same.stat().st_size
    rounded = sample_trained(load_run(half), "gmsde2", 2, labels=labels, seed=3)
    assert rounded.dtype == torch.float32 and 0 < (rounded - reference).abs().max() < 0.05
    with pytest.raises(ValueError, match="dtype"):
        slim_checkpoint(tmp_path / "run", tmp_path / "bad.safetensors", dtype=torch.int8)
