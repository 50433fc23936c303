"""Why GMFlow loses to flow matching on MNIST: the three anomalies of the first MNIST benchmark, measured
on its two trained models (GMFlow and FM, configs/mnist_*.toml as they were before the recipe study).

    python -m benchmarks.mnist_anomalies --work-dir outputs/mnist_base [--out benchmarks/results]

1. GM-ODE 2 got worse with more steps: FD of Euler on the GM mean, GM-ODE 1 / 2 with and without substeps,
   GM-ODE 2 without its 2nd-order correction (= GM-ODE 1), and GM-ODE 2 with the official absolute 1e-6
   variance floors (gmfm.math.official_floors) against gmfm's scale-relative ones, at NFE 8 / 16 / 32 / 64;
   the mean-velocity error by sigma (0.01 - 0.97) of both models; the variance of the x0 posterior the
   solvers see at small sigma (what the floors act on).
2. Unguided class accuracy: the same sampler on both models (Euler on the mean velocity, NFE 32); the
   class signal in each network, |u(x_t, label) - u(x_t, null)|^2 by sigma; the class accuracy of the
   one-step x0 prediction from noised held-out digits.
3. Guidance: probabilistic guidance vs CFG applied to the same GM model (component shift) at NFE 16, the
   per-pixel spread of the GM variance that probabilistic guidance replaces by its pixel average, and the
   share of pixels whose dominant component the guidance flips.
4. Where the error is: the power of the one-step x0 predictions (x_t - sigma * mean velocity) of noised
   held-out digits above a spatial frequency of 1/4 cycle per pixel, against that of the digits themselves.
Writes mnist_anomalies.{json,md} and grids under --out; sample metrics already in --out/mnist_anomalies.json
are reused (a rerun computes only what is missing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .common import RESULTS_DIR, write_results

from gmfm.data.mnist import load_mnist_splits
from gmfm.experiments import load_run, make_guidance, sample_trained
from gmfm.experiments.images import ClassifierEvaluator, velocity_error_by_sigma
from gmfm.experiments.results import markdown_table
from gmfm.guidance import pixel_averaged_gaussian
from gmfm.math import gm_mean, gm_to_iso_gaussian, official_floors, u_to_x0
from gmfm.metrics.figures import save_image_grid

NFES = (8, 16, 32, 64)
SIGMAS = (0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.97)
PER_CLASS = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/mnist_base"),
                        help="holds gmflow/ and fm/, the two runs of the first MNIST benchmark")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = load_mnist_splits()
    evaluate = ClassifierEvaluator(data.train_images, data.train_labels, data.test_images,
                                   cache=args.work_dir / "classifier.pt")
    gm = load_run(args.work_dir / "gmflow", device=args.device)
    fm = load_run(args.work_dir / "fm", device=args.device)
    labels = torch.arange(10).repeat_interleave(PER_CLASS)
    previous = args.out / "mnist_anomalies.json"
    cached = json.loads(previous.read_text()).get("results", {}) if previous.exists() else {}
    results: dict[str, dict] = {}
    shown = ("gm_gmode2_8", "gm_gmode2_16_cfg1.5")

    def run(key: str, trained, solver: str, nfe: int, official: bool = False, **kw) -> None:
        grid_file = args.out / f"mnist_anomalies_{key}.png"
        if key in cached and (key not in shown or grid_file.exists()):
            results[key] = cached[key]
            return
        tic = time.perf_counter()
        if official:
            with official_floors():
                x = sample_trained(trained, solver, nfe, labels=labels, device=args.device, **kw)
        else:
            x = sample_trained(trained, solver, nfe, labels=labels, device=args.device, **kw)
        metrics = evaluate(x, labels).as_dict()
        metrics["seconds"] = time.perf_counter() - tic
        results[key] = metrics
        print(key, {k: round(v, 4) for k, v in metrics.items()}, flush=True)
        if key in shown:
            grid = x.reshape(10, PER_CLASS, 1, 32, 32)[:, :10].reshape(-1, 1, 32, 32)
            save_image_grid(grid, grid_file, nrow=10, row_labels=[str(c) for c in range(10)], title=key)
        cached[key] = metrics  # written after every run: an interrupted rerun starts where this one stopped
        previous.parent.mkdir(parents=True, exist_ok=True)
        previous.write_text(json.dumps({"results": cached}, indent=1))

    # 1. GM-ODE 2 and the number of steps
    for nfe in NFES:  # (GM-ODE 1 with 1 substep is Euler on the GM mean: the same samples; FM improves up to 32)
        run(f"gm_euler_on_mean_{nfe}", gm, "euler", nfe)
        run(f"gm_gmode1_{nfe}", gm, "gmode", nfe)
        run(f"gm_gmode2_1substep_{nfe}", gm, "gmode2", nfe, substeps=1)
        run(f"gm_gmode2_{nfe}", gm, "gmode2", nfe)
        run(f"gm_gmode2_official_floors_{nfe}", gm, "gmode2", nfe, official=True)
        run(f"gm_gmsde2_{nfe}", gm, "gmsde2", nfe)
        if nfe <= 32:
            run(f"fm_euler_{nfe}", fm, "euler", nfe)
            run(f"fm_dpmpp2m_{nfe}", fm, "dpmpp2m", nfe)
    for ca in (0.0, 0.0005, 0.05, 0.5):  # the damping of the 2nd-order mean difference (official ca = 0.005)
        for nfe in (8, 16, 32):
            run(f"gm_gmode2_{nfe}_ca{ca}", gm, "gmode2", nfe, second_order_coefs=(ca, 1.0))
    for substeps in (2, 8):  # 1: gm_gmode2_1substep_8; the default at NFE 8 (16, the image cap): gm_gmode2_8
        run(f"gm_gmode2_nfe8_substeps{substeps}", gm, "gmode2", 8, substeps=substeps)
    held_x, held_y = data.test_images[::2], data.test_labels[::2]
    velocity = {kind: velocity_error_by_sigma(t, held_x, held_y, SIGMAS) for kind, t in (("gmflow", gm), ("fm", fm))}
    posterior = posterior_variances(gm, held_x[:200], held_y[:200], args.device)

    # 2. class accuracy
    signal = {kind: class_signal(t, held_x, held_y, args.device, evaluate.classifier)
              for kind, t in (("gmflow", gm), ("fm", fm))}

    # 3. guidance
    # (the full probabilistic-guidance and CFG sweeps are bench_mnist.py's; here the same GM model under both)
    run("gm_gmode2_16_pg0.1", gm, "gmode2", 16, guidance=make_guidance(0.1))
    run("gm_gmode2_16_cfg1.5", gm, "gmode2", 16, guidance=make_guidance(cfg_scale=1.5))
    spread = guidance_spread(gm, held_x[:200], held_y[:200], args.device)

    spectrum = {kind: high_frequency_power(t, held_x, held_y, args.device) for kind, t in (("gmflow", gm), ("fm", fm))}

    cols = ["fd", "precision", "recall", "accuracy", "saturated_fraction_vs_real"]
    md = (f"Runs: {args.work_dir}/gmflow, {args.work_dir}/fm (configs/mnist_*.toml before the study, 3,800 iterations "
          f"each); {PER_CLASS} samples per class, metrics against the 1,000 held-out digits.\n\n"
          "## Samples\n\n" + markdown_table(results, list(results), cols) +
          "\n## Mean-velocity error by sigma (true labels / null label)\n\n" +
          "| sigma | GMFlow cond | FM cond | GMFlow uncond | FM uncond |\n|---:|---:|---:|---:|---:|\n" +
          "".join(f"| {s} | {velocity['gmflow'][s]['cond']:.4f} | {velocity['fm'][s]['cond']:.4f} | "
                  f"{velocity['gmflow'][s]['uncond']:.4f} | {velocity['fm'][s]['uncond']:.4f} |\n" for s in SIGMAS) +
          "\n## x0 posterior variance the solvers see (GMFlow, held-out digits)\n\n" +
          "| sigma | pixel-averaged variance | smallest pixel variance | share of samples below 1e-4 |\n"
          "|---:|---:|---:|---:|\n" +
          "".join(f"| {s} | {v['avg_var']:.3g} | {v['min_pixel_var']:.3g} | {v['share_below_1e-4']:.3f} |\n"
                  for s, v in posterior.items()) +
          "\n## Class signal of the networks: mean |u(label) - u(null)|^2 and one-step x0 accuracy\n\n" +
          "| sigma | GMFlow signal | FM signal | GMFlow x0 accuracy | FM x0 accuracy |\n|---:|---:|---:|---:|---:|\n" +
          "".join(f"| {s} | {signal['gmflow'][s]['signal']:.4f} | {signal['fm'][s]['signal']:.4f} | "
                  f"{signal['gmflow'][s]['x0_accuracy']:.3f} | {signal['fm'][s]['x0_accuracy']:.3f} |\n"
                  for s in signal["gmflow"]) +
          "\n## High-frequency power of the one-step x0 prediction (held-out digits: "
          f"{spectrum['gmflow']['data']:.4f})\n\n" +
          "| sigma | GMFlow | FM |\n|---:|---:|---:|\n" +
          "".join(f"| {s} | {spectrum['gmflow'][s]:.4f} | {spectrum['fm'][s]:.4f} |\n" for s in SPECTRUM_SIGMAS) +
          "\n## Per-pixel spread of the GM variance and guidance mode flips (GMFlow, w = 0.3)\n\n" +
          "| sigma | max / mean pixel variance | share of pixels whose dominant component flips |\n|---:|---:|---:|\n" +
          "".join(f"| {s} | {v['max_over_mean']:.1f} | {v['flipped']:.3f} |\n" for s, v in spread.items()))
    payload = {"device": args.device, "results": results, "velocity_error": {str(k): v for k, v in velocity.items()},
               "posterior_variance": {str(k): v for k, v in posterior.items()},
               "class_signal": {kind: {str(s): v for s, v in d.items()} for kind, d in signal.items()},
               "guidance_spread": {str(k): v for k, v in spread.items()},
               "high_frequency_power": {kind: {str(k): v for k, v in d.items()} for kind, d in spectrum.items()},
               "per_class": PER_CLASS}
    write_results("mnist_anomalies", payload, md, args.out)
    print((args.out / "mnist_anomalies.md").read_text())


SPECTRUM_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _high_power(images: torch.Tensor) -> float:
    """Mean power per pixel of the orthonormal 2-D spectrum at |frequency| > 1/4 cycle per pixel."""
    spectrum = torch.fft.fft2(images.double(), norm="ortho").abs().square()
    f = torch.fft.fftfreq(images.shape[-1]).abs()
    high = (f[:, None] > 0.25) | (f[None, :] > 0.25)
    return float(spectrum[..., high].sum(-1).mean() / images[0].numel())


@torch.no_grad()
def high_frequency_power(trained, x0, labels, device) -> dict:
    """High-frequency power of the one-step x0 prediction by sigma, and of the data ("data")."""
    out: dict = {"data": _high_power(x0)}
    for s in SPECTRUM_SIGMAS:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
        x_t = ((1 - s) * x0 + s * noise).to(device)
        mean_u = gm_mean(trained.model(x_t, torch.full((len(x0),), s, device=device), labels.to(device)))
        out[s] = _high_power((x_t - s * mean_u).cpu())
    return out


@torch.no_grad()
def posterior_variances(trained, x0, labels, device) -> dict[float, dict[str, float]]:
    """Pixel-averaged and smallest per-pixel variance of the x0-GM at held-out digits, by sigma."""
    out = {}
    for s in (0.3, 0.1, 0.05, 0.02, 0.01):
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        x_t = (1 - s) * x0 + s * noise
        sigma = torch.full((len(x0),), s)
        gm = u_to_x0(trained.model(x_t.to(device), sigma.to(device), labels.to(device)), x_t.to(device), s)
        var = gm_to_iso_gaussian(gm).var
        avg = var.mean(dim=(-3, -2, -1))
        out[s] = {"avg_var": float(avg.mean()), "min_pixel_var": float(var.amin()),
                  "share_below_1e-4": float((avg < 1e-4).double().mean())}
    return out


@torch.no_grad()
def class_signal(trained, x0, labels, device, classifier) -> dict[float, dict[str, float]]:
    """mean |u(x_t, label) - u(x_t, null)|^2 per element, and the accuracy (by ``classifier``) of the one-step
    x0 prediction."""
    from gmfm.metrics.images import classifier_outputs

    null = trained.model.null_label
    out = {}
    for s in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95):
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
        x_t = ((1 - s) * x0 + s * noise).to(device)
        sigma = torch.full((len(x0),), s, device=device)
        cond = gm_mean(trained.model(x_t, sigma, labels.to(device)))
        uncond = gm_mean(trained.model(x_t, sigma, torch.full_like(labels, null).to(device)))
        x0_hat = (x_t - s * cond).cpu()
        _, preds = classifier_outputs(classifier, x0_hat.clamp(-1, 1))
        out[s] = {"signal": float((cond - uncond).square().mean()),
                  "x0_accuracy": float((preds == labels).double().mean())}
    return out


@torch.no_grad()
def guidance_spread(trained, x0, labels, device, w: float = 0.3) -> dict[float, dict[str, float]]:
    """How unequal the per-pixel variances are (max / mean over pixels), and the share of pixels whose most
    likely component changes under probabilistic guidance."""
    guidance = make_guidance(w)
    null = trained.model.null_label
    out = {}
    for s in (0.9, 0.7, 0.5, 0.3, 0.1):
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
        x_t = ((1 - s) * x0 + s * noise).to(device)
        sigma = torch.full((len(x0),), s, device=device)
        cond = u_to_x0(trained.model(x_t, sigma, labels.to(device)), x_t, s)
        uncond = u_to_x0(trained.model(x_t, sigma, torch.full_like(labels, null).to(device)), x_t, s)
        var = gm_to_iso_gaussian(cond).var
        guided = guidance.guide_gm(cond, uncond).gm
        flipped = guided.logweights.argmax(dim=-4) != cond.logweights.argmax(dim=-4)
        averaged = pixel_averaged_gaussian(cond).var
        out[s] = {"max_over_mean": float((var.amax(dim=(-2, -1)) / averaged.squeeze(-1).squeeze(-1)).mean()),
                  "flipped": float(flipped.double().mean())}
    return out


if __name__ == "__main__":
    main()
