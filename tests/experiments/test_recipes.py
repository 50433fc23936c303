"""Recipes: one TOML format, every key checked, shipped recipes found by name."""

from __future__ import annotations

import pytest

from gmfm.experiments import RecipeError, config_names, load_recipe, recipe_from_dict
from gmfm.experiments.build import build_loss, build_model
from gmfm.experiments.recipe import resolve_config
from gmfm.losses import FlowMatchingLoss, GMFlowLoss

TINY = resolve_config("mnist_tiny")


def write(tmp_path, text: str):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_every_shipped_recipe_loads_and_builds():
    assert {"checkerboard", "checkerboard_demo", "checkerboard_bench", "mnist_gmflow", "mnist_fm",
            "mnist_tiny"} <= set(config_names())
    from gmfm.distill import load_distill_recipe

    for name in config_names():
        if "piflow" in name:  # distillation recipes ([distill] + [train])
            assert load_distill_recipe(name).distill.nfe >= 1
            continue
        recipe = load_recipe(name)
        assert recipe_from_dict(recipe.as_dict(), name) == recipe  # the tables round-trip
    assert load_recipe("configs/mnist_gmflow.toml") == load_recipe("mnist_gmflow.toml") == load_recipe("mnist_gmflow")


def test_sizes_come_from_the_dataset():
    recipe = load_recipe("mnist_tiny")
    model = build_model(recipe, (3, 16, 16), 7)
    assert model.net.config.in_channels == 3 and model.net.config.sample_size == 16
    assert model.num_classes == 7 and model.null_label == 7
    loss = build_loss(recipe, 7)
    assert isinstance(loss, GMFlowLoss) and loss.null_label == 7 and loss.spectral_weight == 1.0
    assert isinstance(build_loss(load_recipe("mnist_fm"), 10), FlowMatchingLoss)
    with pytest.raises(RecipeError, match=r"\[model\] in_channels = 3 but the dataset 'mnist' has 1"):
        build_model(load_recipe("mnist_tiny", model={"in_channels": 3}), (1, 32, 32), 10)


def test_model_initialisation_is_seeded():
    a = build_model(load_recipe("mnist_tiny"), (1, 32, 32), 10)
    b = build_model(load_recipe("mnist_tiny"), (1, 32, 32), 10)
    c = build_model(load_recipe("mnist_tiny", train={"seed": 1}), (1, 32, 32), 10)
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert x.equal(y), name
    assert any(not x.equal(z) for x, z in zip(a.state_dict().values(), c.state_dict().values()))


def test_overrides_and_identity():
    recipe = load_recipe("mnist_gmflow", train={"iterations": 10, "device": "cpu", "lr": None})
    assert recipe.train.iterations == 10 and recipe.train.lr == 5e-4
    assert recipe.identity() == load_recipe("mnist_gmflow").identity()  # length and device do not define a run
    assert load_recipe("mnist_gmflow", loss={"transition_ratio": 0.9}).identity() != recipe.identity()
    assert load_recipe("checkerboard", kind="fm").kind == "fm"


@pytest.mark.parametrize("text, match", [
    ("kind = 'gmflow'\nepochs = 3\n[data]\nname = 'mnist'",
     r"unknown key\(s\) \['epochs'\] in \[top level\]; valid keys: data, kind, loss, model, sample, train"),
    ("[data]\nname = 'mnist'\n[loss]\ntransition = 0.5\n[train]\niterations = 1\nbatch_size = 1",
     r"unknown key\(s\) \['transition'\] in \[loss\]; valid keys: .*transition_draws, transition_ratio"),
    ("[data]\nname = 'mnist'\n[train]\niterations = 1\nbatch_size = 1\nepochs = 3",
     r"unknown key\(s\) \['epochs'\] in \[train\]; valid keys: .*batch_size"),
    ("[data]\nname = 'mnist'\n[model]\nnum_gausians = 8\n[train]\niterations = 1\nbatch_size = 1",
     r"unknown key\(s\) \['num_gausians'\] in \[model\]; valid keys: .*num_components"),
    ("[data]\nname = 'mnist'\nsize = 3\n[train]\niterations = 1\nbatch_size = 1",
     r"unknown key\(s\) \['size'\] in \[data\]; valid keys: name, train_per_class"),
    ("[data]\nname = 'imagenet-typo'", r"\[data\] name 'imagenet-typo' is not a known dataset"),
    ("[data]\nname = 'mnist'\n[train]\nbatch_size = 2", r"\[train\] needs iterations"),
    ("[data]\nname = 'mnist'\n[train]\niterations = 1\nbatch_size = 1\nlr = '1e-3'", r"lr must be a finite number"),
    ("[data]\nname = 'mnist'\n[train]\niterations = 1\nbatch_size = 1\nbetas = 0.9", r"betas must be two numbers"),
    ("kind = 'vae'\n[data]\nname = 'mnist'", r"kind must be one of \('gmflow', 'fm'\)"),
    ("[data]\nname = 'mnist'\n[model]\nbackbone = 'vit'", r"backbone must be one of \('mlp2d', 'gmdit', 'unet'\)"),
    ("[data]\nname = 'mnist'\n[train]\niterations = 1\nbatch_size = 1\n[loss]\ntransition_ratio = 0",
     r"\[loss\] transition_ratio must be in \(0, 1\]"),
    ("[data\nname = 'mnist'", r"not valid TOML"),
])
def test_bad_recipes_name_the_table_and_the_key(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError, match=match):
        recipe = load_recipe(path)
        build_loss(recipe, 10)


def test_missing_recipe_lists_the_shipped_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config .*missing.toml does not exist \(shipped recipes: .*mnist_gmflow"):
        load_recipe(tmp_path / "missing.toml")


def test_the_old_name_of_k_still_works_with_a_warning(tmp_path):
    """[model] num_gaussians (the image recipes' old name of K) gives the same recipe as num_components,
    with a FutureWarning; run folders saved with it still resume."""
    import warnings

    from gmfm.experiments.recipe import upgrade_settings

    new = tmp_path / "new.toml"
    new.write_text("[data]\nname = 'mnist'\n[model]\nnum_components = 3\npatch_size = 8\nnum_layers = 1\n"
                   "num_attention_heads = 1\nattention_head_dim = 8\nlogstd_inner_dim = 8\n"
                   "[train]\niterations = 1\nbatch_size = 1\n")
    old = tmp_path / "old.toml"
    old.write_text(new.read_text().replace("num_components", "num_gaussians"))
    with pytest.warns(FutureWarning, match=r"\[model\] num_gaussians is deprecated, use num_components"):
        legacy = load_recipe(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        current = load_recipe(new)
    assert legacy.model == current.model and current.model["num_components"] == 3
    assert build_model(legacy, (1, 32, 32), 10).net.config.num_gaussians == 3
    saved = {**current.identity(), "model": {**current.identity()["model"]}}
    saved["model"]["num_gaussians"] = saved["model"].pop("num_components")
    assert upgrade_settings(saved) == current.identity()
    both = tmp_path / "both.toml"
    both.write_text(new.read_text().replace("num_components = 3", "num_components = 3\nnum_gaussians = 3"))
    with pytest.raises(RecipeError, match="both num_gaussians and num_components"):
        load_recipe(both)


def test_one_sampling_plan_settles_every_default(tmp_path):
    """Solver, NFE, substeps, guidance and coefficients come from one place: the arguments, then the
    recipe's [sample] table, then the built-in defaults."""
    from gmfm.experiments import SamplingPlan, load_run, train_recipe
    from gmfm.guidance import ClassifierFreeGuidance, ProbabilisticGuidance

    recipe = load_recipe("mnist_tiny", train={"iterations": 1, "device": "cpu"},
                         sample={"nfe": 4, "guidance_scale": 0.2, "gm2_coefs": [0.01, 2.0]})
    train_recipe(recipe, tmp_path / "run", progress=False)
    trained = load_run(tmp_path / "run")
    plan = SamplingPlan.resolve(trained)
    assert (plan.solver, plan.nfe, plan.substeps) == ("gmode2", 4, 16)  # 128 / 4 capped at 16 on images
    assert plan.guidance == ProbabilisticGuidance(0.2) and plan.second_order_coefs == (0.01, 2.0)
    plan = SamplingPlan.resolve(trained, "gmsde2", 8, guidance_scale=0.0, cfg_scale=2.0)
    assert plan.substeps is None and plan.guidance == ClassifierFreeGuidance(2.0) and plan.tag() == "gmsde2_nfe8_cfg2"
    assert SamplingPlan.resolve(trained, guidance=ProbabilisticGuidance(0.0)).guidance is None
    with pytest.raises(ValueError, match="solver must be one of"):
        SamplingPlan.resolve(trained, "nope")
