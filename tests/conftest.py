"""Shared test helpers: compose configs exactly as the CLI does, run the CLI in a subprocess, tiny runs and data.

Tests are grouped like the package: test_<package>_<topic>.py (test_metrics_collapse.py for
dnc_cli/metrics/collapse.py, ...). Tests marked `slow` start subprocesses, build wheels or train beyond a few
seconds: `pytest -m "not slow"` skips them, `make test` runs everything.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# 2 threads (2 pytest-xdist workers share the 2 cores), unless OMP_NUM_THREADS asks for another count: the suite
# must pass with any (issue #21: `OMP_NUM_THREADS=1 make test`)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))
REPO = Path(__file__).resolve().parents[1]


def compose(command: str, overrides: list[str], hydra: bool = False):
    """The command's config as Hydra composes it (return_hydra_config: with the `hydra` node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("dnc_cli.conf", version_base="1.3"):
        return hydra_compose(config_name=command, overrides=overrides, return_hydra_config=hydra)


def composed(command: str, overrides: list[str]) -> dict:
    """The job config of `dnc <command> <overrides> --cfg job`, resolved, as plain data."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose(command, overrides), resolve=True, enum_to_str=True)


# the per-dataset RFF scale of the official Deep RFM job script: the key the preset merge added to every train config
RFF_GAMMA = {"cifar10": 0.1, "svhn": 0.1}


def pop_rff_gamma(config: dict) -> None:
    """Drop (and check) dataset.rff_gamma from a composed train config, to compare it with one from before."""
    dataset = config["dataset"]
    assert dataset.pop("rff_gamma") == RFF_GAMMA.get(dataset["name"], 0.05), dataset["name"]


def train_config(overrides: list[str]):
    """A TrainConfig from Hydra overrides (validated, as `dnc train` does)."""
    from dnc_cli.train.command import check

    return check(compose("train", ["progress=false", *overrides]))


# small and fast, but the same code paths as the defaults
TINY = ["model.width=32", "model.depth=3", "epochs=4", "dataset.n_train=200", "dataset.n_test=100"]


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m dnc_cli <args>` in a subprocess (what the `dnc` script runs)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "dnc_cli", *args], cwd=cwd, capture_output=True, text=True,
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
    from dnc_cli.train.command import run

    cfg = train_config(TINY + ["epochs=6", "checkpoints.schedule=every", "checkpoints.every=2"])
    run_dir = tmp_path / "run"
    run(cfg, run_dir)
    return run_dir


def write_fake_mnist(root: Path, n_train=60, n_test=30):
    """A tiny MNIST in torchvision's raw layout (<root>/MNIST/raw/), so the real reader runs without the data."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (torch.arange(n) % 10).to(torch.uint8)
        images = (torch.rand(n, 28, 28, generator=g) * 60 + labels.view(-1, 1, 1) * 19).to(torch.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28)
                                                          + images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.numpy().tobytes())


def random_orthogonal(dim, seed):
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@pytest.fixture
def random_net_and_data():
    """A float64 2-layer width-9 MLP at xavier gain 1 on a 4-class, 6-d Gaussian mixture (120 + 30 samples)."""
    from dnc_cli.config import DatasetConfig, DatasetName, ModelConfig
    from dnc_cli.data import load_dataset
    from dnc_cli.models.networks import build_model

    torch.manual_seed(0)
    data = load_dataset(DatasetConfig(name=DatasetName.synthetic, num_classes=4, dim=6, n_available=120,
                                      separation=2.0), seed=0)
    data.train.x, data.test.x = data.train.x.double(), data.test.x.double()
    model = build_model(ModelConfig(depth=2, width=9, init_gain=1.0), (1, 1, 6), 4).double().eval()
    return model, data


def naive_jacobians(model, h0, wrt: str):
    """Per layer, the per-sample Jacobians (N x K x m) of the K outputs w.r.t. the layer's input h_{l-1}
    (wrt="input") or its pre-activation W_l h_{l-1} (wrt="preact"), by autograd."""
    jacobians = []
    for start in range(len(model.layers)):
        def subnet(v, start=start):
            h = model.act(v) if wrt == "preact" else model.act(model.layers[start](v))
            for layer in model.layers[start + 1:]:
                h = model.act(layer(h))
            return model.classifier(h)

        with torch.no_grad():
            h = h0
            for layer in model.layers[:start]:
                h = model.act(layer(h))
            v = model.layers[start](h) if wrt == "preact" else h
        jacobians.append(torch.stack([torch.autograd.functional.jacobian(subnet, vi) for vi in v]))
    return jacobians


def naive_agops(model, h0):
    """Every layer's AGOP from the per-sample autograd Jacobians w.r.t. its input: (1/N) Σ_i J_iᵀ J_i."""
    return [torch.einsum("nkd,nke->de", jac, jac) / len(h0) for jac in naive_jacobians(model, h0, "input")]
