"""`dnc train`: data, layer protocol, training through TPT, run layout, resume, bad input."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY, assert_usage_error, run_cli, train_config

from dnc_cli.config import DatasetConfig, ModelConfig, ModelName, RandomLabelMode
from dnc_cli.data import load_dataset, randomize_labels, targets
from dnc_cli.models import build_model
from dnc_cli.train import checkpoint_schedule, run

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- data
def test_balanced_subset_and_standardisation():
    data = load_dataset(DatasetConfig(n_train=500, n_test=100), seed=0)
    counts = torch.bincount(data.train.labels, minlength=10)
    assert counts.tolist() == [50] * 10
    assert data.train.x.shape == (500, 1, 8, 8) and data.test.x.shape == (100, 1, 8, 8)
    flat = data.train.x.flatten(1)
    varying = flat.std(0) > 0
    torch.testing.assert_close(flat.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(0)[varying], torch.ones(int(varying.sum())), atol=1e-5, rtol=0)
    assert (flat[:, ~varying] == 0).all()  # constant pixels map to 0, never NaN
    assert not data.test.x.isnan().any()
    # the test split uses the training statistics, so its mean is not exactly 0
    assert data.test.x.flatten(1).mean(0).abs().max() > 1e-3


def test_unbalanced_subset_takes_the_first_samples():
    full = load_dataset(DatasetConfig(), seed=0)
    first = load_dataset(DatasetConfig(n_train=100, balanced=False, standardize="none"), seed=0)
    raw = load_dataset(DatasetConfig(standardize="none"), seed=0)
    assert torch.equal(first.train.labels, full.train.labels[:100])
    assert torch.equal(first.train.x, raw.train.x[:100])


@pytest.mark.parametrize("mode", [RandomLabelMode.balanced, RandomLabelMode.iid])
def test_random_labels(mode):
    labels = torch.arange(1000) % 10
    new, relabelled = randomize_labels(labels, 0.5, mode, 10, seed=3)
    assert int(relabelled.sum()) == 500
    assert torch.equal(new[~relabelled], labels[~relabelled])
    if mode == RandomLabelMode.balanced:  # a permutation of the multiset: class sizes unchanged
        assert torch.equal(torch.bincount(new), torch.bincount(labels))
    assert (new[relabelled] != labels[relabelled]).float().mean() > 0.7  # really re-drawn
    again, _ = randomize_labels(labels, 0.5, mode, 10, seed=3)
    assert torch.equal(new, again)  # seeded


def test_targets():
    labels = torch.tensor([0, 2])
    assert targets(labels, 3, "mse").tolist() == [[1, -1, -1], [-1, -1, 1]]
    assert torch.equal(targets(labels, 3, "ce"), labels)


# ---------------------------------------------------------------- layer protocol
@pytest.mark.parametrize("name", [ModelName.mlp, ModelName.resnet18_mlp, ModelName.vgg11_mlp])
def test_layer_protocol(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, depth=3, width=16), (1, 8, 8), 10).eval()
    x = torch.randn(5, 1, 8, 8)
    h0 = model.embed(x)
    trace = model.trace(h0)
    assert len(trace.inputs) == len(trace.preacts) == len(trace.outputs) == 3
    torch.testing.assert_close(trace.logits, model(x))
    for i, layer in enumerate(model.layers):
        torch.testing.assert_close(trace.preacts[i], trace.inputs[i] @ layer.weight.T)
        torch.testing.assert_close(trace.outputs[i], torch.relu(trace.preacts[i]))
        if i > 0:
            assert trace.inputs[i] is trace.outputs[i - 1]
    stages = model.backbone_stages(x)
    assert (len(stages) == 0) == (name == ModelName.mlp)
    assert [d["in_features"] for d in model.describe()] == [h0.shape[1], 16, 16]


def test_small_initialisation():
    model = build_model(ModelConfig(depth=2, width=256, init_gain=0.1), (1, 8, 8), 10)
    bound = 0.1 * (6 / (64 + 256)) ** 0.5  # xavier_uniform bound with gain 0.1
    assert model.layers[0].weight.abs().max() <= bound
    assert model.layers[0].weight.abs().max() > 0.9 * bound
    assert model.classifier.weight.abs().max() > bound  # last layer keeps the default init


def test_checkpoint_schedule():
    from dnc_cli.config import CheckpointConfig, Schedule

    log = checkpoint_schedule(CheckpointConfig(count=10), 1000)
    assert {0, 1, 1000} <= log and 8 <= len(log) <= 11
    assert checkpoint_schedule(CheckpointConfig(schedule=Schedule.every, every=10), 25) == {0, 10, 20, 25}
    assert checkpoint_schedule(CheckpointConfig(schedule=Schedule.list, epochs=[3, 5]), 9) == {3, 5}


# ---------------------------------------------------------------- training
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

    import dnc_cli.train as train_module

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
    from dnc_cli.errors import UsageError

    with pytest.raises(UsageError, match="model.width=48"):
        run(train_config(TINY + ["model.width=48", f"resume={tiny_run}"]), tiny_run)


def _write_fake_mnist(root: Path, n_train=60, n_test=30):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (torch.arange(n) % 10).to(torch.uint8)
        images = (torch.rand(n, 28, 28, generator=g) * 60 + labels.view(-1, 1, 1) * 19).to(torch.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28)
                                                          + images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.numpy().tobytes())


def test_torchvision_dataset_offline(tmp_path):
    """The torchvision path (MNIST layout, download=false) on a tiny fake copy written here."""
    _write_fake_mnist(tmp_path / "data")
    cfg = train_config(["dataset=mnist", f"dataset.root={tmp_path / 'data'}", "model.width=16", "model.depth=2",
                        "epochs=2", "dataset.n_train=50"])
    data = load_dataset(cfg.dataset, 0)
    assert data.train.x.shape == (50, 1, 28, 28) and data.test.x.shape == (30, 1, 28, 28)
    assert run(cfg, tmp_path / "run")["status"] == "done"


# ---------------------------------------------------------------- CLI and bad input
def test_cli_help_and_train_subprocess(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0 and all(c in result.stdout for c in ("train", "analyze", "plot"))
    result = run_cli("train", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "Powered by Hydra" in result.stdout
    result = run_cli("train", *TINY, "epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 1 and (runs[0] / "summary.json").exists()


@pytest.mark.parametrize("overrides, needles", [
    (["dataset=imagenet"], ["dataset=imagenet", "digits", "mnist"]),
    (["model=transformer"], ["model=transformer", "mlp", "resnet18_mlp"]),
    (["optimizer=rmsprop"], ["optimizer=rmsprop", "adam", "sgd"]),
    (["optimizer.lr=0"], ["optimizer.lr=0"]),
    (["optimizer.lr=-1"], ["optimizer.lr=-1"]),
    (["model.width=0"], ["model.width=0"]),
    (["model.depth=-2"], ["model.depth=-2"]),
    (["epochs=0"], ["epochs=0"]),
    (["dataset.labels.random_fraction=1.5"], ["random_fraction=1.5", "[0, 1]"]),
    (["dataset.n_train=100000"], ["dataset.n_train=100000", "1438"]),
    (["loss=hinge"], ["hinge", "mse", "ce"]),
    (["device=tpu"], ["device=tpu", "cpu"]),
    (["epochs=1,0", "-m"], ["epochs=0"]),
    (["labels.random_fraction=1.0"], ["did you mean dataset.labels.random_fraction"]),
])
def test_bad_input(tmp_path, overrides, needles):
    assert_usage_error(run_cli("train", *overrides, cwd=tmp_path), *needles)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_missing_dataset_and_unwritable_dir(tmp_path):
    result = run_cli("train", "dataset=mnist", f"dataset.root={tmp_path / 'nowhere'}", "dataset.download=false",
                     cwd=tmp_path)
    assert_usage_error(result, "dataset.root=", "download")
    (tmp_path / "blocker").write_text("a file, not a folder")
    result = run_cli("train", f"hydra.run.dir={tmp_path / 'blocker' / 'run'}", cwd=tmp_path)
    assert_usage_error(result, "hydra.run.dir=", "not a directory")
    assert (tmp_path / "blocker").read_text() == "a file, not a folder"


def test_divergence_stops_with_one_line(tmp_path):
    result = run_cli("train", *TINY, "optimizer=sgd", "optimizer.lr=1e10", "epochs=5", "hydra.run.dir=run",
                     cwd=tmp_path)
    assert_usage_error(result, "diverged", "epoch 1")
    assert json.loads((tmp_path / "run/summary.json").read_text())["status"] == "failed"
    assert (tmp_path / "run/checkpoints/epoch_000000.pt").exists()  # earlier checkpoints kept


def test_wheel_contains_configs(tmp_path):
    """Hydra apps classically break when the YAML is missing from the wheel: build, install, compose."""
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp_path / "dist",
                            REPO], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("dnc-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dnc_cli/conf/train.yaml" in names and "dnc_cli/conf/model/mlp.yaml" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    deps = next(Path(p) for p in sys.path if p.endswith("site-packages") and (Path(p) / "hydra").exists())
    (site / "deps.pth").write_text(str(deps) + "\n")  # the dependencies, but not the editable dnc
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", site,
                    wheel], check=True)
    python = venv / "bin" / "python"
    where = subprocess.run([python, "-c", "import dnc_cli; print(dnc_cli.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path)
    assert str(site) in where.stdout, where
    result = subprocess.run([python, "-m", "dnc_cli.cli", "train", "--cfg", "job"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "name: digits" in result.stdout and "width: 512" in result.stdout


def test_atomic_writes_keep_normal_permissions(tmp_path):
    import os

    from dnc_cli.runs import write_text

    write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_parallel_sweep_jobs_share_the_cores(monkeypatch):
    import os

    from omegaconf import OmegaConf

    from dnc_cli.train import share_cores

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
