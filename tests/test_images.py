"""Image training on the MNIST digits (tiny configurations), image metrics and the image commands."""

from __future__ import annotations

import pytest
import torch

from gmfm.cli.images import (
    export_pipeline,
    load_image_model,
    load_image_recipe,
    make_image_loss,
    sample_digits,
    train_image_model,
)
from gmfm.cli.main import main
from gmfm.data.mnist import load_mnist_splits
from gmfm.losses import GMFlowLoss
from gmfm.metrics.images import frechet_distance, precision_recall, saturation, train_classifier, classifier_outputs
from reference_cases import REPO_ROOT

TINY = REPO_ROOT / "configs" / "mnist_tiny.toml"


@pytest.fixture(scope="module")
def digits():
    return load_mnist_splits()


def test_mnist_splits(digits):
    assert digits.train_images.shape == (4000, 1, 32, 32) and digits.test_images.shape == (1000, 1, 32, 32)
    assert digits.train_labels.bincount().tolist() == [400] * 10 and digits.test_labels.bincount().tolist() == [100] * 10
    assert float(digits.train_images.min()) == -1.0 and float(digits.train_images.max()) == 1.0
    assert bool((digits.train_images[..., :2, :] == -1).all())  # the 2-pixel padding is background


def test_feature_metrics():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 8, generator=g, dtype=torch.float64)
    b = torch.randn(500, 8, generator=g, dtype=torch.float64)
    assert abs(frechet_distance(a, a)) < 1e-6
    assert frechet_distance(a, b) < 0.5 < frechet_distance(a, b + 2.0)
    assert precision_recall(a, a) == (1.0, 1.0)
    assert precision_recall(a, a + 100.0) == (0.0, 0.0)
    assert saturation(torch.tensor([[-1.0, 0.99, 0.5, 0.0]])) == (0.5, pytest.approx(0.6225))


def test_classifier_learns_digits(digits):
    model = train_classifier(digits.train_images, digits.train_labels, epochs=2)
    feats, preds = classifier_outputs(model, digits.test_images)
    assert feats.shape == (1000, 128)
    assert float((preds == digits.test_labels).double().mean()) > 0.8


def test_recipe_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config .*missing.toml does not exist"):
        load_image_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.read_text().replace("[loss]", "[loss]\ntransition = 0.5"))
    with pytest.raises(ValueError, match=r"unknown \[loss\] keys \['transition'\]"):
        load_image_recipe(bad)
    worse = tmp_path / "worse.toml"
    worse.write_text(TINY.read_text().replace("[train]", "[train]\nepochs = 3"))
    with pytest.raises(ValueError, match=r"unknown \[train\] keys \['epochs'\]"):
        load_image_recipe(worse)


def test_spectral_loss_trains_only_the_spectrum_net(digits):
    recipe = load_image_recipe(TINY)
    from gmfm.cli.images import build_image_model

    torch.manual_seed(0)
    model = build_image_model(recipe.model, recipe.spectrum)
    batch = {"x0": digits.train_images[:8], "labels": digits.train_labels[:8]}
    with_spectrum = make_image_loss(recipe, 10)
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


def test_tiny_training_sampling_and_pipeline_export(tmp_path, digits):
    recipe = load_image_recipe(TINY)
    result = train_image_model(recipe, tmp_path / "run", data=digits, progress=False)
    assert result.step == 6 and all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    model, meta = load_image_model(tmp_path / "run")
    assert meta["kind"] == "gmflow" and model.spectrum_net is not None
    labels = torch.tensor([3, 7])
    for solver in ("gmsde2", "gmode2", "euler"):
        x = sample_digits(model, solver, 2, labels, guidance_scale=0.3 if solver != "euler" else 0.0)
        assert x.shape == (2, 1, 32, 32) and bool(torch.isfinite(x).all())
    from gmfm.pipelines import GMDiTPipeline

    pipe = GMDiTPipeline.from_pretrained(export_pipeline(model, tmp_path / "pipe"))
    images = pipe(["seven", "one"], num_inference_steps=2, output_mode="sample", output_type="pt",
                  generator=torch.Generator().manual_seed(0), progress=False).images
    assert images.shape == (2, 1, 32, 32)


def test_image_commands(tmp_path, capsys):
    main(["train-images", "--config", str(TINY), "--out", str(tmp_path / "cli"), "--device", "cpu",
          "--iterations", "3"])
    assert (tmp_path / "cli" / "pipeline" / "model_index.json").exists()
    main(["sample-images", str(tmp_path / "cli"), "--nfe", "2", "--per-class", "2", "--classes", "0", "5",
          "--device", "cpu"])
    assert (tmp_path / "cli" / "grid_gmode2_2.png").exists()
    with pytest.raises(SystemExit):
        main(["sample-images", str(tmp_path / "cli"), "--classes", "12", "--device", "cpu"])
    assert "--classes must be digits 0..9" in capsys.readouterr().err
