"""dnc_cli/analyze/command.py: `dnc analyze` in a subprocess: options, bad input, bad checkpoints."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import assert_usage_error, run_cli

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
