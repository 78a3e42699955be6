"""dnc_cli/runs.py: atomic writes, finding runs, a run's kind, the resume log."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from plot_tables import make_network_run, make_rfm_run

from dnc_cli.errors import UsageError
from dnc_cli.runs import (
    DEEP_RFM,
    NETWORK,
    find_runs,
    find_runs_and_sweeps,
    kind_of_model,
    run_kind,
    truncate_log,
    write_text,
)


def test_atomic_writes_keep_normal_permissions(tmp_path):
    write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_find_runs_lists_run_folders_sorted(tmp_path):
    make_network_run(tmp_path / "sweep" / "b")
    make_rfm_run(tmp_path / "sweep" / "a")
    assert find_runs(tmp_path / "sweep") == [tmp_path / "sweep" / "a", tmp_path / "sweep" / "b"]


def test_find_runs_and_sweeps_names_an_empty_run_dir(tmp_path):
    with pytest.raises(UsageError, match="holds no run"):
        find_runs_and_sweeps(tmp_path)
    make_network_run(tmp_path / "a")
    make_network_run(tmp_path / "b")
    assert find_runs_and_sweeps(tmp_path) == ([tmp_path / "a", tmp_path / "b"], [tmp_path])  # several runs: a sweep


def test_run_kind_from_summary_config_or_table():
    assert [kind_of_model(m) for m in ("mlp", "resnet18_mlp", "vgg11_mlp", "deep_rfm")] == [NETWORK] * 3 + [DEEP_RFM]
    assert run_kind({"model": "deep_rfm"}) == DEEP_RFM
    assert run_kind({}, {"model": {"name": "deep_rfm"}}) == DEEP_RFM
    assert run_kind({"model": "mlp"}, {"model": {"name": "deep_rfm"}}) == NETWORK  # summary.json first
    network = pd.DataFrame({"stage": ["", "right"], "metric": ["nc1_trace", "nc1"]})
    rfm = pd.DataFrame({"stage": ["", "input"], "metric": ["kernel_acc", "nc1_trace"]})  # stage '': kernel_acc only
    assert run_kind({}, {}, network) == NETWORK and run_kind({}, None, rfm) == DEEP_RFM


def test_truncate_log_drops_rows_after_the_resume_state(tmp_path):
    path = tmp_path / "train_log.csv"
    path.write_text("epoch,loss\n0,1\n1,0.5\n2,0.25\n")
    truncate_log(path, 1)
    assert path.read_text() == "epoch,loss\n0,1\n1,0.5\n"
    truncate_log(tmp_path / "missing.csv", 1)  # nothing to do
