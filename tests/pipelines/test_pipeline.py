"""The GM-DiT pipeline's diffusers conventions, on a tiny folder in the official layout built here from the
first reference model (every size read from its configs)."""

from __future__ import annotations

import inspect
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from PIL import Image
from reference_cases import reference_root

from gmfm.guidance import ProbabilisticGuidance
from gmfm.models import GMDiTTransformer2DModel, SpectrumMLP
from gmfm.models.gmflow_model import GMFlowModel
from gmfm.pipelines import FlowEulerODEScheduler, GMDiTPipeline, GMFlowSDEScheduler
from gmfm.solvers import DEFAULT_COEFS, gmflow_sample

REFERENCE = sorted(p for p in (reference_root() / "models").glob("*") if p.is_dir())[0]
#: The scheduler config of the root's first pipeline folder (its shift differs between roots), if any.
SCHEDULER_CONFIGS = sorted((reference_root() / "pipelines").glob("*/model/scheduler/scheduler_config.json"))
SHIFT = json.loads(SCHEDULER_CONFIGS[0].read_text()).get("shift", 1.0) if SCHEDULER_CONFIGS else 1.0
CONFIG = json.loads((REFERENCE / "transformer" / "config.json").read_text())
NUM_CLASSES = CONFIG["num_embeds_ada_norm"]
CHANNELS = CONFIG["in_channels"]
SIZE = CONFIG["sample_size"]
LAST = NUM_CLASSES - 1
A, B, C = 1 % NUM_CLASSES, 2 % NUM_CLASSES, 3 % NUM_CLASSES  # class ids for any number of classes
#: Label words: class i is "word i, alias i"; class 0 is also "tench".
WORDS = {str(i): f"word {i}, alias {i}" + (", tench" if i == 0 else "") for i in range(NUM_CLASSES)}
VAE_BLOCKS = (8, 8)
IMAGE = SIZE * 2 ** (len(VAE_BLOCKS) - 1)  # the VAE upsamples once per extra block
OFFICIAL_ARGUMENTS = ["class_labels", "guidance_scale", "generator", "num_inference_steps", "num_inference_substeps",
                      "output_mode", "order", "orthogonal_guidance", "gm2_coefs", "gm2_correction_steps",
                      "output_type", "return_dict"]
#: The official defaults (Lakonik/GMFlow, lib/pipelines/gmdit_pipeline.py).
OFFICIAL_DEFAULTS = {"guidance_scale": 0.45, "generator": None, "num_inference_steps": 32, "num_inference_substeps": 4,
                     "output_mode": "mean", "order": 2, "orthogonal_guidance": 1.0, "gm2_coefs": (0.005, 1.0),
                     "gm2_correction_steps": 0, "output_type": "pil", "return_dict": True}
#: (scheduler, output_mode): the solvers the pipeline runs.
MODES = [(FlowEulerODEScheduler, "mean"), (GMFlowSDEScheduler, "sample"), (GMFlowSDEScheduler, "mean")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("gmflow_tiny")
    for part in ("transformer", "spectrum_net"):
        shutil.copytree(REFERENCE / part, root / part)
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=CHANNELS, block_out_channels=VAE_BLOCKS,
                        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
                        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS),
                        layers_per_block=1, norm_num_groups=8, sample_size=IMAGE)
    vae.save_pretrained(root / "vae")
    GMFlowSDEScheduler(shift=SHIFT).save_pretrained(root / "scheduler")
    # the names the official code records
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "GMDiTPipeline", "_diffusers_version": "0.32.2", "id2label": WORDS,
        "scheduler": ["lib.models.diffusions.schedulers.gmflow_sde", "GMFlowSDEScheduler"],
        "spectrum_net": ["lib.models.architecture.gmflow", "_SpectrumMLP"],
        "transformer": ["lib.models.architecture.gmflow", "_GMDiTTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"]}))
    return root


@pytest.fixture(scope="module")
def pipe(folder):
    pipe = GMDiTPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def scheduler_of(pipe):
    """Set the pipeline's scheduler for one test; the folder's one is put back afterwards."""
    original = pipe.scheduler

    def use(cls, **overrides):
        pipe.scheduler = cls.from_config(original.config, **overrides)
        return pipe.scheduler

    yield use
    pipe.scheduler = original


def run(pipe, seed=0, **kw):
    args = dict(num_inference_steps=2, num_inference_substeps=2, output_type="np")
    args.update(kw)
    return pipe(generator=torch.Generator().manual_seed(seed), **args).images


def test_loads_the_official_layout(pipe):
    assert isinstance(pipe.transformer, GMDiTTransformer2DModel) and isinstance(pipe.spectrum_net, SpectrumMLP)
    assert isinstance(pipe.scheduler, GMFlowSDEScheduler) and isinstance(pipe.vae, AutoencoderKL)
    assert pipe.get_label_ids([f"word {C}", "tench", "alias 0"]) == [C, 0, 0]


def test_the_official_signature():
    parameters = inspect.signature(GMDiTPipeline.__call__).parameters
    assert list(parameters)[1:len(OFFICIAL_ARGUMENTS) + 1] == OFFICIAL_ARGUMENTS
    defaults = {k: parameters[k].default for k in OFFICIAL_DEFAULTS}
    assert {**defaults, "gm2_coefs": tuple(defaults["gm2_coefs"])} == OFFICIAL_DEFAULTS
    assert defaults["gm2_coefs"] is DEFAULT_COEFS
    assert "progress" not in parameters


@pytest.mark.parametrize("scheduler, mode", MODES)
@pytest.mark.parametrize("order, w", [(2, 0.3), (1, 0.0)])
def test_samples_end_to_end(pipe, scheduler_of, scheduler, mode, order, w):
    scheduler_of(scheduler)
    images = run(pipe, class_labels=[f"word {A}", LAST], output_mode=mode, order=order, guidance_scale=w)
    assert images.shape == (2, IMAGE, IMAGE, 3) and images.dtype == np.float32
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


def test_the_scheduler_drives_sampling(pipe, scheduler_of):
    """Each scheduler + output_mode is its GMFlow solver: the pipeline equals gmflow_sample on the same x_T and
    the scheduler's own (float32) grid, whatever the shift of the folder's scheduler."""
    labels = torch.tensor([A, LAST])
    x_t = torch.randn(2, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    common = dict(guidance_scale=0.3, order=2, output_type="latent", latents=x_t)
    reference = dict(condition=labels, uncond_condition=torch.full_like(labels, NUM_CLASSES),
                     guidance=ProbabilisticGuidance(0.3), order=2)
    model = GMFlowModel(pipe.transformer)

    def grid(scheduler, steps: int) -> list[float]:
        scheduler.set_timesteps(steps)
        return scheduler.sigmas.tolist()

    ode_scheduler = scheduler_of(FlowEulerODEScheduler)
    ode = pipe(labels.tolist(), num_inference_steps=2, num_inference_substeps=2, output_mode="mean", **common).images
    expected = gmflow_sample(model, x_t, 2, method="ode", substeps=2, sigmas=grid(ode_scheduler, 4), **reference).sample
    torch.testing.assert_close(ode, expected, rtol=0, atol=1e-4)

    sde_scheduler = scheduler_of(GMFlowSDEScheduler)  # output_mode "sample" in its config: the exact GM-SDE step
    sde = pipe(labels.tolist(), num_inference_steps=4, num_inference_substeps=1, output_mode="sample",
               generator=[torch.Generator().manual_seed(s) for s in (7, 8)], **common).images
    expected = gmflow_sample(model, x_t, 4, method="sde", spectrum=pipe.spectrum_net, sigmas=grid(sde_scheduler, 4),
                             generator=[torch.Generator().manual_seed(s) for s in (7, 8)], **reference).sample
    torch.testing.assert_close(sde, expected, rtol=0, atol=1e-4)

    # GMFlowSDE + "mean": a DDPM-like step on the GM mean, with the variance the config names
    means = {}
    for variance in ("small", "large"):
        scheduler_of(GMFlowSDEScheduler, output_mode="mean", variance_mode=variance)
        means[variance] = pipe(labels.tolist(), num_inference_steps=4, num_inference_substeps=1, output_mode="mean",
                               generator=torch.Generator().manual_seed(0), **common).images
    scheduler_of(GMFlowSDEScheduler, output_mode="sample")  # its config's output_mode "sample": small variance
    torch.testing.assert_close(pipe(labels.tolist(), num_inference_steps=4, num_inference_substeps=1,
                                    output_mode="mean", generator=torch.Generator().manual_seed(0), **common).images,
                               means["small"])
    assert (means["small"] - means["large"]).abs().max() > 1e-2
    assert (means["small"] - ode).abs().max() > 1e-2


def test_a_scheduler_it_cannot_drive_is_refused(pipe, folder, scheduler_of):
    pipe.scheduler = FlowMatchEulerDiscreteScheduler()
    try:
        with pytest.raises(ValueError, match="cannot drive a FlowMatchEulerDiscreteScheduler: use FlowEulerODEScheduler"):
            run(pipe, class_labels=[A])
    finally:
        scheduler_of(GMFlowSDEScheduler)
    with pytest.raises(ValueError, match="cannot drive a FlowMatchEulerDiscreteScheduler"):
        GMDiTPipeline.from_pretrained(folder, scheduler=FlowMatchEulerDiscreteScheduler())


@pytest.mark.parametrize("scheduler, mode", MODES)
def test_image_i_depends_only_on_generator_i(pipe, scheduler_of, scheduler, mode):
    scheduler_of(scheduler)
    kw = dict(output_mode=mode, guidance_scale=0.3, num_inference_substeps=1 if mode == "sample" else 2,
              output_type="latent")
    batch = pipe([B, A, LAST], generator=[torch.Generator().manual_seed(s) for s in (10, 11, 12)],
                 num_inference_steps=2, **kw).images
    alone = pipe([A], generator=[torch.Generator().manual_seed(11)], num_inference_steps=2, **kw).images
    single = pipe([A], generator=torch.Generator().manual_seed(11), num_inference_steps=2, **kw).images
    # Equal up to the rounding of batched matrix products, amplified along the trajectory: measured up to
    # 1.3e-3 (shifts 1-3, 5 seeds, every mode; AMD EPYC), so the bound is 5e-3; another generator moves the
    # image by more than 20 times that.
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=5e-3)
    other = pipe([A], generator=[torch.Generator().manual_seed(12)], num_inference_steps=2, **kw).images
    assert (other - alone).abs().max() > 0.1
    torch.testing.assert_close(single, alone, rtol=0, atol=0)  # one generator for one image: the same draws
    with pytest.raises(ValueError, match="generator must be one torch.Generator or a list of 3"):
        pipe([A, B, C], generator=[torch.Generator()] * 2, num_inference_steps=1, **kw)


def test_one_generator_draws_x_T_first_then_each_step(pipe, scheduler_of):
    """x_T is diffusers' randn_tensor((B, C, S, S)) from the generator (the official draw)."""
    from diffusers.utils.torch_utils import randn_tensor

    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        run(pipe, seed=4, class_labels=[A, B], guidance_scale=0.0)
    finally:
        hook.remove()
    x_t = randn_tensor((2, CHANNELS, SIZE, SIZE), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(seen[0], x_t, rtol=0, atol=0)


def test_num_images_per_prompt_and_latents(pipe, scheduler_of, monkeypatch):
    seen = []
    original = pipe.transformer.forward

    def recording(hidden_states, timestep, class_labels):
        seen.append(class_labels.tolist())
        return original(hidden_states, timestep, class_labels)

    monkeypatch.setattr(pipe.transformer, "forward", recording)
    images = run(pipe, class_labels=[C, LAST], num_images_per_prompt=2, guidance_scale=0.3,
                 num_inference_steps=1)
    assert images.shape[0] == 4
    null = NUM_CLASSES  # conditional rows first, then the null class
    assert seen == [[C] * 2 + [LAST] * 2 + [null] * 4]

    monkeypatch.undo()
    scheduler_of(FlowEulerODEScheduler)  # GM-ODE: given x_T, nothing is drawn
    x_t = torch.randn(2, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    a = run(pipe, seed=1, class_labels=[A, B], latents=x_t, output_mode="mean")
    b = run(pipe, seed=2, class_labels=[A, B], latents=x_t, output_mode="mean")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(pipe, seed=1, class_labels=[A, B], output_mode="mean"))
    with pytest.raises(ValueError, match=rf"latents must be a \(2, {CHANNELS}, H, W\) tensor"):
        run(pipe, class_labels=[A, B], latents=x_t[:1])


def test_callback_on_step_end(pipe, scheduler_of):
    scheduler_of(FlowEulerODEScheduler)
    calls = []

    def callback(p, step, timestep, tensors):
        calls.append((step, float(timestep), tuple(tensors)))
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 2 else {}

    latents = pipe([A], num_inference_steps=3, num_inference_substeps=2, output_type="latent",
                   generator=torch.Generator().manual_seed(0), callback_on_step_end=callback,
                   callback_on_step_end_tensor_inputs=["latents"]).images
    timesteps = pipe.scheduler.timesteps[::2].tolist()
    assert calls == [(i, timesteps[i], ("latents",)) for i in range(3)]
    assert torch.equal(latents, torch.zeros_like(latents))  # what the last callback returned
    assert pipe.num_timesteps == 3
    with pytest.raises(ValueError, match=r"callback_on_step_end_tensor_inputs must be among \['latents'\]"):
        run(pipe, class_labels=[A], callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["x0"])


def test_output_types(pipe, scheduler_of):
    scheduler_of(FlowEulerODEScheduler)
    kw = dict(class_labels=[A, B], output_mode="mean")
    latent = run(pipe, output_type="latent", **kw)
    pt = run(pipe, output_type="pt", **kw)
    np_images = run(pipe, output_type="np", **kw)
    pil = run(pipe, output_type="pil", **kw)
    assert isinstance(latent, torch.Tensor) and latent.shape == (2, CHANNELS, SIZE, SIZE)
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 3, IMAGE, IMAGE)
    assert isinstance(np_images, np.ndarray) and np_images.shape == (2, IMAGE, IMAGE, 3)
    assert len(pil) == 2 and all(isinstance(im, Image.Image) and im.size == (IMAGE, IMAGE) for im in pil)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), np_images, rtol=0, atol=1e-6)
    decoded = pipe.vae.decode(latent / pipe.vae.config.scaling_factor).sample
    torch.testing.assert_close(pt, (decoded / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pil[0]), (np_images[0] * 255).round().astype(np.uint8))
    out = pipe([A], num_inference_steps=1, output_type="np", return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (1, IMAGE, IMAGE, 3)
    with pytest.raises(ValueError, match="output_type must be one of"):
        run(pipe, class_labels=[A], output_type="jpeg")


def test_progress_bar_follows_diffusers_config(pipe, capsys):
    pipe.set_progress_bar_config(disable=False)
    try:
        run(pipe, class_labels=[A], num_inference_steps=2)
        assert "2/2" in capsys.readouterr().err
    finally:
        pipe.set_progress_bar_config(disable=True)
    run(pipe, class_labels=[A], num_inference_steps=2)
    assert "2/2" not in capsys.readouterr().err


def test_models_are_freed_after_each_call(pipe, monkeypatch):
    calls = []
    monkeypatch.setattr(pipe, "maybe_free_model_hooks", lambda: calls.append(1))
    run(pipe, class_labels=[A], num_inference_steps=1)
    assert calls == [1]


@pytest.mark.parametrize("labels, message", [
    ([1.0, 2.0], r"class_labels must be integer class ids or label words, got \[1.0, 2.0\]"),
    ([True], r"class_labels must be integer class ids or label words, got \[True\]"),
    (torch.tensor([0.5]), "class_labels must be integer class ids .* dtype torch.float32"),
    (np.array([1.0]), "class_labels must be integer class ids .* dtype float64"),
    ([NUM_CLASSES], rf"class_labels \[{NUM_CLASSES}\] are out of range: the model has classes 0..{LAST}"),
    ([-1], r"class_labels \[-1\] are out of range"),
    (["unicorn"], r"unknown class words \['unicorn'\]"),
    ([], "class_labels must not be empty"),
    (None, "class_labels must be class ids or label words, got NoneType"),
])
def test_bad_labels_are_reported(pipe, labels, message):
    with pytest.raises(ValueError, match=message):
        run(pipe, class_labels=labels, num_inference_steps=1)


def test_integer_labels_of_any_kind(pipe):
    reference = run(pipe, class_labels=[A, B], num_inference_steps=1)
    for labels in (torch.tensor([A, B]), np.array([A, B]), [np.int64(A), B], [f"word {A}", f"alias {B}"]):
        np.testing.assert_array_equal(run(pipe, class_labels=labels, num_inference_steps=1), reference)


@pytest.mark.parametrize("kwargs, message", [
    (dict(guidance_scale=1.5), "guidance_scale must be in"),
    (dict(orthogonal_guidance=2.0), "orthogonal_guidance must be in"),
    (dict(output_mode="ode"), "output_mode must be one of"),
    (dict(order=3), "order must be 1 or 2"),
    (dict(num_inference_steps=0), "num_inference_steps must be an integer >= 1"),
    (dict(num_inference_substeps=1.5), "num_inference_substeps must be an integer >= 1"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt must be an integer >= 1"),
    (dict(gm2_coefs=(0.1,)), "gm2_coefs must be two numbers"),
    (dict(gm2_correction_steps=-1), "gm2_correction_steps must be an integer >= 0"),
])
def test_bad_arguments_are_reported(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(pipe, class_labels=[A], **kwargs)


def test_loading_uses_diffusers_machinery(pipe, folder, tmp_path, caplog):
    # component overrides
    ode = FlowEulerODEScheduler(shift=2.0)
    again = GMDiTPipeline.from_pretrained(folder, scheduler=ode, vae=None)
    assert again.scheduler is ode and again.vae is None and again.transformer is not pipe.transformer
    # unknown keywords are warned about and ignored, as diffusers does
    diffusers_logger = logging.getLogger("diffusers")
    diffusers_logger.addHandler(caplog.handler)
    try:
        GMDiTPipeline.from_pretrained(folder, not_an_option=3)
    finally:
        diffusers_logger.removeHandler(caplog.handler)
    assert "{'not_an_option': 3} are not expected by GMDiTPipeline and will be ignored" in caplog.text
    # a variant only some components have: the others fall back to their plain files
    variant = tmp_path / "variant"
    shutil.copytree(folder, variant)
    GMDiTTransformer2DModel.from_pretrained(folder / "transformer", torch_dtype=torch.bfloat16).save_pretrained(
        variant / "transformer", variant="bf16")
    bf16 = GMDiTPipeline.from_pretrained(variant, variant="bf16", torch_dtype=torch.bfloat16)
    assert bf16.transformer.dtype == bf16.spectrum_net.dtype == torch.bfloat16
    bf16.set_progress_bar_config(disable=True)
    images = run(bf16, class_labels=[A], output_mode="sample", guidance_scale=0.3)
    assert np.isfinite(images).all()
    with pytest.raises(ValueError, match="variant=bf16"):
        GMDiTPipeline.from_pretrained(folder, variant="bf16")


def test_bad_folders_are_reported(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json does not exist"):
        GMDiTPipeline.from_pretrained(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "spectrum_net")
    with pytest.raises(ValueError, match="lists spectrum_net but .*spectrum_net is missing"):
        GMDiTPipeline.from_pretrained(broken)
    assert GMDiTPipeline.from_pretrained(broken, spectrum_net=None).spectrum_net is None
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["lib.models.diffusions.schedulers.flow_adapter", "FlowAdapterScheduler"]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="'scheduler' is the official .*FlowAdapterScheduler, which gmfm does not"):
        GMDiTPipeline.from_pretrained(broken, spectrum_net=None)


def test_save_and_reload_round_trip(pipe, scheduler_of, tmp_path):
    scheduler_of(FlowEulerODEScheduler)
    pipe.save_pretrained(tmp_path / "saved")
    again = GMDiTPipeline.from_pretrained(tmp_path / "saved")
    assert isinstance(again.scheduler, FlowEulerODEScheduler) and again.labels == pipe.labels
    again.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(again, class_labels=["tench"]), run(pipe, class_labels=["tench"]))


def test_a_pipeline_without_vae_works_in_data_space(pipe):
    pixels = GMDiTPipeline(pipe.transformer, None, FlowEulerODEScheduler(), None)
    pixels.set_progress_bar_config(disable=True)
    images = run(pixels, class_labels=[A], output_type="pt")
    latents = run(pixels, class_labels=[A], output_type="latent")
    assert images.shape == (1, CHANNELS, SIZE, SIZE)
    torch.testing.assert_close(images, (latents / 2 + 0.5).clamp(0, 1))
