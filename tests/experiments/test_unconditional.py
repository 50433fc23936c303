"""Unconditional models end to end: a recipe without labels trains, samples a plain grid, evaluates
without class balance, exports a pipeline called like DDPMPipeline; guidance is one clear error. The
CIFAR-10 recipes run on a fake cifar-10-batches-py folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gmfm.cli.main import main
from gmfm.experiments import load_recipe, load_run, train_recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_cifar10 import fake_cifar  # noqa: E402


def test_an_unconditional_unet_run_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train-images", "--config", "mnist_unet_tiny", "--out", str(run), "--device", "cpu"])
    trained = load_run(run)
    assert trained.num_classes == 0 and trained.recipe.backbone == "unet" and trained.spectrum_net is not None
    main(["sample-images", str(run), "--solver", "gmsde2", "--nfe", "2", "--per-class", "3", "--device", "cpu"])
    assert (run / "grid_gmsde2_nfe2.png").stat().st_size > 1000
    main(["eval-images", str(run), "--num-samples", "8", "--nfe", "2", "--solver", "gmode2", "--features", "pixels",
          "--reference-split", "test", "--device", "cpu", "--save-samples"])
    result = json.loads((run / "eval_gmode2_nfe2_n8_seed0.json").read_text())
    assert result["metrics"]["num_samples"] == 8 and np.isfinite(result["metrics"]["fid"])
    assert (np.load(run / "eval_gmode2_nfe2_n8_seed0.npz")["labels"] == -1).all()
    capsys.readouterr()
    for flag in (["--guidance-scale", "0.3"], ["--cfg-scale", "2"]):
        with pytest.raises(SystemExit):
            main(["sample-images", str(run), "--nfe", "2", "--device", "cpu", *flag])
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "needs a class-conditional model; this run is unconditional" in err

    from gmfm.pipelines import GMUNetPipeline

    pipe = GMUNetPipeline.from_pretrained(run / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=3, generator=[torch.Generator().manual_seed(s) for s in range(3)],
                  num_inference_steps=2, output_type="np").images
    assert images.shape == (3, 32, 32, 1) and images.min() >= 0 and images.max() <= 1
    alone = pipe(batch_size=1, generator=[torch.Generator().manual_seed(1)], num_inference_steps=2,
                 output_type="np").images
    np.testing.assert_allclose(alone[0], images[1], atol=5e-3)  # image i depends on generator i only
    with pytest.raises(ValueError, match="unconditional: class_labels and guidance_scale do not apply"):
        pipe(batch_size=1, guidance_scale=0.3, num_inference_steps=1)


@pytest.mark.parametrize("recipe", ["cifar10_gmflow_k2", "cifar10_fm"])
def test_the_cifar10_recipes_train_on_a_cifar_folder(tmp_path, recipe):
    folder = fake_cifar(tmp_path / "cifar-10-batches-py", per_batch=2)
    r = load_recipe(recipe, data={"root": str(folder)},
                    train={"iterations": 1, "batch_size": 2, "warmup_iters": 0, "device": "cpu"})
    assert r.model["dropout"] == 0.1 and r.data["unconditional"] is True
    result = train_recipe(r, tmp_path / "run", progress=False)
    assert result.step == 1 and np.isfinite(list(result.losses.values())).all()
    trained = load_run(tmp_path / "run")
    assert trained.num_classes == 0 and 35.7e6 < sum(p.numel() for p in trained.model.net.unet.parameters()) < 35.8e6
