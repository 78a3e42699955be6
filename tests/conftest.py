"""Shared test helpers: compose configs exactly as the CLI does, and run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


def compose(command: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("dnc_cli.conf", version_base="1.3"):
        return hydra_compose(config_name=command, overrides=overrides)


def train_config(overrides: list[str]):
    """A TrainConfig from Hydra overrides (validated, as `dnc train` does)."""
    from dnc_cli.train import check

    return check(compose("train", ["progress=false", *overrides]))


# small and fast, but the same code paths as the defaults
TINY = ["model.width=32", "model.depth=3", "epochs=4", "dataset.n_train=200", "dataset.n_test=100"]


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "dnc_cli.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_usage_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Bad input: exit status 2, exactly one line on stderr naming the value, no traceback."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def tiny_run(tmp_path):
    """A finished tiny training run on digits (the default dataset)."""
    from dnc_cli.train import run

    cfg = train_config(TINY + ["epochs=6", "checkpoints.schedule=every", "checkpoints.every=2"])
    run_dir = tmp_path / "run"
    run(cfg, run_dir)
    return run_dir
