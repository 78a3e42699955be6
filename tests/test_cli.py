"""dnc_cli/cli.py: the dispatcher (help, one-line usage errors, sweeps through the check) and the resolvers every
sweep job needs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, TINY, assert_usage_error, compose, run_cli

from dnc_cli import cli
from dnc_cli.devices import job_gpu
from dnc_cli.runs import resume_here


@pytest.mark.slow
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
@pytest.mark.slow
def test_bad_input(tmp_path, overrides, needles):
    assert_usage_error(run_cli("train", *overrides, cwd=tmp_path), *needles)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_missing_dataset_and_unwritable_dir(tmp_path):
    result = run_cli("train", "dataset=mnist", f"dataset.root={tmp_path / 'nowhere'}", "dataset.download=false",
                     cwd=tmp_path)
    assert_usage_error(result, "dataset.root=", "download")
    (tmp_path / "blocker").write_text("a file, not a folder")
    result = run_cli("train", f"hydra.run.dir={tmp_path / 'blocker' / 'run'}", cwd=tmp_path)
    assert_usage_error(result, "hydra.run.dir=", "not a directory")
    assert (tmp_path / "blocker").read_text() == "a file, not a folder"


def test_sweep_overrides_pass_the_dispatcher(tmp_path, monkeypatch):
    from dnc_cli.train import command as train

    monkeypatch.chdir(tmp_path)
    # a job's number resolves in the check; -m and the +sweep presets say multirun
    assert cli._check_config("train", train, ["seed=0,1", "device=${dnc_job_gpu:}"], multirun=True) is True
    assert cli._check_config("train", train, ["+sweep=seeds"]) is True
    assert cli._check_config("train", train, ["+sweep=[seeds,label_noise]", "hydra/launcher=basic"]) is True
    for multirun in (True, False):  # a bad sweep value; a comma list without -m (tests/test_files_hostile.py)
        with pytest.raises(SystemExit) as exit_:
            cli._check_config("train", train, ["seed=0,1", "model.width=0,8"], multirun=multirun)
        assert exit_.value.code == 2


def test_job_gpu_and_resume_resolvers(tmp_path, monkeypatch):
    import torch
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cfg = compose("train", ["hydra.job.num=6", f"hydra.runtime.output_dir={tmp_path}"], hydra=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert job_gpu() == "cuda:2"
        assert resume_here() is None  # no last.pt: a fresh run
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "checkpoints/last.pt").write_bytes(b"")
        assert resume_here() == str(tmp_path)
    finally:
        HydraConfig.instance().cfg = None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert job_gpu() == "cpu"


@pytest.mark.slow
def test_without_the_plugins_launchers_fail_in_one_line(tmp_path, monkeypatch):
    """A regular `hydra_plugins` package first on the path hides the installed plugins (as if not installed)."""
    (tmp_path / "hidden/hydra_plugins").mkdir(parents=True)
    (tmp_path / "hidden/hydra_plugins/__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "hidden"))
    for launcher in ("joblib", "slurm"):
        result = run_cli("train", "-m", "seed=0,1", f"hydra/launcher={launcher}", cwd=tmp_path)
        assert_usage_error(result, f"hydra/launcher={launcher}", "pip install -e '.[sweeps]'")


@pytest.mark.slow
def test_bad_sweep_values_fail_in_one_line(tmp_path):
    assert_usage_error(run_cli("train", "+sweep=nope", cwd=tmp_path), "sweep=nope", "seeds", "label_noise")


@pytest.mark.slow
def test_every_command_is_found_by_both_entry_points(tmp_path):
    """`python -m dnc_cli` reaches every command's Hydra app (its --help; measure's --help is its own, so its Hydra
    app is reached by --hydra-help), and so does the dispatcher module itself (one command: the dispatch is the same
    code)."""
    for command in cli.COMMANDS:
        flag, expected = ("--hydra-help", "== Flags ==") if command == "measure" else ("--help", "Powered by Hydra")
        for entry in (["-m", "dnc_cli"], ["-m", "dnc_cli.cli"])[:1 if command != "train" else 2]:
            result = subprocess.run([sys.executable, *entry, command, flag], capture_output=True, text=True,
                                    cwd=tmp_path, timeout=120)
            assert result.returncode == 0 and expected in result.stdout, (entry, command, result.stderr)


@pytest.mark.slow
def test_resolvers_are_registered_by_each_command_module():
    """A launcher (joblib, submitit) unpickles a sweep job's task function in a fresh process, which imports the
    command's module and no more: that import must register every resolver the config uses."""
    for module in ("dnc_cli.train.command", "dnc_cli.analyze.command", "dnc_cli.plot.command",
                   "dnc_cli.report.command", "dnc_cli.measure.command"):
        code = (f"import {module}\nfrom omegaconf import OmegaConf\n"
                "missing = [r for r in ('dnc_run_dir', 'dnc_job_gpu', 'dnc_resume', 'dnc_hydra_record_dir')\n"
                "           if not OmegaConf.has_resolver(r)]\n"
                "assert not missing, missing\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert result.returncode == 0, (module, result.stderr[-2000:])
