"""dnc_cli/train/network.py: training through the TPT, the run layout, resume, the checkpoint schedule, cores."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import TINY, assert_usage_error, run_cli, train_config, write_fake_mnist

from dnc_cli.data import load_dataset
from dnc_cli.errors import UsageError
from dnc_cli.train.command import run
from dnc_cli.train.network import checkpoint_schedule


def test_checkpoint_schedule():
    from dnc_cli.config import CheckpointConfig, Schedule

    log = checkpoint_schedule(CheckpointConfig(count=10), 1000)
    assert {0, 1, 1000} <= log and 8 <= len(log) <= 11
    assert checkpoint_schedule(CheckpointConfig(schedule=Schedule.every, every=10), 25) == {0, 10, 20, 25}
    assert checkpoint_schedule(CheckpointConfig(schedule=Schedule.list, epochs=[3, 5]), 9) == {3, 5}


@pytest.mark.slow  # trains past the TPT
def test_run_layout_and_tpt(tmp_path):
    cfg = train_config(["model.width=64", "model.depth=2", "epochs=60", "epochs_after_tpt=3",
                        "dataset.n_train=300", "dataset.n_test=100", "optimizer.lr=3e-3"])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "done"
    tpt = summary["tpt_epoch"]
    assert tpt is not None and summary["epochs_done"] == tpt + 3  # overtraining continues past TPT
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert list(log.columns) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "elapsed_s"]
    assert log.epoch.tolist() == list(range(tpt + 4))
    assert log.train_acc[tpt] == 1.0 and (log.train_acc[:tpt] < 1.0).all()
    epochs = sorted(int(p.stem[6:]) for p in (tmp_path / "checkpoints").glob("epoch_*.pt"))
    assert 0 in epochs and tpt in epochs and tpt + 3 in epochs
    ckpt = torch.load(tmp_path / "checkpoints" / f"epoch_{tpt:06d}.pt", weights_only=True)
    assert ckpt["epoch"] == tpt and ckpt["metrics"]["train_acc"] == 1.0
    assert ckpt["config"]["model"]["width"] == 64 and ckpt["layers"][0]["in_features"] == 64
    assert (tmp_path / "config_resolved.yaml").read_text().count("${") == 0
    info = json.loads((tmp_path / "summary.json").read_text())
    assert info["versions"]["torch"] == torch.__version__ and info["seed"] == 0
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temp files


@pytest.mark.slow
def test_random_labels_are_memorised(tmp_path):
    cfg = train_config(["dataset=synthetic", "dataset.n_available=200", "model.width=128",
                        "model.depth=2", "dataset.labels.random_fraction=1.0", "epochs=300",
                        "epochs_after_tpt=0", "optimizer.lr=3e-3", "batch_size=50"])
    summary = run(cfg, tmp_path)
    assert summary["tpt_epoch"] is not None, summary
    labels = torch.load(tmp_path / "labels.pt", weights_only=True)
    assert labels["relabelled"].all() and not torch.equal(labels["train_labels"], labels["true_train_labels"])


def test_resume_is_bitwise_identical(tmp_path, monkeypatch):
    overrides = TINY + ["epochs=6", "checkpoints.schedule=every", "checkpoints.every=1"]
    run(train_config(overrides), tmp_path / "whole")

    import dnc_cli.train.network as train_module

    calls = {"n": 0}
    real_evaluate = train_module.evaluate

    def interrupted(*args, **kwargs):  # Ctrl-C during the 4th epoch's evaluation (after epoch 3 is saved)
        calls["n"] += 1
        if calls["n"] == 2 * 4 + 1:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(train_config(overrides), tmp_path / "part")
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    assert json.loads((tmp_path / "part/summary.json").read_text())["status"] == "interrupted"
    run(train_config(overrides + [f"resume={tmp_path / 'part'}"]), tmp_path / "part")

    for epoch in range(7):
        a = torch.load(tmp_path / f"whole/checkpoints/epoch_{epoch:06d}.pt", weights_only=True)["model"]
        b = torch.load(tmp_path / f"part/checkpoints/epoch_{epoch:06d}.pt", weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), epoch
    logs = [pd.read_csv(tmp_path / f"{d}/train_log.csv").drop(columns="elapsed_s") for d in ("whole", "part")]
    pd.testing.assert_frame_equal(*logs)


def test_resume_rejects_changed_config(tmp_path, tiny_run):
    with pytest.raises(UsageError, match="model.width=48"):
        run(train_config(TINY + ["model.width=48", f"resume={tiny_run}"]), tiny_run)


def test_torchvision_dataset_offline(tmp_path):
    """The torchvision path (MNIST layout, download=false) on a tiny fake copy written here."""
    write_fake_mnist(tmp_path / "data")
    cfg = train_config(["dataset=mnist", f"dataset.root={tmp_path / 'data'}", "model.width=16", "model.depth=2",
                        "epochs=2", "dataset.n_train=50"])
    data = load_dataset(cfg.dataset, 0)
    assert data.train.x.shape == (50, 1, 28, 28) and data.test.x.shape == (30, 1, 28, 28)
    assert run(cfg, tmp_path / "run")["status"] == "done"


@pytest.mark.slow
def test_divergence_stops_with_one_line(tmp_path):
    result = run_cli("train", *TINY, "optimizer=sgd", "optimizer.lr=1e10", "epochs=5", "hydra.run.dir=run",
                     cwd=tmp_path)
    assert_usage_error(result, "diverged", "epoch 1")
    assert json.loads((tmp_path / "run/summary.json").read_text())["status"] == "failed"
    assert (tmp_path / "run/checkpoints/epoch_000000.pt").exists()  # earlier checkpoints kept


def test_parallel_sweep_jobs_share_the_cores(monkeypatch):
    import os

    from omegaconf import OmegaConf

    from dnc_cli.train.command import share_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    threads = torch.get_num_threads()
    try:
        assert share_cores(OmegaConf.create({"n_jobs": 4})) == 2 and torch.get_num_threads() == 2
        assert share_cores(OmegaConf.create({"n_jobs": -1})) == 1  # joblib: one job per core
        assert share_cores(OmegaConf.create({"n_jobs": 1})) is None
        assert share_cores(OmegaConf.create({"_target_": "basic"})) is None  # sequential launcher
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert share_cores(OmegaConf.create({"n_jobs": 4})) is None
    finally:
        torch.set_num_threads(threads)


def test_resume_compares_only_the_keys_the_run_has(tmp_path, tiny_run):
    """A run written before a key existed (dataset.rff_gamma, say) resumes: that key is not compared."""
    import yaml

    from dnc_cli.config import to_plain
    from dnc_cli.train.lifecycle import check_resume_config

    path = tiny_run / "config_resolved.yaml"
    written = yaml.safe_load(path.read_text())
    del written["dataset"]["rff_gamma"]
    path.write_text(yaml.safe_dump(written))
    cfg = train_config(TINY + ["epochs=6", "checkpoints.schedule=every", "checkpoints.every=2", "dataset.rff_gamma=0.1",
                               f"resume={tiny_run}"])
    check_resume_config(tiny_run, to_plain(cfg))
    with pytest.raises(UsageError, match="model.width=48"):
        check_resume_config(tiny_run, to_plain(train_config(TINY + ["model.width=48"])))


def test_networks_need_a_width():
    with pytest.raises(UsageError, match="model.width=null .* model=deep_rfm"):
        train_config(["model.width=null"])
