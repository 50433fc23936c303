"""Does GMFlow beat flow matching? The paper's two claims at equal cost, by its own protocol, on three testbeds.

    python -m benchmarks.claims train mnist gmflow --seed 0          # one run (resumable)
    python -m benchmarks.claims train mnist_latent gmflow_draws8     # a lever at equal cost (VARIANTS)
    python -m benchmarks.claims prepare-latents                      # the latent testbed's VAE and cache
    python -m benchmarks.claims curve mnist_latent gmflow --seed 0   # train in chunks, FD on val after each
    python -m benchmarks.claims evaluate mnist gmflow_s0             # solver sweep, guidance sweeps, test points
    python -m benchmarks.claims time mnist                           # seconds / iteration of the pair, interleaved
    python -m benchmarks.claims diagnose colored_mnist                # mean-velocity error per noise level
    python -m benchmarks.claims probe-reweighting colored_mnist      # what 2nd order and PG do to the GM
    python -m benchmarks.claims report                               # claims.{json,md,png}, grids

Testbeds (recipes ``configs/<testbed>_gmflow.toml`` and ``<testbed>_fm.toml``, which differ only in the GM
parts): ``mnist`` (pixel digits, 1 x 32 x 32), ``colored_mnist`` (3 x 32 x 32, class-dependent hues) and
``mnist_latent`` (the digits in the 4 x 8 x 8 latent space of a small VAE trained here).

Protocol (paper Sec. 4, Tables 2-4, at this scale):

- every point is a class-balanced set of N samples (1,000: 100 per class; 500 for the val points that only
  choose the solver) with per-sample seeds,
  measured in the features of a small CNN trained on the testbed's training images (FD, precision /
  recall with k = 3, class accuracy, HSV saturation), test points with a bootstrap spread (resampling
  both sets; the real set's resamples are the same for every point, and the replicates are kept, so that the
  difference of two points gets a paired spread; ``evaluate --stages replicates`` adds them to older points);
- choices are made on the validation split (50 digits per class) with sampling seed 1; what is reported
  comes from the test split (another 50 per class) with fresh samples (seed 2). No choice sees the test split;
- NFE 4, 6, 8, 16, 32; GMFlow solvers gmode2, gmsde2 (spectral sampling), gmsde2 without it and the
  first-order gmode (the colour testbed showed the 2nd-order correction can cost more than it gains), FM
  solvers euler, dpmpp2m, ddpm_small, unipc (four each: GMFlow never has more to choose from);
- guidance sweeps with the solver chosen at that NFE: probabilistic guidance (orthogonal 1 and 0) and CFG;
  the sweep's FD-vs-precision curves are drawn from the test split's metrics of the sweep's samples (no
  choice is made on them); the settings with the best FD and the best precision on val are re-sampled
  for the test split.

Every point is one JSON file under ``--work-dir``; each command skips what exists, so the study runs in
pieces and across sessions. The work dir (``benchmarks/runs/claims``) is committed, checkpoints included,
because a session's machine and its untracked files do not outlive the session; only what a command rebuilds
deterministically (the latent cache, run locks) is ignored. A run trained further (``curve``) is re-measured by
``evaluate``, which first moves the points of the earlier checkpoint to ``points_it<iteration>/``; ``report``
states the targets at that earlier budget too, and sets each lever against FM at the lever's own iterations.
``report`` states every target as met or not (with the numbers and spreads) and leaves out what has not run
yet, saying so; a testbed with no evaluated runs in the work dir keeps its section of the previous report,
marked as carried over with its date.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from gmfm.data import make_dataset
from gmfm.experiments import SamplingPlan, load_recipe, load_run, sample_trained, train_recipe
from gmfm.experiments.latents import decode_latents, load_vae
from gmfm.experiments.results import markdown_table, write_json
from gmfm.guidance import ClassifierFreeGuidance, ProbabilisticGuidance
from gmfm.math import GaussianMixture, gm_mean, gm_temperature, gm_weights
from gmfm.metrics.figures import pyplot, save_figure, save_image_grid
from gmfm.metrics.images import (
    SmallCNNClassifier,
    classifier_outputs,
    frechet_distance,
    hsv_saturation,
    precision_recall,
    train_classifier,
)
from gmfm.training import CHECKPOINT_NAME, read_checkpoint_metadata

from .common import RESULTS_DIR, mean_velocity_error, stop_if_interrupted, write_results

WORK = Path("benchmarks/runs/claims")  # committed: runs span sessions (benchmarks/runs/README.md)
NFES = (4, 6, 8, 16, 32)
GM_SOLVERS = ("gmode2", "gmsde2", "gmsde2_nospectral", "gmode")
FM_SOLVERS = ("euler", "dpmpp2m", "ddpm_small", "unipc")
PG_SCALES = (0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.45)
CFG_SCALES = (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0)
GUIDANCE_NFES = (6, 8, 32)
VAL_SEED, TEST_SEED = 1, 2


@dataclass(frozen=True)
class Testbed:
    name: str
    gmflow: str  # recipe names
    fm: str
    data: tuple[str, dict[str, Any]]  # the pixel dataset of the references and the feature classifier
    latent: bool = False


TESTBEDS = {
    "mnist": Testbed("mnist", "mnist_gmflow", "mnist_fm", ("mnist", {"val_per_class": 50})),
    "colored_mnist": Testbed("colored_mnist", "colored_mnist_gmflow", "colored_mnist_fm", ("colored_mnist", {})),
    "mnist_latent": Testbed("mnist_latent", "mnist_latent_gmflow", "mnist_latent_fm",
                            ("mnist", {"val_per_class": 50}), latent=True),
}
#: Equal-cost variants: recipe overrides of a method (the trunk is never changed; K only sizes the output head).
#: The ones beyond ``gmflow`` and ``fm`` are the levers of a missed target: ``report`` sets each against FM.
VARIANTS = {"gmflow": ("gmflow", {}), "fm": ("fm", {}),
            "gmflow_draws8": ("gmflow", {"loss": {"transition_draws": 8}}),
            "gmflow_k16": ("gmflow", {"model": {"num_components": 16}}),
            "gmflow_k2": ("gmflow", {"model": {"num_components": 2}}),
            "gmflow_ratio1": ("gmflow", {"loss": {"transition_ratio": 1.0}}),  # plain x0 NLL
            "gmflow_nospectral": ("gmflow", {"loss": {"spectral_weight": 0.0}}),
            "gmflow_uniform_t": ("gmflow", {"loss": {"time_sampler": "uniform"}})}


# ----- runs --------------------------------------------------------------------------------------------------
def recipe_of(testbed: Testbed, variant: str, seed: int, work: Path, iterations: int | None = None,
              device: str = "cpu"):
    method, overrides = VARIANTS[variant]
    recipe = load_recipe(getattr(testbed, method), **overrides)
    tables: dict[str, Any] = {"train": {"seed": seed, "device": device, "iterations": iterations}}
    if testbed.latent:
        tables["data"] = {"path": str(work / testbed.name / "cache")}
    return recipe.with_overrides(**tables)


def run_dir(work: Path, testbed: Testbed, run: str) -> Path:
    return work / testbed.name / run


def train(args) -> None:
    testbed = TESTBEDS[args.testbed]
    torch.set_num_threads(args.threads)
    recipe = recipe_of(testbed, args.variant, args.seed, args.work_dir, args.iterations, args.device)
    result = train_recipe(recipe, run_dir(args.work_dir, testbed, f"{args.variant}_s{args.seed}"))
    print(f"{args.testbed} {args.variant} seed {args.seed}: iteration {result.step}")


def prepare_latents(args) -> None:
    """The latent testbed's VAE (gmfm train-vae: width 16) and the cache of the training digits (no flips:
    digits are not mirror-symmetric)."""
    from gmfm.experiments.latents import cache_latents
    from gmfm.experiments.vae import train_vae, vae_train_config

    torch.set_num_threads(args.threads)
    folder = args.work_dir / "mnist_latent"
    vae = folder / "vae" / "vae"
    options = {"val_per_class": 50}
    mnist = make_dataset("mnist", **options)
    if not (vae / "config.json").exists():
        train_vae(mnist, folder / "vae", vae_train_config(args.vae_iterations, 64, 1e-3, 0, args.device), width=16)
    if not (folder / "cache" / "latents.json").exists():
        cache_latents(mnist, vae, folder / "cache", flip="none", dtype="float32", device=args.device,
                      dataset_options=options)
    print(f"VAE {vae}; cache {folder / 'cache'}")


# ----- measuring -------------------------------------------------------------------------------------------
class Measure:
    """Samples of a run -> metrics against the val and test splits of its testbed, with a bootstrap spread."""

    # 200 replicates: the halves of a point's 50 gave sds 2-40% apart (median 14%; points measured before
    # 2026-12-07 have 50).
    def __init__(self, testbed: Testbed, work: Path, bootstrap: int = 200, device: str = "cpu") -> None:
        self.testbed, self.bootstrap, self.device = testbed, bootstrap, device
        self.batch_size = 250 if device == "cpu" else 1000  # samples per batch: larger on a GPU, where it is cheap
        name, options = testbed.data
        data = make_dataset(name, **options)
        train_set = data.split("train")
        path = work / testbed.name / "classifier.pt"
        channels, size = data.event_shape[0], data.event_shape[-1]
        if path.is_file():
            self.classifier = SmallCNNClassifier(10, channels, size)
            self.classifier.load_state_dict(torch.load(path, weights_only=True))
            self.classifier.eval()
        else:
            self.classifier = train_classifier(train_set.images.float(), train_set.labels, seed=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            torch.save(self.classifier.state_dict(), tmp)
            os.replace(tmp, path)  # several evaluations may train it at once (same seed, same result)
        self.real = {}
        for split in ("val", "test"):
            images = data.split(split).images.float()
            features, predictions = classifier_outputs(self.classifier, images)
            self.real[split] = {"features": features, "accuracy": float((predictions == data.split(split).labels)
                                                                          .double().mean()),
                                "saturation": hsv_saturation((images + 1) / 2) if channels == 3 else None}
        self.vae = None
        if testbed.latent:
            vae = work / testbed.name / "vae" / "vae"
            self.vae = (vae, float(load_vae(vae).config.scaling_factor))

    def images(self, trained, plan: SamplingPlan, num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(num) % 10
        # Per-sample seeds: the set does not depend on the batch size.
        x = sample_trained(trained, plan=plan, labels=labels, seed=seed, per_sample_seeds=True,
                           batch_size=self.batch_size, device=self.device, progress=True)
        if self.vae is not None:
            x = decode_latents(x, self.vae[0], self.vae[1])
        return x.clamp(-1, 1), labels

    def metrics(self, images: torch.Tensor, labels: torch.Tensor | None, splits=("val", "test"),
                spread: bool = True) -> dict[str, Any]:
        """FD / precision / recall (+ bootstrap spread, if ``spread``) per split, saturation for colour, and the
        class accuracy of the requested ``labels`` (none for unconditional samples: ``labels=None``)."""
        features, predictions = classifier_outputs(self.classifier, images)
        out = {} if labels is None else {"accuracy": float((predictions == labels).double().mean())}
        if images.shape[1] == 3:
            out["saturation"] = hsv_saturation((images + 1) / 2)
            out["saturation_sd"] = saturation_sd(images, len(images))
            out["saturation_real"] = self.real["test"]["saturation"]
        for split in splits:
            real = self.real[split]["features"]
            precision, recall = precision_recall(real, features)
            out[split] = {"fd": frechet_distance(real, features), "precision": precision, "recall": recall,
                          **(bootstrap_spread(real, features, self.bootstrap) if spread else
                             {"fd_sd": None, "precision_sd": None})}
        return out


def bootstrap_spread(real: torch.Tensor, features: torch.Tensor, replicates: int) -> dict[str, Any]:
    """Bootstrap spread of FD and precision between ``real`` (M, D) and generated ``features`` (N, D): both
    sets resampled ``replicates`` times. The real set's resamples come from a generator of their own with a
    fixed seed, so replicate i resamples the real set in the same way for every point measured against it;
    the replicates are kept (``fd_boot``, ``precision_boot``) so that the difference of two points gets a paired
    spread (:func:`difference_sd`), in which the noise of the shared real set cancels."""
    real_g, fake_g = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    boot: dict[str, list[float]] = {"fd": [], "precision": []}
    for _ in range(replicates):
        a = real[torch.randint(0, len(real), (len(real),), generator=real_g)]
        b = features[torch.randint(0, len(features), (len(features),), generator=fake_g)]
        boot["fd"].append(frechet_distance(a, b))
        boot["precision"].append(precision_recall(a, b)[0])
    return {"fd_sd": statistics.stdev(boot["fd"]), "precision_sd": statistics.stdev(boot["precision"]),
            "fd_boot": boot["fd"], "precision_boot": boot["precision"]}


def difference_sd(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str = "fd") -> tuple[float | None, bool]:
    """(spread of ``a`` - ``b`` in ``metric`` on the test split, paired): the standard deviation of the
    replicate-wise difference where both points kept their bootstrap replicates (:func:`bootstrap_spread`; over
    the replicates both have, whose resamples are the same whatever the count), else the two spreads combined as
    if independent (paired False); None where either spread is missing."""
    x = a and a["test"].get(f"{metric}_boot")
    y = b and b["test"].get(f"{metric}_boot")
    if x and y and min(len(x), len(y)) >= 2:
        return statistics.stdev(u - v for u, v in zip(x, y)), True
    return combined_sd(a and a["test"][f"{metric}_sd"], b and b["test"][f"{metric}_sd"]), False


def saturation_sd(images: torch.Tensor, num: int) -> float:
    """Standard error of the mean HSV saturation of ``num`` samples, from the per-image saturations of
    ``images`` (N, 3, H, W) in [-1, 1]: all the samples, or a subset of them (the kept images of a point)."""
    per_image = [hsv_saturation((x[None].float() + 1) / 2) for x in images]
    return statistics.stdev(per_image) / math.sqrt(num)


def point_dirs(folder: Path, step: int) -> tuple[Path, Path]:
    """Where the points of ``folder`` measured at training step ``step`` live: ``points/`` (those of the
    current checkpoint) and ``points_it<step>/`` (the archive :func:`archive_points` keeps of an earlier one)."""
    return folder / "points", folder / f"points_it{step}"


def kept_images(folder: Path, p: dict[str, Any]) -> torch.Tensor | None:
    """The images a point kept (``<key>.npz`` beside its JSON), (N, C, H, W) in [-1, 1]; None if absent."""
    for d in point_dirs(folder, p["iteration"]):
        if (path := d / f"{p['key']}.npz").is_file():
            return torch.from_numpy(np.load(path)["images"]).float() / 127.5 - 1
    return None


def kept_saturation_sd(folder: Path, p: dict[str, Any]) -> float | None:
    """The saturation spread of a point: stored by newer points, else estimated from its kept images."""
    if "saturation_sd" in p:
        return p["saturation_sd"]
    kept = kept_images(folder, p)
    return None if kept is None else saturation_sd(kept, p["num_samples"])


def plan_for(trained, solver: str, nfe: int, guidance=None) -> SamplingPlan:
    spectral = not solver.endswith("_nospectral")
    return SamplingPlan.resolve(trained, solver.replace("_nospectral", ""), nfe, guidance=guidance,
                                spectral=spectral)


def checkpoint_step(folder: Path) -> int | None:
    """The training step of ``folder``'s checkpoint, read from its metadata (None: no checkpoint)."""
    path = folder / CHECKPOINT_NAME
    return read_checkpoint_metadata(path)["step"] if path.is_file() else None


class TemperedGM(torch.nn.Module):
    """A GMFlow denoiser whose u-GM is taken at a temperature T (:func:`gmfm.math.gm_temperature`: weights^(1/T),
    variances x T). A diagnostic lever at equal cost: if GM sampling suffers because the GM is wider than the
    data's denoising distribution (an undertrained net spreads its own error into the variance), T < 1 helps."""

    def __init__(self, model: torch.nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, temperature
        self.spectrum_net = getattr(model, "spectrum_net", None)
        if hasattr(model, "null_label"):
            self.null_label = model.null_label

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, condition: Any = None) -> GaussianMixture:
        return gm_temperature(self.model(x_t, sigma, condition), self.temperature)


def point(measure: Measure, trained, folder: Path, key: str, solver: str, nfe: int, guidance, num: int, seed: int,
          keep: int = 10, temperature: float | None = None) -> dict[str, Any]:
    """One evaluation point, cached in ``folder/points/<key>.json`` (and its first ``keep`` samples per class).

    A cached point counts only if it was measured on the run's current checkpoint (its ``iteration``)."""
    path = folder / "points" / f"{key}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("iteration") == trained.checkpoint.step:
            return cached
    plan = plan_for(trained, solver, nfe, guidance)
    sampled = trained if temperature is None else replace(trained, model=TemperedGM(trained.model, temperature))
    tic = time.perf_counter()
    images, labels = measure.images(sampled, plan, num, seed)
    seconds = time.perf_counter() - tic
    result = {"key": key, "iteration": trained.checkpoint.step, "solver": solver, "nfe": nfe,
              "guidance": guidance_dict(guidance), "temperature": temperature, "num_samples": num,
              "seed": seed, "plan": plan.describe(), "sample_seconds": seconds,
              # The spread is for what is reported (test points) and the diagnostics; a val point only
              # chooses, and its bootstrap would cost more CPU time than sampling it on a GPU.
              **measure.metrics(images, labels, ("test",) if seed == TEST_SEED else ("val", "test"),
                                spread=seed == TEST_SEED or key.startswith("diag"))}
    order = torch.argsort(labels, stable=True).reshape(10, -1)[:, :keep].reshape(-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path.with_suffix(".npz"),
                        images=((images[order] + 1) * 127.5).round().to(torch.uint8).numpy())
    write_json(path, result)
    shown = result.get("val", result["test"])  # the scalar metrics; the bootstrap replicates stay in the file
    print(key, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in shown.items() if not isinstance(v, list)},
          f"{seconds:.0f} s", flush=True)
    return result


def remeasure(measure: Measure, trained, folder: Path, p: dict[str, Any]) -> dict[str, Any]:
    """Sample the test point ``p`` again (per-sample seeds: the same images) and store its metrics with the
    bootstrap replicates (:func:`bootstrap_spread`) and the metrics it had (``before_remeasure``). Its FD must
    come out as stored up to float noise (1%, where fresh samples would move it by about its spread, 20-30%;
    the thread count changes the rounding, which a stochastic sampler carries along); if not, the point is left
    as it was and the error names it."""
    path = folder / "points" / f"{p['key']}.json"
    if p["iteration"] != trained.checkpoint.step or p.get("temperature") is not None:
        raise ValueError(f"{path}: only a test point of the current checkpoint can be re-measured")
    plan = plan_for(trained, p["solver"], p["nfe"], guidance_from_dict(p["guidance"]))
    images, labels = measure.images(trained, plan, p["num_samples"], p["seed"])
    again = measure.metrics(images, labels, ("test",), spread=True)
    if not math.isclose(again["test"]["fd"], p["test"]["fd"], rel_tol=1e-2, abs_tol=1e-2):
        raise RuntimeError(f"{path}: re-sampled FD {again['test']['fd']:.4f} differs from the stored "
                           f"{p['test']['fd']:.4f}: not the same samples (another checkpoint or sampler?)")
    result = {**p, **again, "before_remeasure": {k: p["test"][k] for k in ("fd", "fd_sd", "precision", "precision_sd")}}
    write_json(path, result)
    print(p["key"], "re-measured: FD", f"{p['test']['fd']:.4f} -> {again['test']['fd']:.4f}", "sd",
          f"{p['test']['fd_sd']:.3f} -> {again['test']['fd_sd']:.3f}", flush=True)
    return result


def guidance_dict(guidance) -> dict[str, float] | None:
    if isinstance(guidance, ProbabilisticGuidance):
        shaped = {"per_pixel_variance": True} if guidance.per_pixel_variance else {}  # old keys stay as they were
        return {"pg": guidance.scale, "orthogonal": guidance.orthogonal, **shaped}
    if isinstance(guidance, ClassifierFreeGuidance):
        return {"cfg": guidance.scale}
    return None


def point_key(split: str, solver: str, nfe: int, guidance=None) -> str:
    """``<split>_<solver>_<nfe>[_<guidance>]``: an unguided point has the same key in every sweep."""
    d = guidance_dict(guidance)
    if d is None:
        return f"{split}_{solver}_{nfe}"
    if "pg" in d:
        suffix = "_pix" if d.get("per_pixel_variance") else ""
        return f"{split}_{solver}_{nfe}_pg{d['pg']:g}_orth{d['orthogonal']:g}{suffix}"
    return f"{split}_{solver}_{nfe}_cfg{d['cfg']:g}"


def sweep_guidances(method: str, pg_scales, cfg_scales, orthogonal) -> list:
    if method == "gmflow":
        out = [ProbabilisticGuidance(w, 1.0) if w else None for w in pg_scales]
        out += [ProbabilisticGuidance(w, 0.0) for w in pg_scales if w and 0.0 in orthogonal]
        return out
    return [ClassifierFreeGuidance(s) if s != 1.0 else None for s in cfg_scales]


def evaluate(args) -> None:
    testbed = TESTBEDS[args.testbed]
    torch.set_num_threads(args.threads)
    folder = run_dir(args.work_dir, testbed, args.run)
    trained = load_run(folder, device=args.device)
    method = "fm" if trained.kind == "fm" else "gmflow"
    solvers = GM_SOLVERS if method == "gmflow" else FM_SOLVERS
    measure = Measure(testbed, args.work_dir, device=args.device)
    archive_points(folder)
    nfes = args.nfes or NFES
    guided_nfes = GUIDANCE_NFES if args.guidance_nfes is None else args.guidance_nfes
    if "solvers" in args.stages:
        for nfe in nfes:
            for solver in solvers:
                point(measure, trained, folder, point_key("val", solver, nfe), solver, nfe, None,
                      args.solver_samples, VAL_SEED)
    best = {nfe: best_solver(folder, solvers, nfe) for nfe in nfes}
    if "test" in args.stages:
        for nfe in nfes:
            if best[nfe]:
                point(measure, trained, folder, point_key("test", best[nfe], nfe), best[nfe], nfe, None,
                      args.num_samples, TEST_SEED)
    if "guidance" in args.stages:
        for nfe in guided_nfes:
            if not best.get(nfe):
                continue
            for g in sweep_guidances(method, args.pg_scales, args.cfg_scales, args.orthogonal):
                point(measure, trained, folder, point_key("val", best[nfe], nfe, g), best[nfe], nfe, g,
                      args.num_samples, VAL_SEED)
            for criterion in ("fd", "precision"):
                chosen = best_guided(folder, best[nfe], nfe, criterion)
                if chosen is not None:
                    g = guidance_from_dict(chosen["guidance"])
                    point(measure, trained, folder, point_key("test", best[nfe], nfe, g), best[nfe], nfe, g,
                          args.num_samples, TEST_SEED)
    if "replicates" in args.stages:
        # Test points measured before the bootstrap kept its replicates, those a target reads (unguided at
        # ``nfes``, the best-precision guided point at ``guidance_nfes``): the same samples again, so that their
        # differences get a paired spread.
        for nfe in nfes:
            if best.get(nfe) and (p := test_point(folder, nfe)) and "fd_boot" not in p["test"]:
                remeasure(measure, trained, folder, p)
        for nfe in guided_nfes:
            if best.get(nfe) and (p := best_precision_point(folder, nfe)) and "fd_boot" not in p["test"]:
                remeasure(measure, trained, folder, p)
    if "diagnostics" in args.stages and method == "gmflow":
        # Val only, never eligible for a target: the network through the mean ODE (as FM is sampled), and the
        # chosen GM solver with a colder GM.
        for nfe in args.diag_nfes:
            point(measure, trained, folder, f"diag_meanode_euler_{nfe}", "euler", nfe, None, args.solver_samples,
                  VAL_SEED)
            solver = best.get(nfe) or best_solver(folder, solvers, nfe)
            for t in args.temperatures if solver else ():
                point(measure, trained, folder, f"diag_{solver}_{nfe}_T{t:g}", solver, nfe, None,
                      args.solver_samples, VAL_SEED, temperature=t)
            # Other GM solvers (e.g. the first-order ones): which part of a solver costs quality.
            for other in args.diag_solvers:
                point(measure, trained, folder, f"diag_{other}_{nfe}", other, nfe, None, args.solver_samples,
                      VAL_SEED)
            # PG on the first calls only (``probe-reweighting`` shows its push growing as sigma falls): as many
            # samples as a sweep point, so the two compare.
            for w, first in args.diag_pg_first if solver else ():
                with pg_on_first_calls(first, nfe):
                    point(measure, trained, folder, f"diag_{solver}_{nfe}_pg{w:g}_first{first}", solver, nfe,
                          ProbabilisticGuidance(w, 1.0), args.num_samples, VAL_SEED)
            # PG with each pixel's own variance shaping its bias (a gmfm option; ``probe-reweighting`` shows
            # the paper's PG pushing multimodal pixels far beyond its design).
            for w in args.diag_pg_per_pixel if solver else ():
                g = ProbabilisticGuidance(w, 1.0, per_pixel_variance=True)
                point(measure, trained, folder, point_key("diag", solver, nfe, g), solver, nfe, g, args.num_samples,
                      VAL_SEED)


def pg_on_first_calls(first: int, nfe: int):
    """A context in which probabilistic guidance applies at the first ``first`` of each ``nfe`` network calls
    only (a diagnostic: the later calls keep the conditional GM; the cost is unchanged). Relies on a solver
    making exactly ``nfe`` guided calls per batch, as the first-order and GM-SDE solvers do."""
    from gmfm.guidance import GuidedGM

    original = ProbabilisticGuidance.guide_gm
    calls = itertools.count()

    def guide_gm(self, cond, uncond):
        return original(self, cond, uncond) if next(calls) % nfe < first else GuidedGM.unguided(cond)

    return mock.patch.object(ProbabilisticGuidance, "guide_gm", guide_gm)


def pg_first_spec(text: str) -> tuple[float, int]:
    """``W:N`` of ``--diag-pg-first`` -> (W, N)."""
    try:
        w, first = text.split(":")
        return float(w), int(first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W:N (a PG scale and a number of calls), got {text!r}") from None


def archive_points(folder: Path) -> None:
    """Move the points of ``folder`` measured on an earlier checkpoint to ``points_it<iteration>/``, so that
    a run trained further is re-measured without losing what its earlier budget showed (the levers trained
    to that budget are compared with it)."""
    step = checkpoint_step(folder)
    for path in sorted((folder / "points").glob("*.json")):
        iteration = json.loads(path.read_text()).get("iteration")
        if iteration is None or iteration == step:
            continue
        archive = point_dirs(folder, iteration)[1]
        archive.mkdir(exist_ok=True)
        for f in (path.with_suffix(".npz"), path):  # the JSON last: it is what marks a point as measured
            if f.is_file():
                f.replace(archive / f.name)


def load_points(folder: Path, prefix: str, step: int | None = None) -> list[dict[str, Any]]:
    """The points of ``folder`` whose key starts with ``prefix``, measured at training step ``step`` (default:
    the current checkpoint; an earlier step reads the points archived by :func:`archive_points`)."""
    step = checkpoint_step(folder) if step is None else step
    files = [f for d in point_dirs(folder, step) for f in d.glob(f"{prefix}*.json")]
    points = (json.loads(p.read_text()) for p in sorted(files, key=lambda f: f.name))
    return [p for p in points if p.get("iteration") == step]


def best_solver(folder: Path, solvers, nfe: int, step: int | None = None) -> str | None:
    found = [(p["val"]["fd"], p["solver"]) for p in load_points(folder, "val_", step)
             if p["nfe"] == nfe and p["guidance"] is None and p["solver"] in solvers]
    return min(found)[1] if found else None


def best_guided(folder: Path, solver: str, nfe: int, criterion: str,
                step: int | None = None) -> dict[str, Any] | None:
    """The val point of ``solver`` at ``nfe`` (unguided or guided) with the lowest FD (``criterion="fd"``) or the
    highest precision; a tie goes to the first point in key order (so PG's orthogonal 0 before 1: precision is a
    count over the samples, and equal values happen)."""
    found = [p for p in load_points(folder, f"val_{solver}_{nfe}", step) if p["nfe"] == nfe]
    if not found:
        return None
    key = (lambda p: p["val"]["fd"]) if criterion == "fd" else (lambda p: -p["val"]["precision"])
    return min(found, key=key)


def guidance_from_dict(d: dict[str, float] | None):
    if d is None:
        return None
    if "pg" in d:
        return ProbabilisticGuidance(d["pg"], d["orthogonal"], d.get("per_pixel_variance", False))
    return ClassifierFreeGuidance(d["cfg"])


# ----- training curve (latent testbed) -------------------------------------------------------------------
def curve(args) -> None:
    """Train in chunks of ``--every`` iterations and measure FD on val (recipe's default solver, NFE 8)
    after each, until it has not improved for ``--patience`` chunks or ``--max-iterations``."""
    testbed = TESTBEDS[args.testbed]
    torch.set_num_threads(args.threads)
    run = f"{args.variant}_s{args.seed}"
    folder = run_dir(args.work_dir, testbed, run)
    path = folder / "curve.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    measure = None
    best, since = math.inf, 0
    for entry in history:
        best, since = (entry["fd"], 0) if entry["fd"] < best else (best, since + 1)
    step = history[-1]["iteration"] if history else 0
    while since < args.patience and step < args.max_iterations:
        step += args.every
        # A chunk stopped part way must not be measured and recorded as reaching ``step``.
        stop_if_interrupted(train_recipe(recipe_of(testbed, args.variant, args.seed, args.work_dir, step,
                                                   args.device), folder))
        measure = measure or Measure(testbed, args.work_dir, device=args.device)
        trained = load_run(folder, device=args.device)
        images, labels = measure.images(trained, SamplingPlan.resolve(trained, nfe=8), args.num_samples, VAL_SEED)
        fd = measure.metrics(images, labels, ("val",))["val"]["fd"]
        history.append({"iteration": step, "fd": fd})
        write_json(path, history)
        best, since = (fd, 0) if fd < best else (best, since + 1)
        print(f"{run} iteration {step}: FD {fd:.2f} (best {best:.2f})", flush=True)


def reference_floors(testbed: Testbed, work: Path, num: int = 500) -> dict[str, Any]:
    """The scale of a training curve: val FD (the curve's protocol, ``num`` class-balanced images) of real
    training images and, on a latent testbed, of the same images' cached latents decoded by the VAE: what a
    perfect model would score at this sample size. Cached in ``<testbed>/floors.json``."""
    path = work / testbed.name / "floors.json"
    if path.is_file() and (cached := json.loads(path.read_text())).get("num") == num:
        return cached
    measure = Measure(testbed, work)
    name, options = testbed.data
    train_set = make_dataset(name, **options).split("train")
    per_class = num // 10
    index = torch.cat([torch.nonzero(train_set.labels == c).flatten()[:per_class] for c in range(10)])
    labels = train_set.labels[index]
    out = {"num": len(index), "real_train_images": measure.metrics(train_set.images[index].float(), labels,
                                                                   ("val",), spread=False)["val"]["fd"]}
    if measure.vae is not None:
        cache = work / testbed.name / "cache"
        cached_labels = torch.from_numpy(np.load(cache / "labels.npy"))
        if not torch.equal(cached_labels.long(), train_set.labels.long()):
            raise ValueError(f"the latent cache {cache} does not hold the training split in order; rebuild it "
                             "with `claims prepare-latents`")
        latents = torch.from_numpy(np.load(cache / "latents.npy")).float()[index]
        decoded = decode_latents(latents, measure.vae[0], measure.vae[1]).clamp(-1, 1)
        out["vae_reconstructions"] = measure.metrics(decoded, labels, ("val",), spread=False)["val"]["fd"]
    write_json(path, out)
    return out


def plot_curves(curves: dict[str, list[dict]], floors: dict[str, Any], title: str, path: Path) -> Path:
    """Val FD vs training iteration of each run's curve, with the floors of :func:`reference_floors`."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for run, history in curves.items():
        ax.plot([e["iteration"] for e in history], [e["fd"] for e in history], "-o", markersize=3, label=run)
    for key, label, style in (("vae_reconstructions", "VAE reconstructions", ":"),
                              ("real_train_images", "real training images", "--")):
        if key in floors:
            ax.axhline(floors[key], color="gray", linestyle=style,
                       label=f"{label} ({floors['num']}): {floors[key]:.1f}")
    ax.set(xlabel="training iteration", ylabel="val FD (log scale)", yscale="log",
           title=f"{title}: FD during training (8 NFE)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


# ----- timing ----------------------------------------------------------------------------------------------
def time_pair(args) -> None:
    """Seconds per training iteration of the testbed's two recipes, in alternating blocks on one process."""
    from gmfm.experiments import build_loss, build_model, load_dataset
    from gmfm.math.random import BatchDraws
    from gmfm.training import make_optimizer, step_generator

    testbed = TESTBEDS[args.testbed]
    torch.set_num_threads(args.threads)
    setups = {}
    for method in ("gmflow", "fm"):
        recipe = recipe_of(testbed, method, 0, args.work_dir)
        data = load_dataset(recipe)
        model = build_model(recipe, data.event_shape, data.num_classes)
        loss, opt = build_loss(recipe, data.num_classes), make_optimizer(model, recipe.train)
        setups[method] = (recipe, data, model, loss, opt)
    times: dict[str, list[float]] = {m: [] for m in setups}
    for block in range(args.blocks + 1):
        for method, (recipe, data, model, loss, opt) in setups.items():
            tic = time.perf_counter()
            for i in range(args.iterations):
                b = recipe.train.batch_size
                batch = data.train.batch(b, step_generator(0, i, 0), slice(0, b))
                out = loss(model, batch, BatchDraws(step_generator(0, i, 1), b))
                opt.zero_grad()
                out.loss.backward()
                opt.step()
            if block:  # the first block warms up
                times[method].append((time.perf_counter() - tic) / args.iterations)
    result = {m: {"seconds_per_iteration": statistics.median(t), "blocks": t,
                  "params": sum(p.numel() for p in setups[m][2].parameters())} for m, t in times.items()}
    write_json(args.work_dir / testbed.name / "timing.json", {"threads": args.threads, **result})
    print(json.dumps(result, indent=1))


# ----- report ----------------------------------------------------------------------------------------------
DIAGNOSE_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.97)


@torch.no_grad()
def diagnose(args) -> None:
    """Mean-velocity error of the pair on val images per noise level: whether a gap between GMFlow and FM lies
    in the network (its mean velocity) or in the sampler. Latent testbed: the val digits encoded by its VAE (a
    posterior draw, scaled, as the training cache holds them). Writes velocity_error.json."""
    testbed = TESTBEDS[args.testbed]
    torch.set_num_threads(args.threads)
    name, options = testbed.data
    val = make_dataset(name, **options).split("val")
    x0, labels = val.images.float()[: args.num], val.labels[: args.num]
    if testbed.latent:
        vae = load_vae(args.work_dir / testbed.name / "vae" / "vae")
        posterior = vae.encode(x0).latent_dist
        draw = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(1))
        x0 = (posterior.mean + posterior.std * draw) * float(vae.config.scaling_factor)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    runs = {m: load_run(run_dir(args.work_dir, testbed, f"{m}_s0")) for m in ("gmflow", "fm")}
    models = {m: run.model.eval() for m, run in runs.items()}
    rows = []
    for s in DIAGNOSE_SIGMAS:
        row = {"sigma": s, **{m: mean_velocity_error(model, x0, labels, noise, s) for m, model in models.items()}}
        row["gmflow_over_fm"] = row["gmflow"] / row["fm"]
        # The GM's own spread (per-element variance of the mixture, averaged) against its mean's actual error:
        # NLL training makes the two match in aggregate, so GM draws carry the network's error as noise.
        row["gmflow_gm_variance"] = gm_variance(models["gmflow"](
            (1 - s) * x0 + s * noise, torch.full((len(x0),), s), labels)).mean().item()
        row["gm_variance_over_error"] = row["gmflow_gm_variance"] / row["gmflow"]
        rows.append(row)
        print(row, flush=True)
    write_json(args.work_dir / testbed.name / "velocity_error.json",
               {"num": len(x0), "iterations": {m: run.checkpoint.step for m, run in runs.items()}, "rows": rows})


def probe_reweighting(args) -> None:
    """What the GM reweightings do to each step's GM (GMFlow ``gmflow_s0`` of a testbed, ``--num`` val-seed
    samples): the 2nd-order correction of gmode2 (unguided) and probabilistic guidance (first-order gmode, PG
    scales ``--pg-scales``). Each is one reweighting of the per-pixel GM towards a Gaussian with a shifted mean;
    per call the probe records the share of the GM's variance the shift takes (1 - target variance / surrogate
    variance) and the mean per-pixel entropy of the component weights before and after. A GM whose components
    are narrow and far apart can only move its mean by moving weight between modes, pixel by pixel.
    For PG it also records how hard it pushes compared with CFG: the RMS of the guided mean's shift over the
    RMS of the conditional - unconditional mean difference (CFG at scale s shifts by s - 1 times that
    difference at every call; PG's factor is set per call by its normalisation to the GM's spread), beside the
    push it is designed for; ``--per-pixel-scales`` adds PG with ``per_pixel_variance``. Writes reweighting.json."""
    from gmfm.guidance import probabilistic
    from gmfm.guidance.base import mean_over_event
    from gmfm.solvers import second_order

    testbed = TESTBEDS[args.testbed]
    torch.set_num_threads(args.threads)
    trained = load_run(run_dir(args.work_dir, testbed, "gmflow_s0"))
    calls: list[dict[str, float]] = []
    original = second_order.reweight_towards

    def entropy(gm: GaussianMixture) -> float:
        w = gm_weights(gm)
        return float(-(w * w.clamp(min=1e-12).log()).sum(-4).mean())

    def probed(base, surrogate, target):
        out = original(base, surrogate, target)
        calls.append({"bias_share": float((1 - target.var / surrogate.var).mean()),
                      "entropy_before": entropy(base), "entropy_after": entropy(out)})
        return out

    cases = [("gmode2", nfe, None) for nfe in args.nfes]
    cases += [("gmode", nfe, ProbabilisticGuidance(w, 1.0)) for nfe in args.nfes for w in args.pg_scales]
    cases += [("gmode", nfe, ProbabilisticGuidance(w, 1.0, per_pixel_variance=True))
              for nfe in args.nfes for w in args.per_pixel_scales]
    rows = {}
    pushes: list[dict[str, float]] = []
    original_guide = ProbabilisticGuidance.guide_gm

    def rms(t: torch.Tensor) -> torch.Tensor:  # per sample, over C, H, W: (..., 1, 1, 1)
        return mean_over_event(t.square()).sqrt()

    def probed_guide(self, cond, uncond):
        guided = original_guide(self, cond, uncond)
        difference = rms(gm_mean(cond) - gm_mean(uncond))
        shift = rms(gm_mean(guided.gm) - gm_mean(cond))
        designed = self.scale * guided.avg_var.sqrt()  # RMS of the bias the factor is built for
        pushes.append({"cfg_equivalent": float((shift / difference.clamp(min=1e-12)).mean()),
                       "designed_cfg_equivalent": float((designed / difference.clamp(min=1e-12)).mean()),
                       "difference_over_std": float((difference / guided.avg_var.sqrt()).mean())})
        return guided

    # Read-only probes, undone when the block ends.
    with mock.patch.object(second_order, "reweight_towards", probed), \
            mock.patch.object(probabilistic, "reweight_towards", probed), \
            mock.patch.object(ProbabilisticGuidance, "guide_gm", probed_guide):
        for solver, nfe, guidance in cases:
            calls.clear()
            pushes.clear()
            sample_trained(trained, plan=plan_for(trained, solver, nfe, guidance),
                           labels=torch.arange(args.num) % 10, seed=VAL_SEED, per_sample_seeds=True,
                           batch_size=args.num)
            key = f"{solver}_{nfe}" + (f"_pg{guidance.scale:g}" if guidance else "")
            key += "_pix" if guidance and guidance.per_pixel_variance else ""
            rows[key] = [{"call": i + 1, **r, **(pushes[i] if len(pushes) == len(calls) else {})}
                         for i, r in enumerate(calls)]
            for r in rows[key]:
                print(key, {k: round(v, 4) for k, v in r.items()}, flush=True)
    write_json(args.work_dir / testbed.name / "reweighting.json",
               {"num": args.num, "iteration": trained.checkpoint.step, "cases": rows})


def gm_variance(gm: GaussianMixture) -> torch.Tensor:
    """Per-element variance of a GM (..., K, C, H, W) -> (..., C, H, W): sum_k w_k (s_k^2 + (mu_k - mean)^2)."""
    weights = gm_weights(gm)
    spread = (weights * (gm.means - gm_mean(gm).unsqueeze(-4)).square()).sum(-4)
    return spread + (weights * torch.exp(2 * gm.logstds)).sum(-4)


def run_info(folder: Path) -> dict[str, Any] | None:
    if not (folder / "checkpoint.safetensors").exists():
        return None
    trained = load_run(folder)
    info = {"recipe": trained.recipe.as_dict(), "iterations": trained.checkpoint.step,
            "params": sum(p.numel() for p in trained.model.parameters())}
    timing = folder / "timing.csv"
    if timing.is_file():
        with open(timing) as f:
            rows = [float(r["seconds_per_iter"]) for r in csv.DictReader(f)]
        info["run_seconds_per_iteration_median"] = statistics.median(rows) if rows else None
    return info


def target(value: float | None, bound: float | None, better: str, spread: float | None = None,
           paired: bool = False) -> dict[str, Any]:
    """A target entry; ``spread`` is the standard deviation of value - bound (``spread_paired``: from paired
    bootstrap replicates, :func:`difference_sd`), and a difference beyond twice it is called significant."""
    if value is None or bound is None:
        return {"value": value, "bound": bound, "better": better, "met": None, "note": "not measured yet"}
    met = value <= bound if better == "lower" else value >= bound
    out = {"value": value, "bound": bound, "better": better, "met": bool(met)}
    if spread is not None:
        out["spread"] = spread
        out["spread_paired"] = paired
        out["significant"] = bool(abs(value - bound) > 2 * spread)
    return out


# The helpers below read a run's points at training step ``step`` (default: its current checkpoint).
def test_point(folder: Path, nfe: int, guidance=None, step: int | None = None) -> dict[str, Any] | None:
    """The test point of the solver chosen on val at ``nfe`` (test points of other solvers, measured before
    the solver set grew, are not reported)."""
    solver = best_solver(folder, GM_SOLVERS + FM_SOLVERS, nfe, step)
    for p in load_points(folder, "test_", step):
        if p["nfe"] == nfe and p["solver"] == solver and p["guidance"] == guidance_dict(guidance):
            return p
    return None


def guided_tests(folder: Path, nfe: int, step: int | None = None) -> list[dict[str, Any]]:
    solver = best_solver(folder, GM_SOLVERS + FM_SOLVERS, nfe, step)
    return [p for p in load_points(folder, "test_", step)
            if p["nfe"] == nfe and p["solver"] == solver and p["guidance"] is not None]


def reported_tests(folder: Path, nfe: int, step: int | None = None) -> list[dict[str, Any]]:
    """Every test point of the chosen solver at ``nfe``: the guided ones and the unguided one."""
    unguided = test_point(folder, nfe, step=step)
    return guided_tests(folder, nfe, step=step) + ([unguided] if unguided else [])


def sweep(folder: Path, nfe: int, step: int | None = None) -> list[dict[str, Any]]:
    solver = best_solver(folder, GM_SOLVERS + FM_SOLVERS, nfe, step)
    return [p for p in load_points(folder, f"val_{solver}_{nfe}", step) if p["nfe"] == nfe] if solver else []


def best_precision_point(folder: Path, nfe: int, step: int | None = None) -> dict[str, Any] | None:
    """The test point of the guidance setting with the best val precision at ``nfe`` (None: not run)."""
    solver = best_solver(folder, GM_SOLVERS + FM_SOLVERS, nfe, step)
    chosen = best_guided(folder, solver, nfe, "precision", step) if solver else None
    if chosen is None:
        return None
    for p in load_points(folder, f"test_{solver}_{nfe}", step):
        if p["guidance"] == chosen["guidance"] and p["nfe"] == nfe:
            return p
    return None


def combined_sd(a: float | None, b: float | None) -> float | None:
    return math.sqrt(a * a + b * b) if a is not None and b is not None else None


def fd_sd_coefficient(folder: Path, nfe: int, step: int | None = None) -> float | None:
    """c in FD sd ~ c * sqrt(FD): the median over the run's bootstrapped test points at ``nfe``. A sweep point
    has no bootstrap of its own (val points only choose); at a fixed sample count the FD's spread grows
    like its square root (its leading term is the mean difference seen through the sampling noise)."""
    ratios = [p["test"]["fd_sd"] / math.sqrt(p["test"]["fd"]) for p in reported_tests(folder, nfe, step=step)
              if p["test"].get("fd_sd") and p["test"]["fd"] > 0]
    return statistics.median(ratios) if ratios else None


def curve_dominance(pg: list[dict], cfg: list[dict], pg_sd: float | None = None,
                    cfg_sd: float | None = None) -> tuple[bool | None, list[dict]]:
    """Whether PG's FD <= CFG's at every precision both reach (test metrics of the sweeps, linear
    interpolation of each curve's lower FD envelope). ``pg_sd`` / ``cfg_sd``: each side's
    :func:`fd_sd_coefficient`; with both, each row gets an estimated spread of the difference and whether the
    difference exceeds twice it."""
    if len(pg) < 2 or len(cfg) < 2:
        return None, []

    def envelope(points):
        pts = sorted((p["test"]["precision"], p["test"]["fd"]) for p in points)
        xs = np.array([x for x, _ in pts])
        ys = np.minimum.accumulate(np.array([y for _, y in pts])[::-1])[::-1]  # best FD at >= this precision
        return xs, ys

    (xp, yp), (xc, yc) = envelope(pg), envelope(cfg)
    lo, hi = max(xp.min(), xc.min()), min(xp.max(), xc.max())
    if lo >= hi:
        return None, []
    rows = []
    for x in np.linspace(lo, hi, 9):
        row = {"precision": float(x), "pg_fd": float(np.interp(x, xp, yp)), "cfg_fd": float(np.interp(x, xc, yc))}
        if pg_sd is not None and cfg_sd is not None:
            row["spread"] = math.hypot(pg_sd * math.sqrt(row["pg_fd"]), cfg_sd * math.sqrt(row["cfg_fd"]))
            row["significant"] = bool(abs(row["pg_fd"] - row["cfg_fd"]) > 2 * row["spread"])
        rows.append(row)
    return all(r["pg_fd"] <= r["cfg_fd"] for r in rows), rows


def pair_results(name: str, gm_dir: Path, fm_dir: Path, step: int | None = None) -> tuple[dict, dict, dict]:
    """One seed's pair -> (test table rows, targets, Table-4 entries), each target from that pair alone;
    ``step``: both runs' points at that training step (default: each run's current checkpoint)."""
    targets: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    # The unguided test point of each side at each NFE: read once, for the table, T1 and T4.
    tested = {(m, nfe): test_point(folder, nfe, step=step)
              for m, folder in (("gmflow", gm_dir), ("fm", fm_dir)) for nfe in NFES}
    for nfe in NFES:
        gm, fm = tested["gmflow", nfe], tested["fm", nfe]
        for m, p in (("gmflow", gm), ("fm", fm)):
            if p is not None:
                rows[f"{m} NFE {nfe}"] = {"solver": p["solver"], "FD": p["test"]["fd"], "FD sd": p["test"]["fd_sd"],
                                          "precision": p["test"]["precision"], "recall": p["test"]["recall"],
                                          "accuracy": p["accuracy"]}
        if nfe in (4, 6, 8):
            targets[f"T1_nfe{nfe}"] = target(gm["test"]["fd"] if gm else None, fm["test"]["fd"] if fm else None,
                                             "lower", *difference_sd(gm, fm))
    swept = guidance_nfes(gm_dir, fm_dir, step=step)
    # The best-precision test point of each side at each guided NFE: read once, for T2, Table 4 and T3.
    best_at = {(m, nfe): best_precision_point(folder, nfe, step=step)
               for m, folder in (("gmflow", gm_dir), ("fm", fm_dir)) for nfe in {6, *swept}}
    gm6, fm6 = best_at["gmflow", 6], best_at["fm", 6]
    targets["T2_precision_nfe6"] = target(gm6 and gm6["test"]["precision"], fm6 and fm6["test"]["precision"],
                                          "higher", *difference_sd(gm6, fm6, "precision"))
    table4 = {}
    for nfe in swept:
        for m, folder in (("gmflow", gm_dir), ("fm", fm_dir)):
            tests = reported_tests(folder, nfe, step=step)
            if not tests:
                continue
            best_p = best_at[m, nfe]
            entry = {"best_fd": min(p["test"]["fd"] for p in tests),
                     "best_precision": best_p["test"]["precision"] if best_p else None,
                     "best_precision_sd": best_p["test"]["precision_sd"] if best_p else None,
                     "guidance_at_best_precision": best_p["guidance"] if best_p else None}
            if best_p and "saturation" in best_p:
                entry["saturation_minus_real_at_best_precision"] = best_p["saturation"] - best_p["saturation_real"]
                entry["saturation_sd_at_best_precision"] = kept_saturation_sd(folder, best_p)
            table4[f"{m} NFE {nfe}"] = entry
    if name == "colored_mnist":
        for nfe in swept or GUIDANCE_NFES:
            pg, cfg = table4.get(f"gmflow NFE {nfe}"), table4.get(f"fm NFE {nfe}")
            targets[f"T3_precision_nfe{nfe}"] = target(
                pg and pg["best_precision"], cfg and cfg["best_precision"], "higher",
                *difference_sd(best_at.get(("gmflow", nfe)), best_at.get(("fm", nfe)), "precision"))
            sat = lambda e: abs(e["saturation_minus_real_at_best_precision"]) if e and \
                "saturation_minus_real_at_best_precision" in e else None  # noqa: E731
            sat_sd = lambda e: e.get("saturation_sd_at_best_precision") if e else None  # noqa: E731
            # The real images' saturation is common to both sides, so its own spread is left out.
            targets[f"T3_saturation_nfe{nfe}"] = target(sat(pg), sat(cfg), "lower",
                                                        combined_sd(sat_sd(pg), sat_sd(cfg)))
            dominated, curve_rows = curve_dominance(
                sweep(gm_dir, nfe, step=step), sweep(fm_dir, nfe, step=step),
                fd_sd_coefficient(gm_dir, nfe, step), fd_sd_coefficient(fm_dir, nfe, step))
            targets[f"T3_fd_at_equal_precision_nfe{nfe}"] = {
                "value": curve_rows, "bound": "CFG's FD at each precision both curves reach", "better": "lower",
                "met": dominated}
    gm8, gm32 = tested["gmflow", 8], tested["gmflow", 32]
    targets["T4_nfe32_not_worse_than_nfe8"] = target(gm32 and gm32["test"]["fd"], gm8 and gm8["test"]["fd"], "lower",
                                                     *difference_sd(gm32, gm8))
    return rows, targets, table4


def pair_budget(gm_dir: Path, fm_dir: Path) -> int | None:
    """The training step both runs of a pair have reached (None: they differ, e.g. during a curve)."""
    gm, fm = checkpoint_step(gm_dir), checkpoint_step(fm_dir)
    return gm if gm == fm else None


def archived_steps(folder: Path) -> set[int]:
    """The training steps whose points :func:`archive_points` keeps in ``folder/points_it<step>/``."""
    return {int(d.name.removeprefix("points_it")) for d in folder.glob("points_it*") if d.is_dir()}


def earlier_budgets(gm_dir: Path, fm_dir: Path, budget: int | None) -> list[int]:
    """The earlier training steps at which both runs of a pair have archived points."""
    return sorted((archived_steps(gm_dir) & archived_steps(fm_dir)) - {budget})


def seeds_at(name: str, work: Path, testbed: Testbed, step: int | None) -> dict[int, tuple[dict, dict, dict]]:
    """{seed: pair_results} of the seeds whose pair has test points at training step ``step`` (None: each run's
    current checkpoint), so that seeds trained to different budgets never enter one target."""
    out = {}
    for seed in (0, 1):
        gm_s, fm_s = (run_dir(work, testbed, f"{m}_s{seed}") for m in ("gmflow", "fm"))
        if load_points(gm_s, "test_", step) or load_points(fm_s, "test_", step):
            out[seed] = pair_results(name, gm_s, fm_s, step=step)
    return out


def fmt(v: Any) -> str:
    """A table cell: floats to 4 decimals, None empty."""
    return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))


def targets_md(targets: dict[str, Any]) -> str:
    """Markdown table of combined targets (:func:`combine_seeds`) with each seed's own verdict."""
    md = ("| target | GMFlow / PG | FM / CFG | spread | met | significant | per seed (value vs bound: met) |\n"
          "|---|---:|---:|---:|---|---|---|\n")
    for tid, t in targets.items():
        per = "; ".join(f"s{k}: " + (f"{fmt(e['value'])} vs {fmt(e['bound'])}: " if "bound" in e else "")
                        + str(e["met"]) for k, e in t.get("seeds", {}).items())
        if isinstance(t["value"], (list, dict)):
            md += f"| {tid} | curve | CFG's curve | per row | {t['met']} | | {curve_summary(t['value'])} |\n"
        else:
            paired = " (paired)" if t.get("spread_paired") else ""
            md += (f"| {tid} | {fmt(t['value'])} | {fmt(t['bound'])} | {fmt(t.get('spread'))}{paired} | {t['met']} | "
                   f"{t.get('significant', '')} | {per} |\n")
    return md


def seeds_text(t: dict[str, Any]) -> str:
    """'1 seed' / 'N seeds': over how many training seeds a combined target (:func:`combine_seeds`) was taken."""
    n = len(t.get("seeds", {})) or 1
    return f"{n} seed" + ("s" if n > 1 else "")


def verdicts_md(testbeds: dict[str, dict[str, Any]]) -> str:
    """One table of every target's verdict, target by testbed: met or not, GMFlow's (PG's) figure against FM's
    (CFG's) with the spread of the difference, whether the gap is beyond twice that spread, and over how many
    training seeds; a curve target gives its per-seed verdicts only. Empty when no testbed has targets."""
    names = [n for n, t in testbeds.items() if t.get("targets")]
    if not names:
        return ""
    ids = sorted(dict.fromkeys(tid for n in names for tid in testbeds[n]["targets"]), key=lambda t: t.split("_")[0])
    md = ("| target | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n")
    for tid in ids:
        cells = []
        for n in names:
            t = testbeds[n]["targets"].get(tid)
            if t is None:
                cells.append("")
            elif t["met"] is None:
                cells.append("not measured")
            elif isinstance(t["value"], (list, dict)):
                cells.append(("**met**" if t["met"] else "not met") + f" (curve; {seeds_text(t)})")
            else:
                spread = f" +- {t['spread']:.3g}" if t.get("spread") is not None else ""
                sig = ", significant" if t.get("significant") else ""
                cells.append(("**met**" if t["met"] else "not met")
                             + f": {t['value']:.3g} vs {t['bound']:.3g}{spread}{sig} ({seeds_text(t)})")
        md += f"| {tid} | " + " | ".join(cells) + " |\n"
    return md


def curve_summary(value: dict[str, list[dict]] | list[dict]) -> str:
    """Per seed: at how many of the compared precisions PG's FD is above / below CFG's, and how many of those
    gaps exceed twice their estimated spread (:func:`curve_dominance`)."""
    per_seed = value if isinstance(value, dict) else {"0": value}
    parts = []
    for seed, rows in per_seed.items():
        above = [r for r in rows if r["pg_fd"] > r["cfg_fd"]]
        below = [r for r in rows if r["pg_fd"] <= r["cfg_fd"]]
        sig = lambda rs: sum(bool(r.get("significant")) for r in rs)  # noqa: E731
        parts.append(f"s{seed}: PG's FD above CFG's at {len(above)} of {len(rows)} precisions ({sig(above)} "
                     f"significant), at or below at {len(below)} ({sig(below)} significant)")
    return "; ".join(parts)


def pair_tables_md(rows: dict, table4: dict, suffix: str) -> str:
    """The test-split table and the Table-4 table of one seed's pair (empty ones left out)."""
    md = ""
    if rows:
        md += "\n" + markdown_table(rows, list(rows), ["solver", "FD", "FD sd", "precision", "recall", "accuracy"],
                                    "test split" + suffix) + "\n"
    if table4:
        md += markdown_table(table4, list(table4), sorted({k for e in table4.values() for k in e}),
                             "Table 4" + suffix) + "\n"
    return md


def combine_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Targets of the pair over its training seeds: value and bound are the means over the seeds that measured
    them, the spread combines the bootstrap spreads with the seed-to-seed scatter of the difference, and each
    seed's own verdict is kept (``seeds``; ``met_every_seed``). A curve target is met only if it is on every
    seed."""
    out: dict[str, Any] = {}
    for tid in dict.fromkeys(t for targets in per_seed.values() for t in targets):
        entries = {s: targets[tid] for s, targets in per_seed.items() if tid in targets}
        better = next(iter(entries.values()))["better"]
        if any(isinstance(e["value"], list) for e in entries.values()):
            verdicts = [e["met"] for e in entries.values()]
            out[tid] = {"value": {str(s): e["value"] for s, e in entries.items()},
                        "bound": next(iter(entries.values()))["bound"], "better": better,
                        "met": None if None in verdicts else all(verdicts),
                        "seeds": {str(s): {"met": e["met"]} for s, e in entries.items()}}
            continue
        done = {s: e for s, e in entries.items() if e["met"] is not None}
        if not done:
            out[tid] = {**next(iter(entries.values())), "seeds": {}}
            continue
        n = len(done)
        value = statistics.fmean(e["value"] for e in done.values())
        bound = statistics.fmean(e["bound"] for e in done.values())
        spreads = [e.get("spread") for e in done.values()]
        spread = None
        if None not in spreads:
            diffs = [e["value"] - e["bound"] for e in done.values()]
            scatter = statistics.variance(diffs) / n if n > 1 else 0.0
            spread = math.sqrt(sum(x * x for x in spreads) / n ** 2 + scatter)
        entry = target(value, bound, better, spread, paired=all(e.get("spread_paired") for e in done.values()))
        entry["seeds"] = {str(s): {"value": e["value"], "bound": e["bound"], "met": e["met"],
                                   **{k: e[k] for k in ("spread", "spread_paired") if k in e}}
                          for s, e in done.items()}
        entry["met_every_seed"] = all(e["met"] for e in done.values())
        out[tid] = entry
    return out


def report(args) -> None:
    out = args.out
    payload: dict[str, Any] = {"device": "cpu", "protocol": __doc__.split("Protocol")[1].split("Every point")[0],
                               "testbeds": {}}
    md = ["# Does GMFlow beat flow matching?\n\n",
          "Each testbed: GMFlow and its flow-matching twin with the same network trunk, data, iterations, batch, "
          "optimizer, schedule, EMA and seed (`configs/<testbed>_{gmflow,fm}.toml`). Choices on the validation "
          "split, numbers from the test split with fresh samples; spread = bootstrap standard deviation; a "
          "difference is called significant when it exceeds twice the spread of the difference: paired (the "
          "two points' bootstrap replicates share the resamples of the real test set, whose noise then cancels) "
          "where both points kept their replicates, marked (paired), else the two spreads combined as if "
          "independent.\n\n"]
    fig_rows = []
    previous = previous_report(out)
    for name, testbed in TESTBEDS.items():
        gm_dir, fm_dir = (run_dir(args.work_dir, testbed, f"{m}_s0") for m in ("gmflow", "fm"))
        evaluated_before = name in previous and previous[name][0].get("table")
        if evaluated_before and not (load_points(gm_dir, "test_") or load_points(fm_dir, "test_")):
            steps = {m: checkpoint_step(folder) for m, folder in (("gmflow", gm_dir), ("fm", fm_dir))}
            if (out / "claims.png").is_file() and not (out / CARRIED_FIGURE).is_file():
                # The first report that carries a testbed over keeps the figure its curves were drawn in.
                shutil.copyfile(out / "claims.png", out / CARRIED_FIGURE)
            payload["testbeds"][name], section = carry_over(previous, name, steps)
            md.append(section)
            continue
        runs = {"gmflow": run_info(gm_dir), "fm": run_info(fm_dir)}
        if runs["gmflow"] is None and runs["fm"] is None:
            md.append(f"## {name}\n\nNot trained yet.\n")
            continue
        timing_file = args.work_dir / name / "timing.json"
        if timing_file.is_file():
            timing = json.loads(timing_file.read_text())
            for m in ("gmflow", "fm"):
                if runs[m] is not None:
                    runs[m]["seconds_per_iteration"] = timing[m]["seconds_per_iteration"]
                    runs[m]["seconds_per_iteration_threads"] = timing["threads"]
        budget = pair_budget(gm_dir, fm_dir)
        per_seed = seeds_at(name, args.work_dir, testbed, budget)
        if not per_seed:
            per_seed[0] = pair_results(name, gm_dir, fm_dir)
        rows, _, table4 = per_seed.get(0, ({}, {}, {}))
        targets = combine_seeds({s: r[1] for s, r in per_seed.items()})
        curves = {run: json.loads((run_dir(args.work_dir, testbed, run) / "curve.json").read_text())
                  for run in ("gmflow_s0", "fm_s0", "gmflow_s1", "fm_s1")
                  if (run_dir(args.work_dir, testbed, run) / "curve.json").is_file()}
        rows1 = per_seed[1][0] if 1 in per_seed else {}
        seeds = {m: {"seed1_fd_nfe8": r["FD"], "seed1_fd_sd": r["FD sd"], "solver": r["solver"],
                     "seed0_fd_nfe8": rows.get(f"{m} NFE 8", {}).get("FD")}
                 for m in ("gmflow", "fm") if (r := rows1.get(f"{m} NFE 8"))}
        as_run = protocol_as_run(gm_dir, fm_dir)
        grid = comparison_grid(name, gm_dir, fm_dir, out)
        velocity_file = args.work_dir / name / "velocity_error.json"
        velocity = json.loads(velocity_file.read_text()) if velocity_file.is_file() else None
        payload["testbeds"][name] = {"runs": runs, "protocol_as_run": as_run, "velocity_error": velocity,
                                     "targets": targets, "table": rows,
                                     "table4": table4, "curves": curves, "second_seed": seeds,
                                     "seed1": {"table": per_seed[1][0], "table4": per_seed[1][2],
                                               "targets": per_seed[1][1]} if 1 in per_seed else None,
                                     "grid": grid.name if grid else None}
        fig_rows.append((name, gm_dir, fm_dir))
        md.append(f"## {name}\n\n")
        for m in ("gmflow", "fm"):
            r = runs[m]
            if r:
                md.append(f"- {m}: {r['params']:,} parameters, {r['iterations']:,} iterations"
                          + (f", {r['seconds_per_iteration']:.3f} s / iteration (interleaved timing, "
                             f"{r['seconds_per_iteration_threads']} threads)" if "seconds_per_iteration" in r else "")
                          + "\n")
        md.append("- protocol as run: " + "; ".join(f"{k} {v}" for k, v in as_run.items()) + "\n")
        md.append(pair_tables_md(rows, table4, ""))
        if 1 in per_seed:
            md.append("\nSeed 1 (same recipes and budget, another training seed):\n\n"
                      + pair_tables_md(per_seed[1][0], per_seed[1][2], ", seed 1"))
        if not rows:
            md.append("\nNot evaluated yet: every target below is not measured.\n")
        md.append(f"\nTargets over the seeds evaluated ({', '.join(str(s) for s in per_seed)}): mean value and bound, "
                  "spread from the bootstrap and the seed-to-seed scatter of the difference, and each seed's "
                  "own verdict.\n\n" + targets_md(targets))
        earlier = {}
        for step in earlier_budgets(gm_dir, fm_dir, budget):
            earlier_seeds = seeds_at(name, args.work_dir, testbed, step)
            earlier[str(step)] = {"seeds": list(earlier_seeds),
                                  "targets": combine_seeds({s: r[1] for s, r in earlier_seeds.items()}),
                                  "table": earlier_seeds[0][0] if 0 in earlier_seeds else {}}
            md.append(f"\nThe same targets at the earlier budget of {step:,} iterations (points archived when the "
                      f"pair was trained further; seeds {', '.join(str(s) for s in earlier_seeds)}):\n\n"
                      + targets_md(earlier[str(step)]["targets"]))
        if earlier:
            payload["testbeds"][name]["earlier_budgets"] = earlier
        if velocity:
            at = velocity.get("iterations")
            md.append(f"\nMean-velocity error (MSE of the predicted mean velocity against noise - x0 on "
                      f"{velocity['num']} val images, true labels"
                      + (f"; checkpoints at {at['gmflow']:,} / {at['fm']:,} iterations" if at else "")
                      + ") and the GMFlow GM's own variance (averaged per element) over that error:\n\n"
                      "| sigma | GMFlow | FM | GMFlow / FM | GM variance / GMFlow error |\n"
                      "|---:|---:|---:|---:|---:|\n" + "".join(
                          f"| {r['sigma']} | {r['gmflow']:.4f} | {r['fm']:.4f} | {r['gmflow_over_fm']:.2f} | "
                          f"{r.get('gm_variance_over_error', float('nan')):.2f} |\n" for r in velocity["rows"]))
        probe_file = args.work_dir / name / "reweighting.json"
        if probe_file.is_file():
            probe = json.loads(probe_file.read_text())
            payload["testbeds"][name]["reweighting_probe"] = probe
            md.append(f"\nWhat a GM reweighting does ({probe['num']} val-seed samples"
                      + (f", checkpoint at {probe['iteration']:,} iterations" if "iteration" in probe else "")
                      + "; `probe-reweighting`): "
                      "per call, the share of the GM's variance its mean shift takes, and the mean per-pixel entropy "
                      "(nats) of "
                      "the component weights before -> after; `gmode2_N` is the 2nd-order correction (unguided), "
                      "`gmode_N_pgW` probabilistic guidance with the first-order solver (`_pix`: with "
                      "`per_pixel_variance`); for PG also its push as a "
                      "CFG scale minus 1 (RMS of the guided mean's shift / RMS of cond - uncond; CFG at scale s: "
                      "s - 1 at every call), the push it is designed for (w times the GM's std, same units) and "
                      "cond - uncond in units of the GM's std. Call i of N runs at "
                      "sigma = 1 - (i - 1) / N (shift 1):\n\n| case | call | shift share | weight entropy before | "
                      "after | PG push as CFG s - 1 | designed push | cond - uncond / std |\n"
                      "|---|---:|---:|---:|---:|---:|---:|---:|\n"
                      + "".join(
                          f"| {key} | {r['call']} | {r['bias_share']:.3f} | {r['entropy_before']:.3f} | "
                          f"{r['entropy_after']:.3f} | "
                          + (f"{r['cfg_equivalent']:.3f} | {fmt(r.get('designed_cfg_equivalent'))} | "
                             f"{r['difference_over_std']:.4f}" if "cfg_equivalent" in r else " | | ")
                          + " |\n" for key, rs in probe["cases"].items() for r in rs))
        history = {m: solver_history(folder) for m, folder in (("gmflow", gm_dir), ("fm", fm_dir))}
        if any(len(h) > 1 for h in history.values()):
            payload["testbeds"][name]["val_history"] = history
            cols = sorted({nfe for h in history.values() for by_nfe in h.values() for nfe in by_nfe}, key=int)
            md.append("\nBest unguided val FD (over the solvers, 200 samples) at each evaluated checkpoint:\n\n| run | "
                      "iteration | " + " | ".join(f"NFE {n}" for n in cols) + " |\n|---|---:|" + "---:|" * len(cols)
                      + "\n" + "".join(
                          f"| {m} | {it} | " + " | ".join(
                              f"{by_nfe[n]['fd']:.1f} ({by_nfe[n]['solver']})" if n in by_nfe else "" for n in cols)
                          + " |\n" for m, h in history.items() for it, by_nfe in sorted(h.items())))
        if seeds:
            md.append("\nSecond training seed (seed 1, same recipe and budget; test FD at 8 NFE, solver chosen on val):"
                      "\n\n| run | seed 0 | seed 1 | seed 1 solver |\n|---|---:|---:|---|\n" + "".join(
                          f"| {m} | {v['seed0_fd_nfe8'] or float('nan'):.1f} | "
                          f"{v['seed1_fd_nfe8']:.1f} +- {v['seed1_fd_sd']:.1f} | "
                          f"{v['solver']} |\n" for m, v in seeds.items()))
        if curves:
            steps = sorted({e["iteration"] for c in curves.values() for e in c})
            floors = reference_floors(testbed, args.work_dir)
            curve_png = plot_curves(curves, floors, name, out / f"claims_{name}_curve.png")
            payload["testbeds"][name]["curve_floors"] = floors
            md.append("\nTraining curve (`claims curve`: val FD after each chunk, 500 samples, the recipe's solver at "
                      "8 NFE), and its scale: the same FD of " + " and of ".join(
                          f"{floors['num']} {k.replace('_', ' ')}: {floors[k]:.1f}"
                          for k in ("real_train_images", "vae_reconstructions") if k in floors)
                      + " (what a perfect model would score):\n\n| run | " + " | ".join(f"{s:,} it" for s in steps)
                      + " |\n|---|" + "---:|" * len(steps)
                      + "\n" + "".join(f"| {m} | " + " | ".join(
                          next((f"{e['fd']:.1f}" for e in c if e["iteration"] == s), "") for s in steps) + " |\n"
                          for m, c in curves.items())
                      + f"\n![{name} training curve]({curve_png.name})\n")
        diagnostics = load_points(gm_dir, "diag_")
        if diagnostics:
            md.append("\nDiagnostic points (val split, not eligible for any target): `diag_meanode_euler_N` is the "
                      "GMFlow network sampled by Euler on its GM mean (the mean ODE, as FM is sampled); "
                      "`diag_<solver>_N_T<t>` is the chosen GM solver with the GM at temperature t (weights^(1/t), "
                      "variances x t); `diag_gmode_N` / `diag_gmsde_N` are the first-order GM solvers; "
                      "`diag_<solver>_N_pgW_firstM` PG at scale W on the first M calls only; "
                      "`diag_<solver>_N_pgW_orth1_pix` PG with `per_pixel_variance`:\n\n"
                      "| point | samples | FD | FD sd | precision | recall | saturation |\n"
                      "|---|---:|---:|---:|---:|---:|---:|\n" + "".join(
                          f"| {p['key']} | {p['num_samples']} | {p['val']['fd']:.1f} | {p['val']['fd_sd']:.1f} | "
                          f"{p['val']['precision']:.3f} | {p['val']['recall']:.3f} | "
                          f"{fmt(p.get('saturation'))} |\n" for p in diagnostics))
            payload["testbeds"][name]["diagnostic_points"] = {p["key"]: p["val"] for p in diagnostics}
        levers = lever_results(name, args.work_dir, testbed)
        if levers:
            payload["testbeds"][name]["levers"] = levers
            md.append(levers_md(levers))
        if grid:
            md.append(f"\n![{name} samples]({grid.name})\n")
        md.append("\n")
    verdicts = verdicts_md(payload["testbeds"])
    if verdicts:
        # Right after the introduction: the answer first, the evidence in the sections below.
        md.insert(2, "## Verdicts\n\nEach target over the training seeds evaluated (mean of the seeds): GMFlow's "
                  "(PG's) figure vs FM's (CFG's) +- the spread of the difference; significant = beyond twice it.\n\n"
                  + verdicts + "\n")
    figure = plot(fig_rows, out / "claims.png")
    if figure is None and any("carried_over" in e for e in payload["testbeds"].values()):
        figure = out / CARRIED_FIGURE
    write_results("claims", payload, "".join(md) + (f"\n![claims]({figure.name})\n" if figure else ""), out)
    print((out / "claims.md").read_text())


def lever_results(name: str, work: Path, testbed: Testbed) -> dict[str, Any]:
    """Each lever run (a ``VARIANTS`` entry other than gmflow / fm, ``<variant>_s<seed>``) set against the FM
    run of its seed at the lever's own budget (the FM run's points archived at that iteration if it was trained
    further) by the same targets as the pair: what it changes, its test rows and its verdicts; ``baseline``
    holds the pair's rows at that budget."""
    out: dict[str, Any] = {}
    baselines: dict[tuple[int, int], dict[str, Any]] = {}  # (seed, step) -> the pair's rows, shared by its levers
    for variant, (_, overrides) in VARIANTS.items():
        if variant in ("gmflow", "fm"):
            continue
        for seed in (0, 1):
            folder = run_dir(work, testbed, f"{variant}_s{seed}")
            info = run_info(folder)
            if info is None or not load_points(folder, "test_"):
                continue
            step = info["iterations"]
            gm_pair, fm_pair = (run_dir(work, testbed, f"{m}_s{seed}") for m in ("gmflow", "fm"))
            rows, targets, table4 = pair_results(name, folder, fm_pair, step=step)
            if (seed, step) not in baselines:
                base_rows, _, base4 = pair_results(name, gm_pair, fm_pair, step=step)
                baselines[seed, step] = {"table": base_rows, "table4": base4}
            out[f"{variant}_s{seed}"] = {"changes": overrides, "seed": seed, "params": info["params"],
                                         "iterations": step,
                                         "table": {k: v for k, v in rows.items() if k.startswith("gmflow")},
                                         "table4": {k: v for k, v in table4.items() if k.startswith("gmflow")},
                                         "targets_against_fm": targets,
                                         "baseline": baselines[seed, step]}
    return out


def levers_md(levers: dict[str, Any]) -> str:
    """Markdown: the levers' test FD per NFE and best precision at 6 NFE beside GMFlow and FM of their seed,
    all at the levers' budget."""
    def fd_cells(table: dict, m: str) -> str:
        return " | ".join(f"{r['FD']:.1f} +- {r['FD sd']:.1f}" if (r := table.get(f"{m} NFE {n}")) else ""
                          for n in NFES)

    def precision(table4: dict, m: str) -> str:
        e = table4.get(f"{m} NFE 6")
        return f"{e['best_precision']:.3f}" if e and e.get("best_precision") is not None else ""

    md = ("\nLevers at equal cost (same trunk, data, budget and seed; recipe changes listed), test split, solver "
          "chosen on val; the verdicts set each lever against FM of its seed at the same iterations (T1 at NFE "
          "4 / 6 / 8, T2, T4):\n\n"
          "| run | changes | params | iterations | " + " | ".join(f"FD NFE {n}" for n in NFES)
          + " | best precision NFE 6 | T1 4/6/8 | T2 | T4 |\n|---|---|---:|---:|" + "---:|" * (len(NFES) + 1)
          + "---|---|---|\n")
    for seed, step in sorted({(e["seed"], e["iterations"]) for e in levers.values()}):
        group = {run: e for run, e in levers.items() if (e["seed"], e["iterations"]) == (seed, step)}
        base = next(iter(group.values()))["baseline"]
        for m in ("gmflow", "fm"):
            md += (f"| {m}_s{seed} | (the pair) | | {step:,} | {fd_cells(base['table'], m)} | "
                   f"{precision(base['table4'], m)} | | | |\n")
        for run, e in group.items():
            t = e["targets_against_fm"]
            verdict = lambda tid: "" if t.get(tid, {}).get("met") is None else str(t[tid]["met"])  # noqa: E731
            changes = "; ".join(f"{k}.{kk} = {vv}" for k, d in e["changes"].items() for kk, vv in d.items())
            md += (f"| {run} | {changes} | {e['params']:,} | {step:,} | {fd_cells(e['table'], 'gmflow')} | "
                   f"{precision(e['table4'], 'gmflow')} | "
                   + " / ".join(verdict(f"T1_nfe{n}") or "-" for n in (4, 6, 8))
                   + f" | {verdict('T2_precision_nfe6')} | {verdict('T4_nfe32_not_worse_than_nfe8')} |\n")
    return md


CARRIED_FIGURE = "claims_carried.png"


def previous_report(out: Path) -> dict[str, tuple[dict[str, Any], str, str]]:
    """{testbed: (its entry, its markdown section, the report's date)} of the report already in ``out``."""
    json_path, md_path = out / "claims.json", out / "claims.md"
    if not (json_path.is_file() and md_path.is_file()):
        return {}
    payload = json.loads(json_path.read_text())
    sections = {}
    for chunk in md_path.read_text().split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        body = "\n".join(line for line in body.splitlines() if not line.startswith("![claims]("))
        sections[title.strip()] = body.strip("\n")
    date = payload.get("date", "unknown date")
    return {name: (entry, sections.get(name, ""), date) for name, entry in payload.get("testbeds", {}).items()}


def carry_over(previous: dict, name: str, steps: dict[str, int | None]) -> tuple[dict[str, Any], str]:
    """A testbed's previous entry and section, marked as carried over (once, with the original date), plus
    the iterations the runs being re-trained have reached."""
    entry, section, date = previous[name]
    entry = dict(entry)
    if "carried_over" not in entry:
        entry["carried_over"] = {
            "measured": date, "figure": CARRIED_FIGURE,
            "why": "the runs behind these numbers lived in an uncommitted folder and were lost with that "
                   "session's machine; they stand as measured then until the re-trained runs are evaluated"}
        curves = f"; its FD-vs-precision curves are in `{CARRIED_FIGURE}`" if entry.get("table4") else ""
        section = (f"*Carried over from the report of {date}: its runs were lost with that session's machine"
                   f"{curves}.*\n\n" + section)
    retraining = {m: step for m, step in steps.items() if step is not None}
    entry["carried_over"]["retraining_iterations"] = retraining
    section = "\n".join(line for line in section.splitlines() if not line.startswith("*Re-training now"))
    if retraining:
        section += "\n\n*Re-training now: " + ", ".join(f"{m} at iteration {i:,}" for m, i in retraining.items()) \
            + " (not evaluated yet).*"
    return entry, f"## {name}\n\n{section}\n\n"


def solver_history(folder: Path) -> dict[int, dict[int, dict[str, Any]]]:
    """{iteration: {nfe: best unguided val point (fd, solver)}} over the current points and the archived ones
    (``points_it<iteration>``, kept when a run was trained further)."""
    steps = archived_steps(folder) | ({step} if (step := checkpoint_step(folder)) is not None else set())
    out: dict[int, dict[int, dict[str, Any]]] = {}
    for iteration in steps:
        for p in load_points(folder, "val_", iteration):
            if p["guidance"] is None:
                best = out.setdefault(iteration, {}).get(p["nfe"])
                if best is None or p["val"]["fd"] < best["fd"]:
                    out[iteration][p["nfe"]] = {"fd": p["val"]["fd"], "solver": p["solver"]}
    return out


def guidance_nfes(*folders: Path, step: int | None = None) -> list[int]:
    """The NFEs at which a guidance sweep of these runs has points."""
    return sorted({p["nfe"] for folder in folders for p in load_points(folder, "val_", step) if p["guidance"]})


def protocol_as_run(*folders: Path) -> dict[str, Any]:
    """What the evaluated points of these runs cover (NFEs, guidance scales, sample counts), read from the
    point files, so that a reduced sweep is stated beside its numbers."""
    points = [p for folder in folders for p in load_points(folder, "")]
    guided = [p["guidance"] for p in points if p["guidance"]]
    return {"test NFEs": sorted({p["nfe"] for p in points if p["key"].startswith("test_")}),
            "guidance NFEs": sorted({p["nfe"] for p in points if p["guidance"]}),
            "PG scales": sorted({g["pg"] for g in guided if "pg" in g}),
            "PG orthogonal": sorted({g["orthogonal"] for g in guided if "pg" in g}),
            "CFG scales": sorted({g["cfg"] for g in guided if "cfg" in g}),
            "samples per solver-sweep point": sorted({p["num_samples"] for p in points
                                                      if p["key"].startswith("val_") and not p["guidance"]}),
            "samples per test / guidance point": sorted({p["num_samples"] for p in points
                                                         if p["key"].startswith("test_") or p["guidance"]})}


def matched_precision_pair(pg: list[dict[str, Any]], cfg: list[dict[str, Any]],
                           tolerance: float = 0.02) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The PG and CFG sweep points to show side by side: among the pairs whose test precisions differ by at
    most ``tolerance``, the one with the highest precision (both sides); without such a pair, the closest."""
    pairs = [(a, b) for a in pg for b in cfg]
    if not pairs:
        return None
    gap = lambda ab: abs(ab[0]["test"]["precision"] - ab[1]["test"]["precision"])  # noqa: E731
    close = [ab for ab in pairs if gap(ab) <= tolerance]
    if close:
        return max(close, key=lambda ab: min(ab[0]["test"]["precision"], ab[1]["test"]["precision"]))
    return min(pairs, key=gap)


def comparison_grid(name: str, gm_dir: Path, fm_dir: Path, out: Path) -> Path | None:
    """Samples of GMFlow + PG beside FM + CFG at matched precision (:func:`matched_precision_pair` over the
    guidance sweeps, unguided points included) at the first swept NFE: one row per digit class, 5 samples of
    each method side by side."""
    swept = guidance_nfes(gm_dir, fm_dir)
    if not swept:
        return None
    nfe = swept[0]
    best = matched_precision_pair(sweep(gm_dir, nfe), sweep(fm_dir, nfe))
    if best is None:
        return None
    halves = []
    for folder, b in zip((gm_dir, fm_dir), best):
        images = kept_images(folder, b)
        halves.append(images.reshape(10, -1, *images.shape[1:])[:, :5])
    grid = torch.cat(halves, dim=1).reshape(-1, *halves[0].shape[2:])
    def describe(b):
        g = b["guidance"] or {}
        scale = f"w {g['pg']:g}" if "pg" in g else f"CFG {g['cfg']:g}" if "cfg" in g else "unguided"
        return f"{scale}, P {b['test']['precision']:.3f}"

    return save_image_grid(grid, out / f"claims_{name}_grid.png", nrow=10,
                           title=f"NFE {nfe}, matched precision (val-seed samples, test metrics)\n"
                                 f"left GMFlow+PG ({describe(best[0])}), right FM ({describe(best[1])})")


def plot(rows, path: Path) -> Path | None:
    """FD vs precision of the guidance sweeps (test metrics of the val-seed samples), PG and CFG on one plot
    per testbed (a row) and NFE (a column)."""
    grid = [[(name, nfe, gm, fm) for nfe in guidance_nfes(gm, fm)] for name, gm, fm in rows]
    grid = [row for row in grid if row]
    if not grid:
        return None
    plt = pyplot()
    ncols = max(len(row) for row in grid)
    fig, axes = plt.subplots(len(grid), ncols, figsize=(4.2 * ncols, 3.8 * len(grid)), squeeze=False)
    for i, row in enumerate(grid):
        for ax in axes[i][len(row):]:
            ax.axis("off")
    colors = {1.0: "tab:blue", 0.0: "tab:orange", None: "tab:green"}  # the same series, the same colour
    for ax, (name, nfe, gm, fm) in ((ax, panel) for axs, row in zip(axes, grid) for ax, panel in zip(axs, row)):
        for folder, label, style in ((gm, "GMFlow, probabilistic guidance", "-o"), (fm, "FM, CFG", "--s")):
            for orth in ((1.0, 0.0) if folder is gm else (None,)):
                pts = [p for p in sweep(folder, nfe)
                       if orth is None or (p["guidance"] or {}).get("orthogonal", 1.0) == orth]
                pts = sorted(pts, key=lambda p: (p["guidance"] or {}).get("pg", (p["guidance"] or {}).get("cfg", 0)))
                if pts:
                    tag = label + ("" if orth is None else f" (orthogonal {orth:g})")
                    ax.plot([p["test"]["precision"] for p in pts], [p["test"]["fd"] for p in pts], style,
                            label=tag, markersize=3, color=colors[orth])
        # FD spans orders of magnitude over a sweep (colour: 17 to 2,500).
        ax.set(xlabel="precision", ylabel="FD (log scale)", title=f"{name}, NFE {nfe}", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return save_figure(fig, path)


def use_device(device: str) -> str:
    """``device`` checked (a malformed name fails here, in one line), with TF32 on CUDA as GPU users run it."""
    if device != "cpu":
        torch.device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=WORK)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where runs train and sample (a GPU session: "
                        "benchmarks/gpu_claims.sh); the feature classifier and the metrics stay on the CPU")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("testbed", choices=TESTBEDS)
    p.add_argument("variant", choices=VARIANTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=None)
    p = sub.add_parser("prepare-latents")
    p.add_argument("--vae-iterations", type=int, default=2000)
    p = sub.add_parser("curve")
    p.add_argument("testbed", choices=TESTBEDS)
    p.add_argument("variant", choices=VARIANTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--max-iterations", type=int, default=10_000)
    p.add_argument("--num-samples", type=int, default=1000)
    p = sub.add_parser("evaluate")
    p.add_argument("testbed", choices=TESTBEDS)
    p.add_argument("run")
    p.add_argument("--stages", nargs="+", default=["solvers", "test", "guidance", "diagnostics"],
                   choices=["solvers", "test", "guidance", "diagnostics", "replicates"],
                   help="replicates: re-measure the test points that targets read and that predate kept "
                        "bootstrap replicates (the same samples), for paired spreads")
    p.add_argument("--nfes", type=int, nargs="+", default=None)
    p.add_argument("--guidance-nfes", type=int, nargs="*", default=None, help="NFEs of the guidance sweeps "
                   f"(default: {' '.join(map(str, GUIDANCE_NFES))}; none: --guidance-nfes alone)")
    p.add_argument("--pg-scales", type=float, nargs="+", default=PG_SCALES)
    p.add_argument("--cfg-scales", type=float, nargs="+", default=CFG_SCALES)
    p.add_argument("--orthogonal", type=float, nargs="+", default=[1.0, 0.0])
    p.add_argument("--num-samples", type=int, default=1000, help="samples of a test point and a guidance-sweep point")
    p.add_argument("--solver-samples", type=int, default=500, help="samples of a val point of the solver sweep")
    p.add_argument("--diag-nfes", type=int, nargs="+", default=[8, 32], help="NFEs of the diagnostic points")
    p.add_argument("--temperatures", type=float, nargs="*", default=[0.5, 0.25],
                   help="GM temperatures of the diagnostic points (GMFlow runs)")
    p.add_argument("--diag-pg-first", type=pg_first_spec, nargs="+", default=[], metavar="W:N",
                   help="diagnostic points with PG scale W on the first N network calls only (GMFlow runs)")
    p.add_argument("--diag-pg-per-pixel", type=float, nargs="+", default=[], metavar="W",
                   help="diagnostic points with PG scale W and per_pixel_variance=True (GMFlow runs)")
    p.add_argument("--diag-solvers", nargs="+", default=[],
                   choices=["gmode", "gmsde", "gmsde_nospectral", "gmode2", "gmsde2"],
                   help="GM solvers measured as diagnostic points (GMFlow runs)")
    p = sub.add_parser("time")
    p.add_argument("testbed", choices=TESTBEDS)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--blocks", type=int, default=4)
    p = sub.add_parser("diagnose")
    p.add_argument("testbed", choices=TESTBEDS)
    p.add_argument("--num", type=int, default=500)
    p = sub.add_parser("probe-reweighting")
    p.add_argument("testbed", choices=TESTBEDS)
    p.add_argument("--nfes", type=int, nargs="+", default=[8])
    p.add_argument("--pg-scales", type=float, nargs="*", default=[0.05])
    p.add_argument("--per-pixel-scales", type=float, nargs="*", default=[],
                   help="PG scales probed with per_pixel_variance=True (first-order gmode)")
    p.add_argument("--num", type=int, default=100)
    p = sub.add_parser("report")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    use_device(args.device)
    {"train": train, "prepare-latents": prepare_latents, "curve": curve, "evaluate": evaluate, "time": time_pair,
     "diagnose": diagnose, "probe-reweighting": probe_reweighting, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
