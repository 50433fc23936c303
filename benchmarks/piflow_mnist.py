"""pi-Flow on pixel MNIST: 1, 2 and 4 step students of the claims study's GMFlow teacher (and of its FM
twin), against the teacher's best FD at 8 NFE.

    python -m benchmarks.piflow_mnist train                 # students (resumable; teachers from the claims study)
    python -m benchmarks.piflow_mnist report

Teachers: ``benchmarks/runs/claims/mnist/{gmflow,fm}_s0`` (``python -m benchmarks.claims train mnist ...``).
Students: ``mnist_piflow`` (K = 8, the teacher's GM-DiT, initialised from it), NFE 1, 2, 4 of the GMFlow teacher and
NFE 4 of the FM teacher. Metrics as the claims study (1,000 class-balanced samples, test split, the small
CNN's features, bootstrap spread); the teacher's figure is its claims-study test point at 8 NFE (the solver
chosen on val). Writes ``piflow_mnist.{json,md}`` and grids.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gmfm.distill import distill, load_distill_recipe
from gmfm.experiments import SamplingPlan, load_run
from gmfm.experiments.results import write_json
from gmfm.metrics.figures import save_image_grid
from gmfm.training import CHECKPOINT_NAME, read_checkpoint_metadata

from .claims import TEST_SEED, TESTBEDS, Measure, test_point
from .claims import WORK as CLAIMS_WORK
from .common import RESULTS_DIR, stop_if_interrupted, write_results

WORK = Path("benchmarks/runs/piflow_mnist")
TEACHERS = CLAIMS_WORK / "mnist"
STUDENTS = [("gmflow", 1), ("gmflow", 2), ("gmflow", 4), ("fm", 4)]


def train(args) -> None:
    torch.set_num_threads(args.threads)
    recipe = load_distill_recipe("mnist_piflow")
    chosen = STUDENTS if not args.students else [(t, int(n)) for t, n in (x.split(":") for x in args.students)]
    for teacher, nfe in chosen:
        stop_if_interrupted(distill(recipe.with_overrides(distill={"nfe": nfe},
                                                          train={"device": "cpu", "iterations": args.iterations}),
                                    args.work_dir / f"{teacher}_nfe{nfe}", TEACHERS / f"{teacher}_s0"))


def report(args) -> None:
    torch.set_num_threads(args.threads)
    measure = Measure(TESTBEDS["mnist"], CLAIMS_WORK)
    rows = {}
    for teacher, nfe in STUDENTS:
        folder = args.work_dir / f"{teacher}_nfe{nfe}"
        path = folder / "test.json"
        if not (folder / CHECKPOINT_NAME).is_file():
            continue
        meta = read_checkpoint_metadata(folder / CHECKPOINT_NAME)
        step, planned = meta["step"], meta["train_config"]["iterations"]
        # A student trained further since its last measurement is measured again.
        if not path.is_file() or json.loads(path.read_text()).get("iterations") != step:
            trained = load_run(folder)
            images, labels = measure.images(trained, SamplingPlan.resolve(trained), 1000, TEST_SEED)
            write_json(path, {**measure.metrics(images, labels, ("test",)), "iterations": step})
            save_image_grid(images.reshape(10, 100, *images.shape[1:])[:, :10].reshape(-1, *images.shape[1:]),
                            args.out / f"piflow_mnist_{teacher}_nfe{nfe}.png", nrow=10,
                            title=f"pi-Flow student of the {teacher} teacher, NFE {nfe}")
        r = json.loads(path.read_text())
        rows[f"student of {teacher}, NFE {nfe}"] = {"FD": r["test"]["fd"], "FD sd": r["test"]["fd_sd"],
                                                    "precision": r["test"]["precision"], "recall": r["test"]["recall"],
                                                    "accuracy": r["accuracy"], "iterations": r["iterations"],
                                                    "planned iterations": planned}
    teacher8 = {m: test_point(TEACHERS / f"{m}_s0", 8) for m in ("gmflow", "fm")}
    for m, p in teacher8.items():
        if p:
            rows[f"{m} teacher, {p['solver']}, NFE 8"] = {"FD": p["test"]["fd"], "FD sd": p["test"]["fd_sd"],
                                                         "precision": p["test"]["precision"],
                                                         "recall": p["test"]["recall"], "accuracy": p["accuracy"]}
    targets = {}
    for teacher, nfe in STUDENTS:  # each student against its own teacher (the FM twin's: NFE 4 only)
        factor = {4: 1.0, 2: 1.5, 1: 2.0}[nfe]
        t = teacher8[teacher]
        s = rows.get(f"student of {teacher}, NFE {nfe}")
        if s and s["iterations"] < s["planned iterations"]:
            s = None  # a student still training is listed, but judged only once it has finished
        prefix = "" if teacher == "gmflow" else "fm_teacher_"
        targets[f"{prefix}fd_nfe{nfe}_within_{factor:g}x_teacher_nfe8"] = {
            "value": s["FD"] if s else None, "bound": factor * t["test"]["fd"] if t else None, "better": "lower",
            "met": bool(s["FD"] <= factor * t["test"]["fd"]) if s and t else None}
        targets[f"{prefix}recall_nfe{nfe}_at_least_0.9x_teacher"] = {
            "value": s["recall"] if s else None, "bound": 0.9 * t["test"]["recall"] if t else None, "better": "higher",
            "met": bool(s["recall"] >= 0.9 * t["test"]["recall"]) if s and t else None}
    cols = ["FD", "FD sd", "precision", "recall", "accuracy", "iterations", "planned iterations"]
    md = ["1,000 class-balanced samples per row against the 500 test digits (claims-study features); students: "
          "`mnist_piflow` (K = 8), teacher guidance off.", "", "| model | " + " | ".join(cols) + " |",
          "|---|" + "---:|" * len(cols)]
    for key, r in rows.items():
        md.append(f"| {key} | " + " | ".join("" if r.get(c) is None else (f"{r[c]:.4f}" if isinstance(r[c], float)
                                                                            else str(r[c])) for c in cols) + " |")
    md += ["", "| target | value | bound | met |", "|---|---:|---:|---|"]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    md += [f"| {k} | {fmt(v['value'])} | {fmt(v['bound'])} | {v['met']} |" for k, v in targets.items()]
    write_results("piflow_mnist", {"device": "cpu", "results": rows, "targets": targets}, "\n".join(md) + "\n", args.out)
    print("\n".join(md))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=WORK)
    parser.add_argument("--threads", type=int, default=1)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--students", nargs="+", choices=[f"{t}:{n}" for t, n in STUDENTS],
                   help="train only these (teacher:nfe; default: all, in order), e.g. one per process")
    p = sub.add_parser("report")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    {"train": train, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
