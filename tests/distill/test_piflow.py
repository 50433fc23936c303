"""pi-Flow: the GM policy, its sampler and the pi-ID distillation (tiny 2-D teachers)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from reference_cases import load_case, reference_root

from gmfm import AnalyticGMDenoiser, GaussianMixture, gmflow_sample
from gmfm.distill import distill, load_distill_recipe
from gmfm.experiments import load_recipe, load_run, sample_trained, train_recipe
from gmfm.solvers.piflow import GMPolicy, auto_temperature, piflow_sample, segment_starts, substep_count, warp
from gmfm.training import weights_relative_difference


def test_the_policy_velocity_is_the_gm_ode_conversion_of_the_reference_cases():
    cases = sorted((reference_root() / "ops").glob("denoising_convert_mean_*.npz"))
    assert cases
    for path in cases:
        _, i, out = load_case(path)
        gm = GaussianMixture(i["means"], i["logweights"], i["logstds"])
        policy = GMPolicy(gm, i["x_src"], i["sigma_src"])
        expected = (i["x_tgt"] - torch.from_numpy(out["mean"])) / i["sigma_tgt"].reshape(-1, 1, 1, 1)
        torch.testing.assert_close(policy.velocity(i["x_tgt"], i["sigma_tgt"]), expected, rtol=1e-6, atol=1e-6)


def test_a_policy_of_the_exact_gm_follows_the_oracle_flow():
    """With the analytic denoiser every policy is exact: pi-Flow at any NFE is the oracle's probability
    flow, which GM-ODE with as many substeps also integrates."""
    means = torch.tensor([[[2.0, 0], [-2, 0], [0, 2], [0, -2]]]).reshape(1, 4, 2, 1, 1)
    oracle = AnalyticGMDenoiser(means, torch.zeros(1, 4, 1, 1, 1), logstd=math.log(0.1))
    noise = torch.randn(2000, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    cond = torch.zeros(2000, dtype=torch.long)
    for nfe in (1, 4):
        x = piflow_sample(oracle, noise, nfe, total_substeps=256, condition=cond, temperature=1.0)
        ode = gmflow_sample(oracle, noise, nfe, method="ode", substeps=256 // nfe, condition=cond).sample
        torch.testing.assert_close(x, ode, rtol=0, atol=1e-4)
    modes = means.reshape(4, 2)
    nearest = torch.cdist(x.reshape(-1, 2), modes).min(1).values
    assert float(nearest.quantile(0.99)) < 0.5  # samples land on the modes


def test_substep_counts_on_the_grid():
    starts = segment_starts(4, 0.5)  # b = 1 / 3.5: three segments of b and a last one of b / 2
    assert starts[0] == 1.0 and starts[-1] == 0.0 and starts[3] == pytest.approx(0.5 / 3.5)
    assert [substep_count(a - b) for a, b in zip(starts, starts[1:])] == [37, 37, 37, 19]
    assert substep_count(torch.tensor([1.0, 1e-4])).tolist() == [128, 1]
    assert warp(0.5, 3.0) == pytest.approx(0.75) and auto_temperature(1) == 0 and auto_temperature(4) == pytest.approx(0.3)
    calls = []
    gm = GaussianMixture(torch.zeros(3, 2, 2, 1, 1), torch.zeros(3, 2, 1, 1, 1), torch.zeros(3, 1, 1, 1, 1))
    policy = GMPolicy.from_u(gm, torch.randn(3, 2, 1, 1), 1.0)
    real = policy.velocity
    object.__setattr__(policy, "velocity", lambda *a, **k: calls.append(1) or real(*a, **k))
    policy.integrate(torch.randn(3, 2, 1, 1), torch.tensor([1.0, 1.0, 0.5]), torch.tensor([0.5, 0.0, 0.0]))
    assert len(calls) == 128  # the longest sample's ceil(1.0 x 128); the others stop at their own count


def test_dropout_never_drops_every_component():
    gm = GaussianMixture(torch.randn(2, 3, 1, 1, 1), torch.zeros(2, 3, 1, 1, 1), torch.zeros(2, 1, 1, 1, 1))
    policy = GMPolicy.from_u(gm, torch.randn(2, 1, 1, 1), 0.5)
    dropped = policy.dropout(torch.tensor([[True, True, True], [True, False, True]]))
    weights = dropped.x0_gm.logweights.exp().reshape(2, 3)
    torch.testing.assert_close(weights[0], torch.full((3,), 1 / 3))  # all would go: none does
    torch.testing.assert_close(weights[1], torch.tensor([0.0, 1.0, 0.0]))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("piflow") / "teacher"
    train_recipe(load_recipe("checkerboard", model={"num_components": 8, "hidden_dim": 32, "num_layers": 2},
                             train={"iterations": 20, "batch_size": 256, "device": "cpu"}), out, progress=False)
    return out


def tiny(**train):
    return load_distill_recipe("checkerboard_piflow_tiny").with_overrides(train={"device": "cpu", **train})


def test_the_teacher_gets_no_gradient_and_the_student_starts_from_it(teacher, tmp_path):
    from gmfm.distill import PiIDLoss, init_from_teacher, student_recipe, teacher_velocity
    from gmfm.experiments import build_model

    trained = load_run(teacher)
    recipe = student_recipe(trained.recipe, 4, {"solver": "piflow", "nfe": 2})
    student = build_model(recipe, (2, 1, 1), 0)
    init_from_teacher(student, trained.model, True, noise=0.0, init_logstd=math.log(0.05))
    x, sigma = torch.randn(64, 2, 1, 1), torch.rand(64)
    with torch.no_grad():
        t_gm, s_gm = trained.model(x, sigma), student(x, sigma)
    torch.testing.assert_close(s_gm.means, t_gm.means[:, :4])  # component k is the teacher's k mod K_t
    torch.testing.assert_close(s_gm.logstds, torch.full_like(s_gm.logstds, math.log(0.05)))
    loss = PiIDLoss(teacher_velocity(trained.model, None, None, True), 2, total_substeps=16)
    out = loss(student, {"x0": torch.randn(16, 2, 1, 1)}, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in trained.model.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.parameters())


def test_a_killed_and_resumed_distillation_ends_as_the_uninterrupted_one(teacher, tmp_path):
    distill(tiny(), tmp_path / "full", teacher, progress=False)
    distill(tiny(iterations=3), tmp_path / "cut", teacher, progress=False)
    distill(tiny(), tmp_path / "cut", teacher, progress=False)
    assert weights_relative_difference(tmp_path / "full", tmp_path / "cut") == 0.0
    student = load_run(tmp_path / "full")
    assert student.recipe.sample.solver == "piflow" and student.recipe.sample.nfe == 2
    x = sample_trained(student, num_samples=500)  # the recipe's solver and NFE
    assert x.shape == (500, 2, 1, 1) and bool(torch.isfinite(x).all())
    for start in ("chain",):
        result = distill(tiny().with_overrides(distill={"start_states": start}), tmp_path / start, teacher,
                         progress=False)
        assert np.isfinite(list(result.losses.values())).all()


def test_one_and_two_processes_give_the_same_student(teacher, tmp_path):
    from stats import WORLD_SIZE_BOUND as BOUND

    common = ["distill", "--teacher", str(teacher), "--config", "checkerboard_piflow_tiny", "--device", "cpu"]
    env = {"OMP_NUM_THREADS": "1", **__import__("os").environ}
    subprocess.run([sys.executable, "-m", "gmfm", *common, "--out", str(tmp_path / "one")], check=True,
                   capture_output=True, env=env)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gmfm",
                    *common, "--out", str(tmp_path / "two")], check=True, capture_output=True, env=env)
    assert weights_relative_difference(tmp_path / "one", tmp_path / "two") < BOUND


def test_bad_input_gets_one_clear_line(teacher, tmp_path, capsys):
    from gmfm.cli.main import main

    (tmp_path / "empty").mkdir()
    cases = [(["--teacher", str(tmp_path / "empty")], "is not a gmfm run"),
             (["--teacher", str(teacher), "--nfe", "0"], "--nfe: expected an integer >= 1"),
             (["--teacher", str(teacher), "--components", "0"], "--components: expected an integer >= 1")]
    for extra, message in cases:
        with pytest.raises(SystemExit):
            main(["distill", "--config", "checkerboard_piflow_tiny", "--out", str(tmp_path / "s"), "--device", "cpu",
                  *extra])
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    from gmfm.distill import DistillConfig

    with pytest.raises(ValueError, match="num_components must be an integer >= 1"):
        DistillConfig(num_components=0, nfe=2)


def test_an_image_student_samples_through_the_cli_and_the_pipeline(tmp_path, capsys):
    """A student of a GM-DiT teacher: sample-images and eval-images take it (solver piflow, its NFE), and
    the exported pipeline's output_mode="policy" gives the same samples as the library."""
    from gmfm.cli.main import main
    from gmfm.experiments.export import export_pipeline
    from gmfm.pipelines import GMDiTPipeline

    train_recipe(load_recipe("mnist_tiny", train={"device": "cpu", "iterations": 2}), tmp_path / "teacher",
                 progress=False)
    main(["distill", "--teacher", str(tmp_path / "teacher"), "--config", "checkerboard_piflow_tiny", "--out",
          str(tmp_path / "student"), "--iterations", "2", "--batch-size", "4", "--device", "cpu"])
    main(["sample-images", str(tmp_path / "student"), "--per-class", "1", "--device", "cpu"])
    assert (tmp_path / "student" / "grid_piflow_nfe2.png").exists()
    student = load_run(tmp_path / "student")
    pipe = export_pipeline(student, tmp_path / "pipe")
    pipe = GMDiTPipeline.from_pretrained(pipe)
    pipe.set_progress_bar_config(disable=True)
    x_t = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 7])
    images = pipe(labels.tolist(), guidance_scale=0.0, num_inference_steps=2, output_mode="policy", latents=x_t,
                  policy_substeps=16, output_type="latent").images
    from gmfm.models.gmflow_model import GMFlowModel

    expected = piflow_sample(GMFlowModel(pipe.transformer), x_t, 2, total_substeps=16, condition=labels)
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="guidance is built in"):
        pipe([3], guidance_scale=0.3, num_inference_steps=2, output_mode="policy")
