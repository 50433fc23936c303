"""Latents through a diffusers VAE, image folders, and evaluation at scale (tiny models, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gmfm.data import make_dataset
from gmfm.data.image_folder import adm_center_crop, read_class_index
from gmfm.experiments.evaluation import FeatureMetrics, balanced_labels, evaluate_run
from gmfm.experiments.latents import cache_latents, decode_latents
from gmfm.experiments.vae import small_vae_config
from gmfm.metrics.images import hsv_saturation
from gmfm.training.distributed import Distributed


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**{**small_vae_config(1, latent_channels=4, downsample=4, width=8), "scaling_factor": 0.5})
    folder = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(folder)
    return folder


def test_latent_cache_round_trip(vae_folder, tmp_path):
    mnist = make_dataset("mnist", train_per_class=3)  # 30 digits
    index = cache_latents(mnist, vae_folder, tmp_path / "cache", batch_size=7, flip="none", dtype="float32",
                          device="cpu", progress=False)
    assert index["count"] == 30 and index["latent_shape"] == [4, 8, 8] and index["scaling_factor"] == 0.5
    cached = make_dataset("latents", path=str(tmp_path / "cache"), holdout=5)
    assert cached.event_shape == (4, 8, 8) and cached.num_classes == 10 and cached.class_names[2] == "two"
    assert cached.extra["scaling_factor"] == 0.5 and Path(cached.extra["vae"]).name == "vae"
    # the cached latents are the scaled posterior draws of the digits, in order, with their labels
    from gmfm.experiments.latents import load_vae

    vae = load_vae(vae_folder)
    source = mnist.extra["source"]
    with torch.no_grad():
        posterior = vae.encode(source.images[:30]).latent_dist
    latents = torch.from_numpy(np.load(tmp_path / "cache" / "latents.npy"))
    z = latents / 0.5
    assert bool(((z - posterior.mean).abs() <= 6 * posterior.std + 1e-5).all())  # a draw of each posterior
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "cache" / "labels.npy")), source.labels[:30])
    decoded = decode_latents(latents[:4], vae_folder, 0.5)
    with torch.no_grad():
        assert torch.allclose(decoded, vae.decode(z[:4]).sample, atol=1e-5)
    batch = cached.train.batch(12, torch.Generator().manual_seed(0), slice(0, 12))
    assert batch["x0"].shape == (12, 4, 8, 8) and batch["labels"].dtype == torch.long
    assert len(cached.split("test")) == 5


def test_random_flips_and_the_process_count_do_not_change_the_cache(vae_folder, tmp_path):
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "gmfm", "cache-latents", "--dataset", "mnist", "--option",
                    "train_per_class=2", "--vae", str(vae_folder), "--out", str(one), "--device", "cpu",
                    "--dtype", "float32", "--batch-size", "3"], check=True, capture_output=True)
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gmfm",
                    "cache-latents", "--dataset", "mnist", "--option", "train_per_class=2", "--vae", str(vae_folder),
                    "--out", str(two), "--device", "cpu", "--dtype", "float32", "--batch-size", "4"],
                   check=True, capture_output=True)
    a, b = np.load(one / "latents.npy"), np.load(two / "latents.npy")
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert json.loads((two / "latents.json").read_text())["processes"] == 2


def test_adm_centre_crop_and_class_index(tmp_path):
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 700, 3), dtype=np.uint8))
    crop = adm_center_crop(image, 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    grey = adm_center_crop(Image.fromarray(np.zeros((50, 80), dtype=np.uint8)), 32)
    assert grey.shape == (32, 32, 3)
    (tmp_path / "synsets.txt").write_text("n02 jay\nn01 magpie, pie\n")
    assert read_class_index(tmp_path / "synsets.txt") == (["n02", "n01"], ["jay", "magpie, pie"])


def test_image_folder_dataset(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for cls, count in (("n01", 3), ("n02", 2)):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "train" / cls / f"{i}.png")
    (tmp_path / "classes.txt").write_text("n02 second\nn01 first\n")
    data = make_dataset("image_folder", root=str(tmp_path / "train"), image_size=16,
                        class_index=str(tmp_path / "classes.txt"))
    assert data.event_shape == (3, 16, 16) and data.num_classes == 2 and data.class_names == ("second", "first")
    x, label = data.extra["source"].item(0)
    assert x.shape == (3, 16, 16) and -1 <= float(x.min()) and float(x.max()) <= 1 and label == 0  # n02: class 0
    assert data.extra["source"].labels.bincount().tolist() == [2, 3]  # n02 holds 2 images, n01 3
    batch = data.train.batch(4, torch.Generator().manual_seed(0), slice(0, 4))
    assert batch["x0"].shape == (4, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match="image folder .*missing does not exist"):
        make_dataset("image_folder", root=str(tmp_path / "missing"))


class TinyFeatures(torch.nn.Module):
    """A fixed random projection of downsampled images: a stand-in for Inception in tests."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, dim)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(seed))

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 8)
        return self.proj(x.flatten(1))


def test_feature_metrics_see_a_worse_sample_set():
    dist = Distributed(0, 1, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    real = torch.rand(400, 3, 16, 16, generator=g) * 2 - 1
    good = torch.rand(400, 3, 16, 16, generator=g) * 2 - 1
    bad = (torch.rand(400, 3, 16, 16, generator=g) * 2 - 1) * 0.2 + 0.5
    results = {}
    for name, fake in (("good", good), ("bad", bad)):
        metrics = FeatureMetrics(TinyFeatures(16, 1), TinyFeatures(10, 2))
        metrics.update(real, real=True)
        metrics.update(fake, real=False)
        results[name] = metrics.compute(dist)
    assert results["good"].fid < 0.1 * results["bad"].fid
    assert results["good"].precision > 0.5 > results["bad"].precision
    assert results["good"].num_samples == 400 and results["good"].inception_score > 1.0
    assert hsv_saturation(torch.tensor([[[[1.0]], [[0.5]], [[0.0]]]])) == pytest.approx(1.0)


def test_the_evaluation_sample_set_does_not_depend_on_the_process_count(tmp_path):
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "gmfm", "train-images", "--config", "mnist_tiny", "--out", str(run),
                    "--iterations", "2", "--device", "cpu"], check=True, capture_output=True)
    common = ["eval-images", str(run), "--num-samples", "6", "--nfe", "2", "--batch-size", "2", "--features",
              "pixels", "--save-samples", "--device", "cpu"]
    subprocess.run([sys.executable, "-m", "gmfm", *common, "--out", str(tmp_path / "one.json")], check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gmfm",
                    *common, "--out", str(tmp_path / "two.json")], check=True, capture_output=True)
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert one["samples"].shape == (6, 32, 32, 3)
    assert np.abs(one["samples"].astype(int) - two["samples"].astype(int)).max() <= 1  # float summation only
    np.testing.assert_array_equal(one["labels"], balanced_labels(6, 10).numpy())
    result = json.loads((tmp_path / "two.json").read_text())
    assert result["processes"] == 2 and result["metrics"]["num_samples"] == 6


def test_evaluate_run_with_an_injected_extractor(tmp_path):
    from gmfm.experiments import load_recipe, train_recipe

    train_recipe(load_recipe("mnist_tiny", train={"iterations": 2, "device": "cpu"}), tmp_path / "run", progress=False)
    out = evaluate_run(tmp_path / "run", 20, nfe=2, extractor=TinyFeatures(8, 0), logits=TinyFeatures(10, 1),
                       device="cpu", progress=False)
    metrics = out["metrics"]
    assert metrics["num_samples"] == 20 and metrics["fid"] > 0 and 0 <= metrics["precision"] <= 1
    assert json.loads(out["path"].read_text())["features"] == "injected"


def test_the_imagenet_recipe_runs_on_a_tiny_latent_cache(tmp_path):
    """The paper's recipe (rampup EMA, clip from an iteration, weight decay, micro-batches, gradient
    checkpointing, bf16 autocast, spectrum net) with a tiny network on random latents."""
    from gmfm.experiments import load_recipe, load_run, train_recipe

    (tmp_path / "cache").mkdir()
    g = np.random.default_rng(0)
    np.save(tmp_path / "cache" / "latents.npy", g.standard_normal((16, 4, 8, 8)).astype(np.float16))
    np.save(tmp_path / "cache" / "labels.npy", g.integers(0, 3, 16).astype(np.int64))
    (tmp_path / "cache" / "latents.json").write_text(json.dumps({"count": 16, "latent_shape": [4, 8, 8],
                                                                 "num_classes": 3, "scaling_factor": 0.2}))
    recipe = load_recipe("imagenet_gmflow_k8", data={"path": str(tmp_path / "cache")},
                         model={"num_layers": 1, "num_attention_heads": 1, "attention_head_dim": 8,
                                "logstd_inner_dim": 8},
                         train={"iterations": 3, "batch_size": 4, "micro_batch_size": 2, "optimizer": "adamw",
                                "grad_clip_begin": 1, "device": "cpu"})
    result = train_recipe(recipe, tmp_path / "run", progress=False)
    assert result.step == 3 and all(np.isfinite(list(result.losses.values())))
    trained = load_run(tmp_path / "run")
    assert trained.event_shape == (4, 8, 8) and trained.num_classes == 3
    assert trained.checkpoint.metadata["dataset"]["extra"]["scaling_factor"] == 0.2


def test_the_latent_test_split_is_stratified_seeded_and_unseen_by_training(vae_folder, tmp_path):
    """Caches are written class by class: the held-out rows are drawn per class (seeded), training never
    draws them, and the evaluation's real reference is the source images of those rows."""
    from gmfm.data.latents import stratified_holdout
    from gmfm.experiments.evaluation import real_images

    labels = np.repeat(np.arange(4), [10, 20, 30, 40])  # sorted by class, unequal classes
    rows = stratified_holdout(labels, 10, seed=0)
    assert np.bincount(labels[rows], minlength=4).tolist() == [1, 2, 3, 4]
    assert np.array_equal(rows, stratified_holdout(labels, 10, seed=0))
    assert not np.array_equal(rows, stratified_holdout(labels, 10, seed=1))

    options = {"train_per_class": 3}
    mnist = make_dataset("mnist", **options)
    cache_latents(mnist, vae_folder, tmp_path / "cache", flip="none", dtype="float32", device="cpu", progress=False,
                  dataset_options=options)
    cached = make_dataset("latents", path=str(tmp_path / "cache"), holdout=10)
    test_rows = cached.extra["source_rows"]["test"]
    assert sorted(cached.split("test").labels.tolist()) == list(range(10))  # one digit of each class
    drawn = cached.train.batch(2000, torch.Generator().manual_seed(0), slice(0, 2000))
    all_latents = torch.from_numpy(np.load(tmp_path / "cache" / "latents.npy"))
    seen = {int(i) for i in torch.cdist(drawn["x0"].flatten(1), all_latents.flatten(1)).argmin(1)}
    assert seen.isdisjoint(test_rows) and len(seen) == 20

    class Trained:  # what real_images reads of a run
        recipe = type("R", (), {"dataset_name": "latents", "data": {"name": "latents", "path": str(tmp_path / "cache"),
                                                                    "holdout": 10}, "source": "test"})()
        checkpoint = type("C", (), {"metadata": {"dataset": {"extra": {"vae": str(vae_folder), "scaling_factor": 0.5}}}})()

    real = real_images(Trained(), "test")
    torch.testing.assert_close(real, mnist.extra["source"].images[test_rows].float())


def test_an_adm_batch_gives_fid_from_its_statistics_and_precision_from_its_images(tmp_path):
    """As ADM's evaluator: with mu / sigma in the batch, FID uses them (not arr_0); arr_0 feeds
    precision / recall."""
    from gmfm.experiments.evaluation import add_reference

    dist = Distributed(0, 1, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    fake = torch.rand(64, 3, 16, 16, generator=g) * 2 - 1
    features = TinyFeatures(8, 0)
    other = torch.rand(200, 3, 16, 16, generator=g) * 2 - 1  # the "whole dataset" the statistics describe
    with torch.no_grad():
        f = features((other.clamp(-1, 1) + 1).mul(127.5).round().to(torch.uint8)).double().numpy()
    batch = tmp_path / "ref.npz"
    np.savez(batch, arr_0=images.permute(0, 2, 3, 1).numpy(), mu=f.mean(0), sigma=np.cov(f, rowvar=False))

    def fid_against(reference):
        metrics = FeatureMetrics(features, None)
        add_reference(metrics, reference, dist)
        metrics.update(fake, real=False)
        return metrics.compute(dist)

    from_batch, from_other = fid_against(batch), fid_against(other)
    assert from_batch.fid == pytest.approx(from_other.fid, rel=1e-4)  # FID from mu / sigma
    only_images = tmp_path / "images.npz"
    np.savez(only_images, arr_0=images.permute(0, 2, 3, 1).numpy())
    assert fid_against(only_images).fid != pytest.approx(from_batch.fid, rel=1e-2)
    assert from_batch.precision == pytest.approx(fid_against(only_images).precision)  # P/R from arr_0


def test_the_inception_metrics_read_local_weights_and_never_download(tmp_path, monkeypatch):
    """FID and IS both take the Inception weights from the local file, resize without antialiasing (the
    TF1 resize of standard FID), and a missing file is one clear error, not a download."""
    from torchmetrics.image import fid as tm_fid

    made = []

    class FakeInception(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, antialias=True):
            super().__init__()
            assert feature_extractor_weights_path is not None, "would download"
            made.append({"features": features_list, "weights": feature_extractor_weights_path,
                         "antialias": antialias})
            self.out = 2048 if features_list == ["2048"] else 1008

        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x.float(), 1).flatten(1).repeat(1, self.out // 3 + 1)[
                :, : self.out]

    monkeypatch.setattr(tm_fid, "NoTrainInceptionV3", FakeInception)
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"weights")
    metrics = FeatureMetrics(inception_weights=weights)
    assert metrics.inception is not None
    assert [m["features"] for m in made] == [["2048"], ["logits_unbiased"]]
    assert all(m["weights"] == str(weights) and m["antialias"] is False for m in made)
    with pytest.raises(ValueError, match="need the Inception weights as a local file"):
        FeatureMetrics(inception_weights=tmp_path / "missing.pth")


def test_eval_results_are_named_by_their_whole_plan(tmp_path):
    """The default solver is resolved before anything is written, and guidance, seed and sample count
    each get their own file."""
    from gmfm.experiments import load_recipe, train_recipe

    train_recipe(load_recipe("mnist_tiny", train={"iterations": 2, "device": "cpu"}), tmp_path / "run", progress=False)
    kw = dict(nfe=2, extractor=TinyFeatures(8, 0), logits=None, device="cpu", progress=False)
    paths = [evaluate_run(tmp_path / "run", 10, **kw)["path"],
             evaluate_run(tmp_path / "run", 10, guidance_options=(0.3, None, None), **kw)["path"],
             evaluate_run(tmp_path / "run", 10, seed=1, **kw)["path"],
             evaluate_run(tmp_path / "run", 20, **kw)["path"]]
    assert len({p.name for p in paths}) == 4
    assert paths[0].name == "eval_gmode2_nfe2_n10_seed0.json" and paths[1].name == "eval_gmode2_nfe2_pg0.3_n10_seed0.json"
    result = json.loads(paths[1].read_text())
    assert result["solver"] == "gmode2" and result["substeps"] == 16 and "ProbabilisticGuidance" in result["guidance"]
