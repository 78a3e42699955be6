"""dnc_cli/analyze/command.py: `dnc analyze` in a subprocess: options, bad input, bad checkpoints."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from conftest import TINY, assert_usage_error, run_cli, train_config

from dnc_cli.config import ModelConfig
from dnc_cli.models.networks import build_model


@pytest.mark.slow
def test_cli_analyze(tmp_path, tiny_run):
    result = run_cli("analyze", f"run_dir={tmp_path}", "splits=[train]", "families=[nc]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = pd.read_csv(tiny_run / "analysis/metrics.csv")
    assert set(df.split) == {"train"}
    assert not (tmp_path / "outputs").exists()  # analyze writes into the run, not into outputs/


@pytest.mark.slow
def test_bad_input(tmp_path, tiny_run):
    assert_usage_error(run_cli("analyze", f"run_dir={tmp_path / 'missing'}", cwd=tmp_path), "missing",
                       "does not exist")
    (tmp_path / "empty").mkdir()
    assert_usage_error(run_cli("analyze", f"run_dir={tmp_path / 'empty'}", cwd=tmp_path), "holds no run")
    assert_usage_error(run_cli("analyze", f"run_dir={tiny_run}", "splits=[val]", cwd=tmp_path), "val", "train")
    assert_usage_error(run_cli("analyze", f"run_dir={tiny_run}", "families=[ntk]", cwd=tmp_path), "ntk", "svd")
    # a truncated checkpoint: named, skipped, the rest analysed, exit non-zero
    ckpt = tiny_run / "checkpoints/epoch_000004.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    result = run_cli("analyze", f"run_dir={tiny_run}", "families=[nc]", cwd=tmp_path)
    assert_usage_error(result, "epoch_000004.pt")
    assert sorted(set(pd.read_csv(tiny_run / "analysis/metrics.csv").epoch)) == [0, 2, 6]
    # a checkpoint from another model: one line, existing tables untouched
    table = (tiny_run / "analysis/metrics.csv").read_bytes()
    wrong = build_model(ModelConfig(depth=3, width=48), (1, 8, 8), 10)
    torch.save({"model": wrong.state_dict(), "epoch": 8}, tiny_run / "checkpoints/epoch_000008.pt")
    result = run_cli("analyze", f"run_dir={tiny_run}", "families=[nc]", cwd=tmp_path)
    assert_usage_error(result, "epoch_000008.pt", "does not match")
    assert (tiny_run / "analysis/metrics.csv").read_bytes() == table


@pytest.mark.slow
def test_analysis_killed_mid_run_resumes_to_identical_tables(tmp_path):
    """kill -9 during `dnc analyze`, then the same command again: every table (CSV and Parquet), settings.json,
    nc_table.md and the Gram sample equal those of an analysis that was never interrupted."""
    import numpy as np

    from dnc_cli.train.command import run

    run(train_config(TINY + ["epochs=20", "checkpoints.schedule=every", "checkpoints.every=2"]), tmp_path / "killed")
    shutil.copytree(tmp_path / "killed", tmp_path / "whole")
    assert run_cli("analyze", f"run_dir={tmp_path / 'whole'}", cwd=tmp_path).returncode == 0

    table = tmp_path / "killed/analysis/metrics.csv"
    process = subprocess.Popen([sys.executable, "-m", "dnc_cli", "analyze", f"run_dir={tmp_path / 'killed'}"],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not table.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()  # SIGKILL: no handler runs, no file is closed cleanly
    process.wait()
    killed_at = sorted(set(pd.read_csv(table).epoch))
    assert killed_at and killed_at != list(range(0, 21, 2)), killed_at  # it did stop part-way
    result = run_cli("analyze", f"run_dir={tmp_path / 'killed'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    whole, resumed = tmp_path / "whole/analysis", tmp_path / "killed/analysis"
    assert sorted(p.name for p in whole.iterdir()) == sorted(p.name for p in resumed.iterdir())
    for name in ("metrics.csv", "metrics.parquet", "settings.json", "nc_table.md"):
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
    gram = "gram_epoch_000020_train.npz"
    with np.load(whole / gram) as a, np.load(resumed / gram) as b:
        assert a.files == b.files and all(np.array_equal(a[key], b[key]) for key in a.files)
