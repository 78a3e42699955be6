"""dnc_cli/analyze/jobs.py: `dnc analyze run_dir=<sweep> hydra/launcher=<launcher>` analyses every run as its own job
(Hydra's submitit_local launcher standing in for SLURM), then writes the sweep tables; a failed job is listed, the
final step `tables_only=true` and a relaunch finish the sweep, with the tables of `jobs=1`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from hydra.core.override_parser.overrides_parser import OverridesParser
from test_analyze_sweeps import FAST_ANALYSIS, dnc, needs_submitit, train_sweep

from dnc_cli import cli
from dnc_cli.analyze import jobs
from dnc_cli.config import ModelConfig
from dnc_cli.models.networks import build_model

TABLES = ["analysis/runs.csv", "analysis/metrics.csv", "analysis/aggregated.csv", "analysis/aggregated_metrics.csv",
          "analysis/sweep_table.md"] + [f"{job}/analysis/{name}" for job in ("0", "1")
                                        for name in ("metrics.csv", "nc_table.md", "settings.json")]
LAUNCHER = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]


def test_requested_launcher():
    assert jobs.requested_launcher(["run_dir=x", "hydra/launcher=slurm"], ["run_dir=x", "hydra/launcher=slurm"]) \
        == "slurm"
    assert jobs.requested_launcher(["hydra/launcher=basic"], ["hydra/launcher=basic"]) is None
    assert jobs.requested_launcher(["run_dir=x"], ["run_dir=x"]) is None
    # -m (the user's own multirun) and --cfg are Hydra's to handle
    assert jobs.requested_launcher(["-m", "hydra/launcher=slurm"], ["hydra/launcher=slurm"]) is None
    assert jobs.requested_launcher(["hydra/launcher=slurm", "--cfg", "job"], ["hydra/launcher=slurm"]) is None


def test_job_arguments_keep_odd_paths_whole(tmp_path):
    runs = [tmp_path / "a,b" / "0", tmp_path / "it's here" / "1", tmp_path / "x=y"]
    arguments = jobs.job_arguments(["run_dir=old", "families=[nc]", "hydra/launcher=slurm"], runs, tmp_path)
    assert arguments[:3] == ["-m", "families=[nc]", "hydra/launcher=slurm"]
    parsed = {o.key_or_group: o for o in OverridesParser.create().parse_overrides(arguments[3:])}
    values = [OverridesParser.create().parse_override(f"run_dir={v}").value()
              for v in parsed["run_dir"].sweep_string_iterator()]
    assert values == [str(run) for run in runs]
    assert parsed["hydra.sweep.dir"].value() == str(tmp_path / ".hydra" / "analyze")


def test_unanalysed_reads_the_runs_files(tmp_path, tiny_run):
    assert jobs.unanalysed(tiny_run, None) == [0, 2, 4, 6]
    dnc("analyze", f"run_dir={tiny_run}", "epochs=[0,2]", "families=[nc]", "gram_samples_per_class=0")
    assert jobs.unanalysed(tiny_run, None) == [4, 6]
    assert jobs.unanalysed(tiny_run, [0, 2]) == []
    assert jobs.unanalysed_errors([tiny_run], [0, 2], tmp_path) == {}
    assert "checkpoint(s) 4, 6 not analysed" in jobs.unanalysed_errors([tiny_run], None, tmp_path)[tiny_run]
    # a run that cannot be analysed at all is listed with the reason
    assert "no such checkpoint" in jobs.unanalysed_errors([tiny_run], [5], tmp_path)[tiny_run]


def same_tables(one: Path, two: Path) -> None:
    for name in TABLES:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


@pytest.fixture(scope="module")
def sweep_and_reference(tmp_path_factory):
    """A trained sweep of 2 runs, and a copy analysed by `dnc analyze jobs=1` (the reference tables), in a subprocess
    as the jobs are: with the jobs' torch threads, so that the float32 sums come out bit for bit the same."""
    root = tmp_path_factory.mktemp("jobs")
    sweep = train_sweep(root)
    shutil.copytree(sweep, root / "reference")
    result = run_cli("analyze", f"run_dir={root / 'reference'}", "jobs=1", *FAST_ANALYSIS, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep, root / "reference"


@pytest.mark.slow
@needs_submitit
def test_a_job_per_run_gives_the_tables_of_jobs_1(sweep_and_reference, tmp_path, capsys):
    sweep, reference = sweep_and_reference
    shutil.copytree(sweep, tmp_path / "sweep")
    dnc("analyze", f"run_dir={tmp_path / 'sweep'}", *LAUNCHER, *FAST_ANALYSIS)
    assert "runs.csv: 2 runs, 2 done" in capsys.readouterr().out
    same_tables(reference, tmp_path / "sweep")
    launched = tmp_path / "sweep/.hydra/analyze"
    assert (launched / "multirun.yaml").is_file() and len(list((launched / ".submitit").glob("*/*_log.out"))) == 2
    assert (tmp_path / "sweep/multirun.yaml").read_bytes() == (sweep / "multirun.yaml").read_bytes()  # untouched


@pytest.mark.slow
@needs_submitit
def test_failed_jobs_are_listed_and_a_rerun_finishes(sweep_and_reference, tmp_path):
    sweep, reference = sweep_and_reference
    shutil.copytree(sweep, tmp_path / "sweep")
    sweep = tmp_path / "sweep"
    good = (sweep / "1/checkpoints/epoch_000002.pt").read_bytes()
    wrong = build_model(ModelConfig(depth=2, width=48), (1, 8, 8), 10)  # run 1's job skips epoch 2
    torch.save({"model": wrong.state_dict(), "epoch": 2}, sweep / "1/checkpoints/epoch_000002.pt")
    with pytest.raises(SystemExit) as failed:
        cli.main(["analyze", f"run_dir={sweep}", *LAUNCHER, *FAST_ANALYSIS])
    assert failed.value.code == 2
    runs = (sweep / "analysis/runs.csv").read_text()
    assert "checkpoint(s) 2 not analysed" in runs and ".hydra/analyze/.submitit" in runs
    assert (sweep / "0/analysis/metrics.csv").read_bytes() == (reference / "0/analysis/metrics.csv").read_bytes()

    # the final step alone, after fixing the run: still lacking, so still listed, nothing analysed
    (sweep / "1/checkpoints/epoch_000002.pt").write_bytes(good)
    with pytest.raises(SystemExit):
        cli.main(["analyze", f"run_dir={sweep}", "tables_only=true", *FAST_ANALYSIS])
    assert "checkpoint(s) 2 not analysed" in (sweep / "analysis/runs.csv").read_text()
    # the same launch again: only what is missing is analysed, and the tables are those of jobs=1
    dnc("analyze", f"run_dir={sweep}", *LAUNCHER, *FAST_ANALYSIS)
    same_tables(reference, sweep)
    dnc("analyze", f"run_dir={sweep}", "tables_only=true", *FAST_ANALYSIS)
    same_tables(reference, sweep)
