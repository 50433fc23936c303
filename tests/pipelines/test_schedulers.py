"""The GMFlow schedulers keep diffusers' scheduler contract (the checks of diffusers' SchedulerCommonTest)
and take the official steps."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from gmfm.math.flow import sde_step
from gmfm.pipelines import FlowEulerODEScheduler, GMFlowSDEScheduler
from gmfm.solvers.flow_solvers import ddpm_large_std
from gmfm.pipelines.schedulers import FlowSchedulerOutput

CONFIGS = [
    (FlowEulerODEScheduler, {"shift": 1.0}),
    (FlowEulerODEScheduler, {"shift": 3.0, "num_train_timesteps": 500}),
    (GMFlowSDEScheduler, {"shift": 1.0}),
    (GMFlowSDEScheduler, {"shift": 2.0, "output_mode": "mean", "variance_mode": "large"}),
    (GMFlowSDEScheduler, {"output_mode": "mean", "variance_mode": "small"}),
]
IDS = [f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in cfg.items())}" for cls, cfg in CONFIGS]
STEPS = 5


def sample(seed: int = 0, shape=(2, 3, 4, 4)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for a network: a velocity depending on x and t."""
    return 0.5 * x * (t / 1000) + 0.1


def run(scheduler, steps: int = STEPS, seed: int = 0, return_dict: bool = True) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    x = sample(seed) * scheduler.init_noise_sigma
    generator = torch.Generator().manual_seed(seed)
    for t in scheduler.timesteps:
        out = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, generator=generator,
                             return_dict=return_dict)
        x = out.prev_sample if return_dict else out[0]
    return x


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_public_api(cls, config):
    scheduler = cls(**config)
    assert scheduler.init_noise_sigma == 1.0 and scheduler.order == 1
    x = sample()
    assert scheduler.scale_model_input(x, 500.0) is x
    for name in ("step", "set_timesteps", "set_begin_index", "scale_noise", "add_noise", "step_index",
                 "begin_index", "compatibles", "save_pretrained", "from_pretrained", "from_config"):
        assert hasattr(scheduler, name), name
    assert scheduler.step_index is None and scheduler.begin_index is None


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_official_grid(cls, config):
    scheduler = cls(**config)
    scheduler.set_timesteps(STEPS, device="cpu")
    shift = config.get("shift", 1.0)
    s = 1 - np.arange(STEPS) / STEPS
    expected = shift * s / (1 + (shift - 1) * s)
    assert scheduler.sigmas.dtype == scheduler.timesteps.dtype == torch.float32
    np.testing.assert_allclose(scheduler.sigmas.numpy(), np.append(expected, 0.0), rtol=1e-6)
    np.testing.assert_allclose(scheduler.timesteps.numpy(), expected * scheduler.config.num_train_timesteps, rtol=1e-6)
    assert scheduler.num_inference_steps == STEPS and scheduler.step_index is None


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_custom_sigmas_and_timesteps(cls, config):
    scheduler = cls(**config)
    custom = [1.0, 0.6, 0.3, 0.1]
    scheduler.set_timesteps(sigmas=custom)
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=scheduler.config.num_train_timesteps,
                                                shift=scheduler.config.shift)
    reference.set_timesteps(sigmas=custom)
    torch.testing.assert_close(scheduler.sigmas, reference.sigmas, rtol=0, atol=0)
    torch.testing.assert_close(scheduler.timesteps, reference.timesteps, rtol=0, atol=0)
    assert len(scheduler.sigmas) == len(custom) + 1 and float(scheduler.sigmas[-1]) == 0
    scheduler.set_timesteps(timesteps=[900.0, 400.0], sigmas=[0.9, 0.4])
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), np.array([900.0, 400.0], np.float32))
    with pytest.raises(ValueError, match="num_inference_steps, sigmas or timesteps"):
        scheduler.set_timesteps()
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1"):
        scheduler.set_timesteps(0)


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_save_and_load_round_trip(cls, config, tmp_path):
    """diffusers' test_from_pretrained: a saved and reloaded scheduler has the same config, and no
    ``_use_default_values`` (every key was in the file); FlowMatchEuler's options are not among the
    defaults a config of ours reports."""
    scheduler = cls(**config)
    defaults = set(scheduler.config.get("_use_default_values", []))
    assert defaults == set(inspect.signature(cls.__init__).parameters) - {"self", *config}
    scheduler.save_pretrained(tmp_path)
    again = cls.from_pretrained(tmp_path)
    assert "_use_default_values" not in again.config
    assert dict(again.config) == {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}
    torch.testing.assert_close(run(again), run(scheduler), rtol=0, atol=0)


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_return_dict_and_step_shape(cls, config):
    a, b = run(cls(**config), return_dict=True), run(cls(**config), return_dict=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape == sample().shape and a.dtype == torch.float32
    scheduler = cls(**config)
    scheduler.set_timesteps(STEPS)
    out = scheduler.step(torch.zeros(2, 3, 4, 4), scheduler.timesteps[0], sample(),
                         generator=torch.Generator().manual_seed(0))
    assert isinstance(out, FlowSchedulerOutput) and out.prev_sample.shape == (2, 3, 4, 4)
    assert scheduler.step_index == 1


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_compatibles(cls, config):
    scheduler = cls(**config)
    assert set(scheduler.compatibles) == {FlowEulerODEScheduler, GMFlowSDEScheduler}
    init_keys = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for other in scheduler.compatibles:
        converted = other.from_config(scheduler.config)
        back = cls.from_config(converted.config)
        assert {k: v for k, v in back.config.items() if k in scheduler.config} == dict(scheduler.config)
        assert not ({k for k in back.config if k not in scheduler.config} & init_keys)


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_begin_index(cls, config):
    noise = sample(5)
    full = cls(**config)
    full.set_timesteps(STEPS)
    x = sample()
    for t in full.timesteps[:2]:
        x = full.step(model(x, t), t, x, variance_noise=noise)[0] if cls is GMFlowSDEScheduler else \
            full.step(model(x, t), t, x)[0]
    partial = cls(**config)
    partial.set_timesteps(STEPS)
    partial.set_begin_index(2)
    assert partial.begin_index == 2
    t = full.timesteps[2]
    kwargs = {"variance_noise": noise} if cls is GMFlowSDEScheduler else {}
    # with a begin index the timestep is not looked up: the third step is taken
    torch.testing.assert_close(partial.step(model(x, t), t, x, **kwargs)[0], full.step(model(x, t), t, x, **kwargs)[0])
    assert partial.step_index == full.step_index == 3


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_misuse_is_reported(cls, config):
    scheduler = cls(**config)
    scheduler.set_timesteps(2)
    x = sample()
    with pytest.raises(ValueError, match="not an integer index"):
        scheduler.step(x, 1, x)
    with pytest.raises(ValueError, match="not an integer index"):
        scheduler.step(x, torch.tensor(1), x)
    with pytest.raises(ValueError, match=r"one timestep for the whole batch, got a tensor of shape \(2,\)"):
        scheduler.step(x, scheduler.timesteps[:2], x)
    with pytest.raises(ValueError, match="timestep 123.0 is not one of scheduler.timesteps"):
        scheduler.step(x, 123.0, x)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        scheduler.step(x, scheduler.timesteps[0], x, prediction_type="eps")
    with pytest.raises(ValueError, match="model_output must have the shape of sample"):
        scheduler.step(x[:1], scheduler.timesteps[0], x)
    scheduler.set_timesteps(2)
    for t in scheduler.timesteps:
        x = scheduler.step(x, t, x)[0]
    with pytest.raises(ValueError, match="called 3 times after set_timesteps set 2 steps: call set_timesteps again"):
        scheduler.step(x, scheduler.timesteps[-1], x)


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_add_noise_and_scale_noise(cls, config):
    scheduler = cls(**config)
    scheduler.set_timesteps(STEPS)
    x0, noise = sample(1), sample(2)
    t = scheduler.timesteps[1:3]  # one per sample
    sigma = (t / scheduler.config.num_train_timesteps).reshape(-1, 1, 1, 1)
    expected = (1 - sigma) * x0 + sigma * noise
    torch.testing.assert_close(scheduler.add_noise(x0, noise, t), expected)
    torch.testing.assert_close(scheduler.scale_noise(x0, t, noise), expected)
    torch.testing.assert_close(scheduler.add_noise(x0, noise, 1000.0 * scheduler.config.num_train_timesteps / 1000),
                               noise)
    with pytest.raises(ValueError, match="timesteps must be one value or one per sample"):
        scheduler.add_noise(x0, noise, torch.ones(3))


def test_ode_scheduler_is_diffusers_flow_match_euler_on_the_same_grid():
    ours = FlowEulerODEScheduler(shift=3.0)
    ours.set_timesteps(4)
    theirs = FlowMatchEulerDiscreteScheduler(shift=3.0)
    theirs.set_timesteps(sigmas=(1 - np.arange(4) / 4).tolist())
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=0, atol=0)
    torch.testing.assert_close(run(ours, steps=4), run_fixed(theirs), rtol=0, atol=0)


def run_fixed(scheduler) -> torch.Tensor:
    x = sample(0)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x).prev_sample
    return x


def test_x0_and_u_predictions_agree():
    for cls in (FlowEulerODEScheduler, GMFlowSDEScheduler):
        a, b = cls(shift=2.0), cls(shift=2.0)
        a.set_timesteps(3)
        b.set_timesteps(3)
        x, x0, noise = sample(0), sample(1), sample(2)
        for t, sigma in zip(a.timesteps, a.sigmas):
            u = (x - x0) / sigma
            ya = a.step(x0, t, x, prediction_type="x0", **({"variance_noise": noise} if cls is GMFlowSDEScheduler else {}))[0]
            yb = b.step(u, t, x, prediction_type="u", **({"variance_noise": noise} if cls is GMFlowSDEScheduler else {}))[0]
            torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
            x = ya


def test_euler_step_formula():
    scheduler = FlowEulerODEScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    x, x0 = sample(0), sample(1)
    out = scheduler.step(x0, scheduler.timesteps[1], x, prediction_type="x0").prev_sample
    sigma, sigma_to = scheduler.sigmas[1], scheduler.sigmas[2]
    torch.testing.assert_close(out, x + (x - x0) / sigma * (sigma_to - sigma))


@pytest.mark.parametrize("output_mode, variance_mode, variance", [
    ("sample", "large", "small"), ("sample", "small", "small"), ("mean", "small", "small"), ("mean", "large", "large")])
def test_sde_step_uses_the_configured_variance(output_mode, variance_mode, variance):
    scheduler = GMFlowSDEScheduler(shift=2.0, output_mode=output_mode, variance_mode=variance_mode)
    assert scheduler.variance == variance
    scheduler.set_timesteps(4)
    x, x0, noise = sample(0), sample(1), sample(2)
    k = 1
    scheduler.set_begin_index(k)
    out = scheduler.step(x0, scheduler.timesteps[k], x, prediction_type="x0", variance_noise=noise).prev_sample
    sigma, sigma_to = float(scheduler.sigmas[k]), float(scheduler.sigmas[k + 1])
    mean = sde_step(x0, x, sigma, sigma_to, torch.zeros_like(noise))
    if variance == "small":
        std = ((1 - (sigma_to / sigma * (1 - sigma) / (1 - sigma_to)) ** 2) ** 0.5) * sigma_to
    else:
        std = ddpm_large_std(sigma, sigma_to)
    torch.testing.assert_close(out, mean + std * noise)
    assert std > 0 and (variance == "small") == (std < ddpm_large_std(sigma, sigma_to))


def test_sde_noise_follows_the_generator_row_by_row():
    scheduler = GMFlowSDEScheduler()
    x, x0 = sample(0, (3, 2, 4, 4)), sample(1, (3, 2, 4, 4))

    def first_step(generator):
        scheduler.set_timesteps(2)
        return scheduler.step(x0, scheduler.timesteps[0], x, generator=generator, prediction_type="x0")[0]

    batch = first_step([torch.Generator().manual_seed(s) for s in (4, 5, 6)])
    scheduler_alone = GMFlowSDEScheduler()
    scheduler_alone.set_timesteps(2)
    alone = scheduler_alone.step(x0[1:2], scheduler_alone.timesteps[0], x[1:2],
                                 generator=[torch.Generator().manual_seed(5)], prediction_type="x0")[0]
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=0)
    torch.testing.assert_close(first_step(torch.Generator().manual_seed(0)), first_step(torch.Generator().manual_seed(0)))
    assert not torch.equal(first_step(torch.Generator().manual_seed(0)), first_step(torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="variance_noise must have the shape of sample"):
        scheduler.set_timesteps(2)
        scheduler.step(x0, scheduler.timesteps[0], x, variance_noise=x[:1])


def test_configs_are_checked_and_official_ones_load():
    with pytest.raises(ValueError, match="output_mode must be one of"):
        GMFlowSDEScheduler(output_mode="ode")
    with pytest.raises(ValueError, match="variance_mode must be one of"):
        GMFlowSDEScheduler(variance_mode="medium")
    official = {"_class_name": "GMFlowSDEScheduler", "_diffusers_version": "0.32.2", "num_train_timesteps": 1000,
                "shift": 3.0, "output_mode": "sample", "variance_mode": "large"}
    sde = GMFlowSDEScheduler.from_config(official)
    ode = FlowEulerODEScheduler.from_config(official)
    assert sde.config.shift == ode.config.shift == 3.0 and sde.variance == "small"
