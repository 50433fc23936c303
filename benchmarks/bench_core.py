"""Core benchmark: GM ops and one GM solver step (no network) against a DiT-S forward, K = 8, 4 x 32 x 32.

    python -m benchmarks.bench_core [--batch 16 64] [--device cpu] [--official-dir PATH]

Writes benchmarks/results/core.json and core.md. With ``--official-dir`` (a checkout of Lakonik/GMFlow)
the official pure-PyTorch ops and sampling step run beside ours on the same inputs. The DiT-S forward
needs diffusers (``pip install -e '.[bench]'``); without it that column is skipped.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from .common import RESULTS_DIR, time_call, time_calls, write_results

from gmfm import GaussianMixture, IsoGaussian, ProbabilisticGuidance, gmflow_sample, probabilistic_guidance
from gmfm.math import (
    convert_denoising_gm_mean,
    gm_mean,
    gm_mul_iso_gaussian,
    gm_nll,
    gm_sample,
    gm_to_iso_gaussian,
    iso_gaussian_mul_iso_gaussian,
    reverse_transition,
    u_to_x0,
)

K, C, H, W = 8, 4, 32, 32
STEP_CONFIGS = [
    # name, method, order, substeps, guidance w, spectral sampling
    ("GM-SDE (1st order, unguided)", "sde", 1, 1, 0.0, False),
    ("GM-SDE 2, guided w=0.3", "sde", 2, 1, 0.3, False),
    ("GM-SDE 2, guided w=0.3, spectral sampling", "sde", 2, 1, 0.3, True),
    ("GM-ODE 2, guided w=0.3, 4 substeps", "ode", 2, 4, 0.3, False),
    ("GM-ODE 2, guided w=0.3, 16 substeps", "ode", 2, 16, 0.3, False),
]
SOLVER_STEPS = 8


def make_inputs(batch: int, device: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    def gm(b):
        return GaussianMixture.from_logits(randn(b, K, C, H, W), randn(b, K, 1, H, W), randn(b, 1, 1, 1, 1) * 0.1 - 1)

    return {"gm": gm(batch), "gm2": gm(batch), "doubled": gm(2 * batch), "x": randn(batch, C, H, W),
            "x2": randn(batch, C, H, W), "noise": randn(batch, C, H, W)}


def as_dict(gm: GaussianMixture) -> dict:
    """A fresh official-style dict (the official ops cache derived tensors in it, so never reuse one)."""
    return {"means": gm.means, "logweights": gm.logweights, "logstds": gm.logstds}


def op_benchmarks(inp: dict, official, device: str) -> list[dict]:
    gm, gm2, x, x2 = inp["gm"], inp["gm2"], inp["x"], inp["x2"]
    iso = gm_to_iso_gaussian(gm)
    g_sample = IsoGaussian(iso.mean, iso.var.mean(dim=(-2, -1), keepdim=True))
    t_hi, t_lo = torch.tensor(600.0, device=device), torch.tensor(300.0, device=device)
    ours = {
        "gm_mean": lambda: gm_mean(gm),
        "gm_to_iso_gaussian": lambda: gm_to_iso_gaussian(gm),
        "gm_nll": lambda: gm_nll(gm, x),
        "gm_mul_iso_gaussian": lambda: gm_mul_iso_gaussian(gm, g_sample, 1.0, 1.0),
        "iso_gaussian_mul_iso_gaussian": lambda: iso_gaussian_mul_iso_gaussian(g_sample, g_sample, 1.0, -0.5),
        "gm_sample": lambda: gm_sample(gm),
        "u_to_x0": lambda: u_to_x0(gm, x, 0.6),
        "reverse_transition": lambda: reverse_transition(gm, x, 0.6, 0.3),
        "convert_denoising_gm_mean": lambda: convert_denoising_gm_mean(gm, x, 0.6, x2, 0.3),
        "probabilistic_guidance": lambda: probabilistic_guidance(gm, gm2, 0.3, 1.0),
    }
    theirs = {}
    if official is not None:
        ops, mixin = official.ops, official.mixin
        sigma_src = torch.full((x.shape[0], 1, 1, 1), 0.6, device=device)
        sigma_tgt = torch.full((x.shape[0], 1, 1, 1), 0.3, device=device)
        gvar = torch.exp(2 * gm.logstds)

        def official_guidance():
            cond, uncond = as_dict(gm), as_dict(gm2)
            uncond_mean = ops.gm_to_mean(uncond)
            gc = ops.gm_to_iso_gaussian(cond)[0]
            gc["var"] = gc["var"].mean(dim=(-1, -2), keepdim=True)
            out, _, _ = official.probabilistic_guidance_jit(gc["mean"], gc["var"], uncond_mean, 0.3, orthogonal=1.0)
            return ops.gm_mul_iso_gaussian(cond, ops.iso_gaussian_mul_iso_gaussian(out, gc, 1, -1), 1, 1)[0]

        theirs = {
            "gm_mean": lambda: ops.gm_to_mean(as_dict(gm)),
            "gm_to_iso_gaussian": lambda: ops.gm_to_iso_gaussian(as_dict(gm)),
            "gm_nll": lambda: official.gaussian_mixture_nll_loss(gm.means, x, gm.logstds, gm.logweights),
            "gm_mul_iso_gaussian": lambda: ops.gm_mul_iso_gaussian(
                as_dict(gm), {"mean": g_sample.mean, "var": g_sample.var}, 1, 1),
            "iso_gaussian_mul_iso_gaussian": lambda: ops.iso_gaussian_mul_iso_gaussian(
                {"mean": g_sample.mean, "var": g_sample.var}, {"mean": g_sample.mean, "var": g_sample.var}, 1, -0.5),
            "gm_sample": lambda: ops.gm_to_sample(as_dict(gm)),
            "u_to_x0": lambda: mixin.u_to_x_0(as_dict(gm), x, t_hi),
            "reverse_transition": lambda: mixin.reverse_transition(as_dict(gm), x, t_lo, t_hi),
            "convert_denoising_gm_mean": lambda: official.denoising_gm_convert_to_mean_jit(
                sigma_src, sigma_tgt, x, x2, gm.means, gvar, gm.logweights, 1e-6),
            "probabilistic_guidance": official_guidance,
        }
    rows = []
    for name, fn in ours.items():
        timed = time_calls({"gmfm": fn, **({"official": theirs[name]} if name in theirs else {})}, device, min_seconds=1.5)
        rows.append({"op": name, "gmfm_ms": timed["gmfm"], **({"official_ms": timed["official"]} if name in theirs else {})})
    return rows


def official_sample(official, doubled: dict, noise, steps, substeps, method, order, w):
    """The official sampling loop (GMFlow.forward_test order of operations) with a constant 'network'."""
    ops, mixin = official.ops, official.mixin
    batch = noise.shape[0]
    guided = w > 0
    m = steps * substeps
    s = torch.from_numpy(1 - __import__("numpy").linspace(0, 1, m, dtype="float32", endpoint=False))
    timesteps = (s * 1000).to(noise.device)
    sigmas = torch.cat([s, torch.zeros(1)]).to(noise.device)
    mixin.init_gm_cache()
    x = noise
    for i in range(steps):
        t = timesteps[i * substeps]
        x_in = torch.cat([x, x]) if guided else x
        out = {k: (v if guided else v[:batch]) for k, v in doubled.items()}
        gm_output = mixin.u_to_x_0(out, x_in, t)
        if guided:
            gm_cond = {k: v[:batch] for k, v in gm_output.items()}
            gm_uncond = {k: v[batch:] for k, v in gm_output.items()}
            uncond_mean = ops.gm_to_mean(gm_uncond)
            gaussian_cond = ops.gm_to_iso_gaussian(gm_cond)[0]
            gaussian_cond["var"] = gaussian_cond["var"].mean(dim=(-1, -2), keepdim=True)
            gaussian_output, cfg_bias, avg_var = official.probabilistic_guidance_jit(
                gaussian_cond["mean"], gaussian_cond["var"], uncond_mean, w, orthogonal=1.0)
            gm_output = ops.gm_mul_iso_gaussian(
                gm_cond, ops.iso_gaussian_mul_iso_gaussian(gaussian_output, gaussian_cond, 1, -1), 1, 1)[0]
        else:
            gaussian_output = ops.gm_to_iso_gaussian(gm_output)[0]
            gm_cond = gaussian_cond = avg_var = cfg_bias = None
        if order == 2:
            h = t - timesteps[(i + 1) * substeps] if i < steps - 1 else t
            gm_output, gaussian_output = mixin.gm_2nd_order(
                gm_output, gaussian_output, x, t, h, w, gm_cond, gaussian_cond, avg_var, cfg_bias)
        x_base, t_base = x, t
        for j in range(substeps):
            if j == 0:
                x0 = mixin.gm_to_model_output(gm_output, "mean" if method == "ode" else "sample").reshape(x.shape)
            else:
                t = timesteps[i * substeps + j]
                x0 = mixin.denoising_gm_convert_to_mean(gm_output, x, x_base, t, t_base, prediction_type="x0")
            sigma, sigma_to = sigmas[i * substeps + j], sigmas[i * substeps + j + 1]
            if method == "ode":  # FlowEulerODEScheduler.step
                x = x + (x - x0) / sigma * (sigma_to - sigma)
            else:  # GMFlowSDEScheduler.step
                r = sigma_to / sigma.clamp(min=1e-6)
                a = (1 - sigma) / (1 - sigma_to).clamp(min=1e-6)
                beta = 1 - (r * a) ** 2
                x = r**2 * a * x + beta * (1 - sigma_to) * x0 + beta**0.5 * sigma_to * torch.randn_like(x)
    return x


def step_benchmarks(inp: dict, official, device: str) -> list[dict]:
    batch = inp["x"].shape[0]
    rows = []
    from gmfm.models import SpectrumMLP

    spectrum_net = SpectrumMLP(base_size=(C, H, W)).to(device)
    for name, method, order, substeps, w, spectral in STEP_CONFIGS:
        doubled = inp["doubled"] if w > 0 else inp["doubled"][:batch]
        labels = torch.zeros(batch, dtype=torch.long, device=device)

        def constant_network(x_t, sigma, condition, _gm=doubled):
            return _gm

        def ours():
            return gmflow_sample(constant_network, inp["noise"], SOLVER_STEPS, method=method, order=order,
                                 substeps=substeps, condition=labels, uncond_condition=labels if w else None,
                                 guidance=ProbabilisticGuidance(w) if w else None, check_outputs=False,
                                 spectrum=spectrum_net if spectral else None)

        fns = {"gmfm": ours}
        if official is not None and not spectral:  # the official spectral sampling needs its CUDA kernel
            d = as_dict(inp["doubled"])
            fns["official"] = lambda: official_sample(official, d, inp["noise"], SOLVER_STEPS, substeps, method, order, w)
        timed = time_calls(fns, device, min_seconds=4.0)
        row = {"config": name, "gmfm_ms_per_step": timed["gmfm"] / SOLVER_STEPS}
        if "official" in timed:
            row["official_ms_per_step"] = timed["official"] / SOLVER_STEPS
        rows.append(row)
    return rows


def dit_s(device: str):
    """A DiT-S/2-sized class-conditional transformer (12 layers, 6 x 64 heads) with a K = 8 GM output size."""
    try:
        from diffusers import DiTTransformer2DModel
    except ImportError:
        return None
    model = DiTTransformer2DModel(
        num_attention_heads=6, attention_head_dim=64, in_channels=C, out_channels=K * (C + 1), num_layers=12,
        sample_size=H, patch_size=2, num_embeds_ada_norm=1000,
    )
    return model.to(device).eval()


def network_benchmarks(batch: int, device: str) -> dict | None:
    model = dit_s(device)
    if model is None:
        return None
    result = {"params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    for b, key in ((batch, "forward_ms"), (2 * batch, "forward_doubled_ms")):
        x = torch.randn(b, C, H, W, device=device)
        t = torch.full((b,), 500, device=device)
        y = torch.zeros(b, dtype=torch.long, device=device)
        with torch.inference_mode():
            result[key] = time_call(lambda: model(x, timestep=t, class_labels=y), device, min_seconds=3.0,
                                    warmup=1)
    return result


def to_markdown(results: dict) -> str:
    lines = []
    for entry in results["batches"]:
        b = entry["batch"]
        lines.append(f"## Batch {b} (K = {K}, latents {C} x {H} x {W}, float32, {results['device']})\n")
        lines.append("| op | gmfm (ms) | official (ms) | official / gmfm |")
        lines.append("|---|---:|---:|---:|")
        for r in entry["ops"]:
            off = r.get("official_ms")
            ratio = f"{off / r['gmfm_ms']:.2f}" if off else "n/a"
            lines.append(f"| {r['op']} | {r['gmfm_ms']:.3f} | {off:.3f} | {ratio} |" if off else
                         f"| {r['op']} | {r['gmfm_ms']:.3f} | n/a | n/a |")
        net = entry.get("network")
        lines.append("")
        if net:
            lines.append(f"DiT-S/2-sized network ({net['params_M']:.1f} M params): forward on batch {b}: "
                         f"{net['forward_ms']:.1f} ms; on the doubled guidance batch {2 * b}: "
                         f"{net['forward_doubled_ms']:.1f} ms.\n")
        lines.append(f"| solver step, no network ({SOLVER_STEPS}-step run / {SOLVER_STEPS}) | gmfm (ms) | "
                     "official (ms) | gmfm / forward on B | gmfm / forward (doubled batch if guided) |")
        lines.append("|---|---:|---:|---:|---:|")
        for r in entry["steps"]:
            off = r.get("official_ms_per_step")
            cells = [r["config"], f"{r['gmfm_ms_per_step']:.2f}", f"{off:.2f}" if off else "n/a"]
            if net:
                cells += [f"{100 * r['overhead_vs_forward']:.2f}%", f"{100 * r['overhead_vs_step_forward']:.2f}%"]
            else:
                cells += ["n/a", "n/a"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"Target: a GM solver step under 5% of the network forward on the same batch "
                 f"(paper: 1.3% on an A100). Worst measured: {100 * results['worst_overhead']:.2f}%."
                 if results.get("worst_overhead") is not None else "Network timing skipped (no diffusers).")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64], help="batch sizes (default 16 64)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--official-dir", default=None, help="checkout of Lakonik/GMFlow to time beside ours")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder (default benchmarks/results)")
    parser.add_argument("--name", default="core", help="result file stem (default core)")
    args = parser.parse_args()

    official = None
    if args.official_dir:
        from .official import load_official
        official = load_official(args.official_dir)

    results = {"device": args.device, "K": K, "latent_shape": [C, H, W], "solver_steps_per_run": SOLVER_STEPS,
               "official_compared": official is not None, "batches": []}
    worst = None
    for batch in args.batch:
        inp = make_inputs(batch, args.device)
        print(f"batch {batch}: ops", flush=True)
        entry = {"batch": batch, "ops": op_benchmarks(inp, official, args.device)}
        print(f"batch {batch}: solver steps", flush=True)
        entry["steps"] = step_benchmarks(inp, official, args.device)
        print(f"batch {batch}: network", flush=True)
        net = network_benchmarks(batch, args.device)
        entry["network"] = net
        if net:
            for r in entry["steps"]:
                guided = "guided" in r["config"] and "unguided" not in r["config"]
                r["overhead_vs_forward"] = r["gmfm_ms_per_step"] / net["forward_ms"]
                r["overhead_vs_step_forward"] = r["gmfm_ms_per_step"] / (
                    net["forward_doubled_ms"] if guided else net["forward_ms"])
                worst = max(worst or 0.0, r["overhead_vs_forward"])
        results["batches"].append(entry)
    results["worst_overhead"] = worst
    json_path, md_path = write_results(args.name, results, to_markdown(results), Path(args.out))
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    if not math.isfinite(worst or 0.0):
        raise SystemExit("non-finite timing")


if __name__ == "__main__":
    main()
