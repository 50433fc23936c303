"""Every bad input of the command line gets one line `gmfm <command>: error: ...` naming the flag or key,
never a traceback (one test per probe of the reliability review)."""

from __future__ import annotations

import pytest

from gmfm.cli.main import main

TINY_2D = ["--hidden", "16", "--layers", "1", "--components", "2", "--batch-size", "32", "--iterations", "4",
           "--checkpoint-every", "2", "--log-every", "2", "--device", "cpu", "--warmup", "0"]


def error_of(capsys, argv: list[str], code: int = 2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err  # one line
    return lines[0]


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    main(["train-2d", "--out", str(out), *TINY_2D])
    return out


@pytest.mark.parametrize("flag, value, message", [
    ("--grad-clip", "-1", "argument --grad-clip: expected a number in (0, 1e+09]"),
    ("--grad-clip", "0", "argument --grad-clip: expected a number in (0, 1e+09]"),
    ("--ema-gamma", "-1", "argument --ema-gamma: expected a number in (0, 1e+06]"),
    ("--ema-gamma", "nan", "argument --ema-gamma: expected a number in (0, 1e+06]"),
    ("--hidden", "0", "argument --hidden: expected an integer >= 1"),
    ("--layers", "0", "argument --layers: expected an integer >= 1"),
    ("--lr", "1e39", "argument --lr: expected a number in (0, 1]"),
    ("--iterations", "2.5", "argument --iterations: expected an integer >= 1"),
    ("--transition-ratio", "0", "argument --transition-ratio: expected a number in (0, 1]"),
])
def test_train_2d_flags_are_checked(tmp_path, capsys, flag, value, message):
    line = error_of(capsys, ["train-2d", "--out", str(tmp_path / "r"), *TINY_2D, flag, value])
    assert line.startswith("gmfm train-2d: error: ") and message in line


def test_out_that_is_a_file_or_below_a_file(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    assert "is a file, not a folder" in error_of(capsys, ["train-2d", "--out", str(file), *TINY_2D])
    assert "lies below" in error_of(capsys, ["train-2d", "--out", str(file / "run"), *TINY_2D])


def test_out_that_cannot_be_created(capsys):
    line = error_of(capsys, ["train-2d", "--out", "/proc/gmfm-cannot-write/run", *TINY_2D])
    assert "cannot create the run folder /proc/gmfm-cannot-write/run" in line


def test_cuda_without_cuda(tmp_path, capsys, run_2d):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "CUDA is not available" in error_of(capsys, ["train-2d", "--out", str(tmp_path / "r"), *TINY_2D,
                                                        "--device", "cuda"])
    assert "CUDA is not available" in error_of(capsys, ["sample-2d", str(run_2d), "--device", "cuda"])


@pytest.mark.parametrize("extra, message", [
    (["--solver", "gmode", "--nfe", "0"], "argument --nfe: expected an integer >= 1"),
    (["--num-samples", "0"], "argument --num-samples: expected an integer >= 1"),
    (["--substeps", "-2"], "argument --substeps: expected an integer >= 1"),
    (["--guidance-scale", "1.5"], "argument --guidance-scale: expected a number in [0, 1)"),
    (["--label", "3"], "--label: checkerboard has no classes"),
    (["--out", "histogram"], "--out must name a .png file, got histogram"),
])
def test_sample_2d_flags_are_checked(capsys, run_2d, extra, message):
    line = error_of(capsys, ["sample-2d", str(run_2d), "--device", "cpu", "--num-samples", "100", *extra])
    assert line.startswith("gmfm sample-2d: error: ") and message in line


def test_missing_and_corrupt_checkpoints(tmp_path, capsys):
    assert "checkpoint" in error_of(capsys, ["sample-2d", str(tmp_path / "nowhere"), "--device", "cpu"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    assert "is truncated or corrupt" in error_of(capsys, ["sample-2d", str(tmp_path / "broken"), "--device", "cpu"])


BASE_RECIPE = {
    "data": {"name": "'mnist'"},
    "model": {"backbone": "'gmdit'", "num_components": "2", "patch_size": "8", "num_attention_heads": "1",
              "attention_head_dim": "8", "num_layers": "1"},
    "train": {"iterations": "2", "batch_size": "2"},
}


@pytest.mark.parametrize("table, key, value, message", [
    ("train", "lrr", "1e-3", "unknown key(s) ['lrr'] in [train]; valid keys:"),
    ("train", "lr", "'1e-3'", "lr must be a finite number, got '1e-3'"),
    ("train", "betas", "0.9", "betas must be two numbers in [0, 1), got 0.9"),
    ("train", "weight_decay", "-1", "weight_decay must be in [0, 10], got -1"),
    ("model", "num_components", "0", "[model] num_components and out_channels must be >= 1"),
    ("loss", "transition_ratio", "2", "[loss] transition_ratio must be in (0, 1], got 2"),
    ("sample", "nfe", "0", "[sample] nfe must be an integer >= 1, got 0"),
])
def test_recipe_errors_name_the_key(tmp_path, capsys, table, key, value, message):
    tables = {name: dict(values) for name, values in BASE_RECIPE.items()}
    tables.setdefault(table, {})[key] = value
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                              for name, values in tables.items()))
    line = error_of(capsys, ["train-images", "--config", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert line.startswith("gmfm train-images: error: ") and message in line, line


def test_recipe_device_is_not_overridden_by_a_default(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[data]\nname = 'checkerboard'\n[train]\niterations = 2\nbatch_size = 8\ndevice = 'cuda'\n")
    assert "CUDA is not available" in error_of(capsys, ["train-2d", "--config", str(recipe), "--out",
                                                        str(tmp_path / "run")])


def test_sample_images_flags_are_checked(capsys, tmp_path):
    assert "argument --nfe: expected an integer >= 1" in error_of(capsys, ["sample-images", str(tmp_path), "--nfe", "0"])
    assert "argument --per-class: expected an integer >= 1" in error_of(
        capsys, ["sample-images", str(tmp_path), "--per-class", "0"])


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "sample-2d", str(tmp_path / "nowhere"), "--device", "cpu"])
