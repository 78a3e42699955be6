"""dnc_cli/measure/command.py, loading.py and outputs.py: `dnc measure` writes the run layout that `dnc plot` and
`dnc report` read (and `dnc analyze` leaves alone), bad input is one line and exit 2, and the README's example runs
offline."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_usage_error, run_cli
from test_measure_features import write_embeddings
from torch import nn

from dnc_cli.errors import UsageError


def test_weights_that_do_not_fit_the_model(tmp_path):
    from dnc_cli.measure.loading import load_weights

    torch.save(nn.Linear(4, 3).state_dict(), tmp_path / "small.pt")
    torch.save({"model": nn.Linear(4, 2).state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    load_weights(nn.Linear(4, 2), str(tmp_path / "checkpoint.pt"), "lin")  # a dnc checkpoint's "model"
    for name, needle in (("small.pt", "does not fit model=lin: size mismatch for weight"),
                         ("text.pt", "weights_only=True refused it: Unsupported operand")):
        with pytest.raises(UsageError, match=re.escape(needle)):
            load_weights(nn.Linear(4, 2), str(tmp_path / name), "lin")


# ------------------------------------------------------------------------------------ the run layout
def _measure_into(out_dir, features, epoch: int, **changes) -> pd.DataFrame:
    """`dnc measure features=<features> epoch=<epoch> out_dir=<out_dir>` in process; the table written."""
    from dnc_cli.config import MeasureConfig
    from dnc_cli.measure.command import measure_features
    from dnc_cli.measure.outputs import write_outputs
    from dnc_cli.tables import read_run_metrics

    mcfg = MeasureConfig(out_dir=str(out_dir), features=str(features), epoch=epoch, **changes)
    write_outputs(out_dir, mcfg, *measure_features(mcfg))
    return read_run_metrics(out_dir)


def test_another_epoch_adds_to_the_table_and_other_options_replace_it(tmp_path, caplog):
    from dnc_cli.config import NC1Options

    write_embeddings(tmp_path)
    out = tmp_path / "out"
    _measure_into(out, tmp_path / "emb.npz", 0)
    assert set(_measure_into(out, tmp_path / "emb.pt", 5).epoch) == {0, 5}  # another checkpoint's embeddings
    assert set(_measure_into(out, tmp_path / "emb.pt", 5).epoch) == {0, 5}  # the same epoch again: replaced
    with caplog.at_level("WARNING", logger="dnc.measure"):
        official = _measure_into(out, tmp_path / "emb.npz", 7, nc1=NC1Options(official_scaling=True))
    assert set(official.epoch) == {7} and "other nc1; its table is replaced" in caplog.text  # no mixed scalings
    assert [p.name for p in (out / "analysis").glob("gram_epoch_*.npz")] == ["gram_epoch_000007_train.npz"]


def test_analyze_leaves_measured_folders_alone(tmp_path):
    from dnc_cli.runs import find_runs_and_sweeps

    write_embeddings(tmp_path)
    _measure_into(tmp_path / "parent" / "measured", tmp_path / "emb.npz", 0)
    _measure_into(tmp_path / "parent" / "measured_too", tmp_path / "emb.pt", 0)
    assert find_runs_and_sweeps(tmp_path / "parent") == ([tmp_path / "parent" / "measured",
                                                          tmp_path / "parent" / "measured_too"], [])  # no sweep
    trained = tmp_path / "parent" / "trained"
    trained.mkdir()
    (trained / "config_resolved.yaml").write_text("{}\n")
    assert find_runs_and_sweeps(tmp_path / "parent")[0] == [tmp_path / "parent" / "measured",
                                                            tmp_path / "parent" / "measured_too", trained]  # plot's
    assert find_runs_and_sweeps(tmp_path / "parent", skip_measured=True) == ([trained], [])  # analyze's view
    with pytest.raises(UsageError, match="holds only `dnc measure` output"):
        find_runs_and_sweeps(tmp_path / "parent" / "measured", skip_measured=True)


# ------------------------------------------------------------------------------------ the command
TINY_DIGITS = ["dataset.n_train=100", "dataset.n_test=50", "progress=false"]


@pytest.mark.slow
def test_command_writes_the_run_layout_that_plot_and_report_read(tmp_path):
    out = tmp_path / "resnet"
    args = ["measure", "model=resnet18", "layers=[layer3,layer4,fc]", f"out_dir={out}", *TINY_DIGITS]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(out / "analysis" / "metrics.csv", keep_default_na=False)
    assert set(table.columns) == {"epoch", "split", "layer", "stage", "metric", "value"}
    assert set(table.layer) == {1, 2, 3} and set(table.split) == {"train", "test"} and set(table.epoch) == {0}
    assert {"nfa_corr_0.5", "nc3", "nc4"} <= set(table.metric)
    assert pd.read_csv(out / "analysis" / "layers.csv").module.tolist() == ["layer3", "layer4", "fc"]
    # another checkpoint into the same out_dir adds its epoch to the table
    result = run_cli(*args, "epoch=5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert set(pd.read_csv(out / "analysis" / "metrics.csv").epoch) == {0, 5}
    plotted = run_cli("plot", f"run_dir={out}", "formats=[png]", cwd=tmp_path)
    assert plotted.returncode == 0, plotted.stderr[-2000:]
    assert {p.stem for p in (out / "figures").glob("*.png")} == {"nc_metrics", "svd_nc1", "nfa", "layers", "gram"}
    assert "no train_log.csv" in plotted.stdout + plotted.stderr  # the one figure that does not apply, with a warning
    reported = run_cli("report", f"run_dir={out}", cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr[-2000:]
    assert (out / "report.md").is_file()
    assert_usage_error(run_cli("analyze", f"run_dir={out}", cwd=tmp_path), "only `dnc measure` output")


@pytest.mark.slow
def test_command_on_an_embeddings_file(tmp_path):
    write_embeddings(tmp_path)
    result = run_cli("measure", f"features={tmp_path / 'emb.parquet'}", f"out_dir={tmp_path / 'emb'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(tmp_path / "emb" / "analysis" / "metrics.csv", keep_default_na=False)
    assert set(table.split) == {"train", "test"} and set(table.layer) == {1}
    assert (tmp_path / "emb" / "analysis" / "gram_epoch_000000_train.npz").is_file()


FACTORY = '''
import torch
from torch import nn

class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 6, batch_first=True)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        out, _ = self.rnn(x.reshape(len(x), 8, 8))
        return self.fc(out[:, -1])
'''


@pytest.mark.slow
def test_command_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "factories.py").write_text(FACTORY)
    write_embeddings(tmp_path)
    np.savez(tmp_path / "unlabelled.npz", embeddings=np.ones((10, 3)))
    np.savez(tmp_path / "short.npz", embeddings=np.ones((10, 3)), labels=np.arange(7) % 2)
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "rgb_resnet.pt")
    out = f"out_dir={tmp_path / 'out'}"
    cases = [
        (["model=resnet18", "layers=[layer5]"], "layer 'layer5' matches no module of the model; close matches"),
        (["model=factories:Recurrent", "layers=[rnn]"], "layer 'rnn' outputs a tuple, not a tensor"),
        ([f"features={tmp_path / 'unlabelled.npz'}"], "has no labels"),
        ([f"features={tmp_path / 'short.npz'}"], "features has 10 rows but labels has 7"),
        (["model=resnet18", f"weights={tmp_path / 'rgb_resnet.pt'}"], "does not fit model=resnet18"),
        (["model=resnet18", "num_classes=5"], "labels range over [0, 9] but num_classes=5"),
        (["model=resnet19"], "close matches: resnet18"),
        (["model=resnet18", "agop_probes=many"], "agop_probes='many' must be auto, exact or a positive integer"),
        ([], "give model="),
    ]
    for args, needle in cases:
        assert_usage_error(run_cli("measure", *args, out, *TINY_DIGITS, cwd=tmp_path), needle)


@pytest.mark.slow
def test_readme_example_runs_offline(tmp_path):
    """README, "Measure your own model": the bash block (ResNet-18 on the digits, then embeddings the example writes
    itself) and the Python block, run as written from a folder that holds the venv, like a fresh clone."""
    import subprocess
    import sys
    from pathlib import Path

    section = (Path(__file__).resolve().parents[1] / "README.md").read_text().split("## Measure your own model")[1]
    section = section.split("\n## ")[0]
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # the venv this test runs in
    result = subprocess.run(["bash", "-e", "-c", bash], cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    for run, figures in (("resnet18_digits", {"layers", "nc_metrics", "svd_nc1", "nfa", "gram"}),
                         ("digits_embeddings", {"layers", "nc_metrics", "gram"})):
        assert (tmp_path / "runs" / run / "analysis" / "metrics.csv").is_file()
        assert {p.stem for p in (tmp_path / "runs" / run / "figures").glob("*.png")} == figures
    assert "| 5 | `fc` |" in result.stdout  # the nc_table.md the example prints
    result = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(name in result.stdout for name in ("layer1", "layer4", "fc"))


# ------------------------------------------------------------------------------------ --help and hydra.run.dir
def _measure_help(capsys, *overrides: str) -> tuple[str, dict]:
    """`dnc measure [overrides] --help` in this process: its text, and the config it prints."""
    import yaml

    from dnc_cli import cli

    cli.main(["measure", *overrides, "--help"])
    text = capsys.readouterr().out
    return text, yaml.safe_load(text.split(" reads) ==\n", 1)[1])


def test_help_lists_only_the_dataset_group(capsys):
    text, _ = _measure_help(capsys)
    groups = text.split("== Configuration groups ==\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert groups == ["dataset: cifar10, digits, fashion_mnist, mnist, svhn, synthetic"]
    for train_group in ("ablation", "experiment", "optimizer", "sweep", "model:"):
        assert f"\n{train_group}" not in text.split("== Config (", 1)[0], train_group


@pytest.mark.parametrize("dataset, shown, hidden", [
    ("digits", set(), {"dim", "separation", "n_available", "num_classes", "rff_gamma", "root", "download"}),
    ("synthetic", {"dim", "separation", "n_available", "num_classes"}, {"rff_gamma", "root", "download"}),
    ("mnist", {"root", "download"}, {"dim", "separation", "n_available", "num_classes", "rff_gamma"}),
    ("cifar10", {"root", "download"}, {"dim", "rff_gamma"}),
])
def test_help_shows_the_dataset_keys_its_kind_reads(capsys, dataset, shown, hidden):
    from dnc_cli.data import COMMON_KEYS

    _, config = _measure_help(capsys, f"dataset={dataset}")
    assert config["dataset"]["name"] == dataset
    assert set(config["dataset"]) == set(COMMON_KEYS) | shown and not set(config["dataset"]) & hidden
    assert config["families"] == ["nc", "svd", "nfa", "geometry"] and "out_dir" in config


def test_every_dataset_key_is_read_by_some_kind():
    """The per-kind key lists cover the schema (rff_gamma aside: the Deep RFM preset's, read by no loader)."""
    from dnc_cli.config import DatasetConfig, DatasetName, to_plain
    from dnc_cli.data import keys_read

    read = {key for name in DatasetName for key in keys_read(name)}
    assert read | {"rff_gamma"} == set(to_plain(DatasetConfig()))


def test_help_with_a_bad_dataset_is_one_line(capsys):
    from dnc_cli import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["measure", "dataset=nope", "--help"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("dnc measure: error: dataset=nope is not a choice; valid: cifar10, "
                                               "digits, fashion_mnist, mnist, svhn, synthetic")


def test_hydra_run_dir_is_refused_naming_out_dir(capsys, tmp_path):
    from dnc_cli import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["measure", "model=resnet18", f"hydra.run.dir={tmp_path / 'run'}", f"out_dir={tmp_path / 'out'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hydra.run.dir=" in err and "out_dir=<dir>" in err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("command, overrides, message", [
    ("train", ["dataset=mnist", "dataset.dim=64"],
     "dataset.dim=64 is not read by dataset=mnist; its keys: name, n_train, n_test, balanced, standardize, labels, "
     "root, download"),
    ("train", ["dataset.root=/data"], "dataset.root=/data is not read by dataset=digits; its keys: name, n_train, "
     "n_test, balanced, standardize, labels"),
    ("measure", ["model=resnet18", "dataset.download=true"], "dataset.download=true is not read by dataset=digits; "
     "its keys: name, n_train, n_test, balanced, standardize, labels"),
    ("measure", ["model=resnet18", "dataset=cifar10", "dataset.separation=2"], "dataset.separation=2.0 is not read "
     "by dataset=cifar10; its keys: name, n_train, n_test, balanced, standardize, labels, root, download"),
])
def test_a_dataset_key_its_kind_does_not_read_is_refused(capsys, tmp_path, command, overrides, message):
    """One schema per dataset kind, as the user sees it: a key the kind would ignore is refused in one line naming
    it and the kind's keys, before anything is written."""
    from dnc_cli import cli

    out = tmp_path / "out"
    where = f"hydra.run.dir={out}" if command == "train" else f"out_dir={out}"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, *overrides, where, "progress=false"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"dnc {command}: error: {message}"
    assert not out.exists()


def test_a_dataset_key_its_kind_reads_is_accepted():
    from dnc_cli.config import DatasetConfig, DatasetName
    from dnc_cli.data import refuse_unread_keys

    refuse_unread_keys(DatasetConfig(name=DatasetName.synthetic, dim=8, separation=2.0, n_available=50))
    refuse_unread_keys(DatasetConfig(name=DatasetName.mnist, root="/data", download=True))
    refuse_unread_keys(DatasetConfig(name=DatasetName.cifar10, rff_gamma=0.1))  # conf/dataset/cifar10.yaml sets it
    with pytest.raises(UsageError, match="dataset.num_classes=3 is not read by dataset=cifar10"):
        refuse_unread_keys(DatasetConfig(name=DatasetName.cifar10, num_classes=3))
