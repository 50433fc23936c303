"""Official-format GM-DiT / SpectrumMLP folders load with from_pretrained and reproduce reference_io.npz."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmfm import IsoGaussian
from gmfm.models import GMDiTTransformer2DModel, SpectrumMLP
from reference_cases import reference_root

FOLDERS = sorted(p for p in (reference_root() / "models").glob("*") if p.is_dir())
ATOL = 1e-5


def test_reference_models_exist():
    assert FOLDERS, f"no reference model folders under {reference_root() / 'models'}"


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_reference_model_folder(folder):
    io = np.load(folder / "reference_io.npz")
    transformer = GMDiTTransformer2DModel.from_pretrained(folder / "transformer", low_cpu_mem_usage=False).eval()
    with torch.no_grad():
        gm = transformer(torch.from_numpy(io["in.hidden_states"]), torch.from_numpy(io["in.timestep"]),
                         torch.from_numpy(io["in.class_labels"]))
    for name in ("means", "logweights", "logstds"):
        want = io[f"out.{name}"]
        got = getattr(gm, name).numpy()
        assert got.shape == want.shape, f"{folder.name}: {name} shape {got.shape} != {want.shape}"
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"{folder.name}: {name}")
    spectrum = SpectrumMLP.from_pretrained(folder / "spectrum_net", low_cpu_mem_usage=False).eval()
    with torch.no_grad():
        log_var = spectrum(IsoGaussian(torch.from_numpy(io["in.spectrum.mean"]), torch.from_numpy(io["in.spectrum.var"])))
    np.testing.assert_allclose(log_var.numpy(), io["out.spectrum.log_var"], atol=ATOL, rtol=0)


def test_private_class_name_of_the_official_code_loads(tmp_path):
    folder = FOLDERS[0] / "transformer"
    target = tmp_path / "transformer"
    target.mkdir()
    (target / "config.json").write_text((folder / "config.json").read_text().replace(
        '"GMDiTTransformer2DModel"', '"_GMDiTTransformer2DModel"'))
    (target / "diffusion_pytorch_model.safetensors").write_bytes(
        (folder / "diffusion_pytorch_model.safetensors").read_bytes())
    model = GMDiTTransformer2DModel.from_pretrained(target, low_cpu_mem_usage=False)
    assert model.config.num_gaussians > 0


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = GMDiTTransformer2DModel(num_gaussians=2, in_channels=1, sample_size=8, patch_size=2,
                                    num_attention_heads=2, attention_head_dim=8, num_layers=2, num_embeds_ada_norm=3,
                                    logstd_inner_dim=8)
    with torch.no_grad():  # the DiT initialisation zeroes the modulation; make the blocks do something
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([100.0, 700.0]), torch.tensor([0, 3])

    def grads():
        model.zero_grad()
        gm = model(x, t, y)
        (gm.means.square().sum() + gm.logweights.sum() + gm.logstds.sum()).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)
