"""Benchmark drivers that train several runs in a row stop after a SIGTERM-ended run instead of going on."""

import pytest
import torch

from benchmarks.common import stop_if_interrupted
from gmfm.training.trainer import TrainResult


def _result(stopped: bool) -> TrainResult:
    return TrainResult(model=torch.nn.Linear(1, 1), ema_model=None, step=3, checkpoint=None, stopped_early=stopped)


def test_a_stopped_run_ends_the_driver_with_a_resume_hint():
    with pytest.raises(SystemExit, match="rerun the same command to resume"):
        stop_if_interrupted(_result(True))


def test_a_finished_or_skipped_run_lets_the_driver_go_on():
    stop_if_interrupted(_result(False))
    stop_if_interrupted(None)
