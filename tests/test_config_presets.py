"""conf/experiment and conf/sweep: one preset per model family (+ its _quick variant), the dataset chosen with
`dataset=`. Every preset of before the merge (tests/data/presets, one per family and dataset) composes to the same
config as its `experiment=<family> dataset=<name>` today, apart from what the merge intends; the named sweeps run the
same jobs; every preset composes through the dispatcher, and the quick variants run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, compose, composed, pop_rff_gamma, train_config, write_fake_mnist
from omegaconf import OmegaConf

from dnc_cli import cli
from dnc_cli.analyze.sweeps import expected_jobs

CONF = REPO / "conf"
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))
OLD_PRESETS = sorted((Path(__file__).parent / "data" / "presets").glob("*.yaml"))
FAMILIES = ("paper_mlp", "paper_resnet", "paper_deep_rfm", "random_labels_mlp")
DATASETS = ("mnist", "cifar10", "svhn")
# a Deep RFM's random features per layer, for model.width=null: the input dimension, as the official RFF map
INPUT_DIM = {"mnist": 784, "cifar10": 3072, "svhn": 3072}


def new_preset(old: str) -> list[str]:
    """paper_mlp_cifar10_quick -> experiment=paper_mlp_quick dataset=cifar10."""
    quick = old.endswith("_quick")
    family, dataset = old.removesuffix("_quick").rsplit("_", 1)
    return [f"experiment={family}{'_quick' if quick else ''}", f"dataset={dataset}"]


def test_one_preset_per_family_and_its_quick_variant():
    assert PRESETS == sorted([*FAMILIES, *(f"{f}_quick" for f in FAMILIES)])
    assert len(OLD_PRESETS) == 20


def intended(old: dict, new: dict) -> None:
    """The merge's intended differences, checked and removed from `new`: the dataset's rff_gamma key; a full Deep RFM
    preset's width is null (the input dimension) where the old per-dataset preset wrote the number."""
    pop_rff_gamma(new)
    if new["model"]["name"] == "deep_rfm" and new["model"]["width"] is None:
        assert old["model"]["width"] == INPUT_DIM[old["dataset"]["name"]]
        new["model"]["width"] = old["model"]["width"]


@pytest.mark.parametrize("path", OLD_PRESETS, ids=[p.stem for p in OLD_PRESETS])
def test_old_preset_composes_as_its_family_with_the_dataset(path):
    old = yaml.safe_load(path.read_text())
    new = composed("train", new_preset(path.stem))
    intended(old, new)
    assert new == old


@pytest.mark.parametrize("name", [s for s in SWEEPS if s.startswith("paper_")])
def test_named_paper_sweeps_run_the_same_jobs(name, tmp_path):
    """+sweep=paper_mlp (etc.) still runs every dataset x seeds 0, 1, 2, each job as the old per-dataset preset."""
    params = OmegaConf.to_container(compose("train", [f"+sweep={name}"], hydra=True).hydra.sweeper.params)
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"params": params}}}))
    jobs = expected_jobs(tmp_path)  # the swept keys of every job, as `dnc analyze` expands a sweep
    assert sorted((job["dataset"], job["seed"]) for job in jobs) == sorted((d, s) for d in DATASETS for s in "012")
    fixed = [f"{k}={v}" for k, v in params.items() if k not in jobs[0]]  # experiment=<family>
    for job in jobs:
        new = composed("train", [f"+sweep={name}", *fixed, *(f"{k}={v}" for k, v in job.items())])
        old = yaml.safe_load((Path(__file__).parent / "data" / "presets" / f"{name}_{job['dataset']}.yaml")
                             .read_text()) | {"seed": int(job["seed"])}
        intended(old, new)
        assert new == old, job


@pytest.mark.parametrize("name", SWEEPS)
def test_named_sweeps(name):
    cfg = compose("train", [f"+sweep={name}"], hydra=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and len(cfg.hydra.sweeper.params) >= 1
    text = (CONF / "sweep" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_")


def test_combined_sweeps():
    cfg = compose("train", ["+sweep=[seeds,label_noise]"], hydra=True)
    assert dict(cfg.hydra.sweeper.params) == {"seed": "0,1,2", "dataset.labels.random_fraction": "0.0,0.25,0.5,1.0"}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes(name, capsys):
    """`dnc train experiment=X --cfg job`, in-process: the dispatcher's check and Hydra's composition."""
    cli.main(["train", f"experiment={name}", "--cfg", "job"])
    printed = capsys.readouterr().out
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    if name.endswith("_quick"):
        assert "n_train: 200" in printed or "n_train: 100" in printed
        assert f"{name.removesuffix('_quick')}" in text
    else:
        assert "Reproduces:" in text and "Time (estimate" in text  # what it reproduces and how long it takes
        assert "n_train: 50000" in printed or "random_fraction: 1.0" in printed
        assert "name: mnist" in printed  # MNIST unless dataset= says otherwise
    model = compose("train", [f"experiment={name}"]).model.name.value
    family = name.removesuffix("_quick")
    assert model == {"paper_mlp": "mlp", "paper_resnet": "resnet18_mlp", "paper_deep_rfm": "deep_rfm",
                     "random_labels_mlp": "mlp"}[family]


@pytest.mark.slow
@pytest.mark.parametrize("name", [p for p in PRESETS if p.endswith("_quick")])
def test_quick_preset_runs(name, tmp_path):
    """The quick variants train on a tiny MNIST-format copy written here (torchvision's reader, 28x28 inputs), never
    on ../shared; the Deep RFM's on digits (its RFF map is as wide as the input: 64 features)."""
    from dnc_cli.train.command import run

    if "deep_rfm" in name:
        data = ["dataset=digits", "model.width=null"]
    else:
        write_fake_mnist(tmp_path / "data", n_train=200, n_test=100)
        data = [f"dataset.root={tmp_path / 'data'}"]
    cfg = train_config([f"experiment={name}", *data, "device=cpu"])
    # a smoke run (a Deep RFM has no epochs)
    assert (cfg.epochs <= 4 or "deep_rfm" in name) and (cfg.dataset.n_train or 0) <= 200
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "done"
