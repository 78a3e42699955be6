"""dnc_cli/analyze/sweeps.py with the launchers: `dnc train -m` (basic, joblib and submitit_local), the sweep's
`dnc analyze` tables (runs.csv, the combined metrics, mean ± std over seeds, failures listed) and `dnc plot`'s sweep
figures, resuming sweep jobs, and the expansion of multirun.yaml."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli

from dnc_cli import cli
from dnc_cli.analyze import sweeps
from dnc_cli.plot.sweep import plot_sweep

# a sweep as small as it gets: 2 seeds x 3 epochs of a width-16 MLP on 100 digits
SMALL = ["model.width=16", "model.depth=2", "dataset.n_train=100", "dataset.n_test=50", "epochs=3",
         "checkpoints.schedule=every", "checkpoints.every=1", "progress=false"]


FAST_ANALYSIS = ["families=[nc,svd]", "gram_samples_per_class=5"]


FAST_PLOT = ["formats=[png]", "dpi=40"]


def has_plugin(name: str) -> bool:
    return importlib.util.find_spec(f"hydra_plugins.{name}") is not None


needs_joblib = pytest.mark.skipif(not has_plugin("hydra_joblib_launcher"),
                                  reason="hydra-joblib-launcher not installed (pip install -e '.[sweeps]')")


needs_submitit = pytest.mark.skipif(not has_plugin("hydra_submitit_launcher"),
                                    reason="hydra-submitit-launcher not installed (pip install -e '.[sweeps]')")


def train_sweep(root: Path, *extra: str) -> Path:
    result = run_cli("train", "-m", "seed=0,1", *SMALL, f"hydra.sweep.dir={root / 'sweep'}", *extra, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "sweep"


def check_sweep_tables(sweep_dir: Path, seeds=(0, 1)) -> pd.DataFrame:
    runs = pd.read_csv(sweep_dir / "analysis/runs.csv")
    assert len(runs) == len(seeds) and sorted(runs.seed) == list(seeds)
    assert set(runs.status) == {"done"} and runs.nc1_trace.notna().all()
    metrics = pd.read_csv(sweep_dir / "analysis/metrics.csv", keep_default_na=False)
    assert list(metrics.columns[:2]) == ["run", "seed"] and set(metrics.seed) == set(seeds)
    aggregated = pd.read_csv(sweep_dir / "analysis/aggregated.csv")
    assert len(aggregated) == 1 and aggregated.loc[0, "n_runs"] == len(seeds)
    assert {"nc1_trace_mean", "nc1_trace_std", "test_acc_mean", "test_acc_std"} <= set(aggregated.columns)
    curves = pd.read_csv(sweep_dir / "analysis/aggregated_metrics.csv", keep_default_na=False)
    assert {"mean", "std", "n", "n_runs"} <= set(curves.columns) and set(curves.n) == {len(seeds)}
    # the mean over seeds is the mean of the runs' values
    one = metrics[(metrics.metric == "nc1_trace") & (metrics.split == "train") & (metrics.stage == "")
                  & (metrics.layer == 2) & (metrics.epoch == 3)]
    row = curves[(curves.metric == "nc1_trace") & (curves.split == "train") & (curves.stage == "")
                 & (curves.layer == 2) & (curves.epoch == 3)]
    assert row["mean"].item() == pytest.approx(one.value.astype(float).mean(), rel=1e-6)
    assert row["std"].item() == pytest.approx(one.value.astype(float).std(ddof=1), rel=1e-6)
    return runs


@pytest.fixture(scope="module")
def analysed_sweep(tmp_path_factory):
    """`dnc train -m seed=0,1` (basic launcher, a subprocess) then `dnc analyze` on the sweep folder (in-process:
    the same dispatcher and Hydra app, without a second torch start-up)."""
    root = tmp_path_factory.mktemp("basic")
    sweep_dir = train_sweep(root)
    dnc("analyze", f"run_dir={sweep_dir}", *FAST_ANALYSIS)
    return sweep_dir


def dnc(*args: str) -> None:
    """`dnc <args>` in this process; a non-zero exit fails the test."""
    try:
        cli.main(list(args))
    except SystemExit as exit_:
        assert exit_.code in (0, None), f"dnc {' '.join(args)} exited with {exit_.code}"


@pytest.mark.slow
def test_basic_sweep_analyze_and_plot(analysed_sweep, tmp_path):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(analysed_sweep, sweep_dir)
    assert (sweep_dir / "multirun.yaml").is_file()
    assert sorted(p.name for p in sweep_dir.iterdir() if (p / "config_resolved.yaml").exists()) == ["0", "1"]
    check_sweep_tables(sweep_dir)
    assert "Runs not done or with problems: 0" in (sweep_dir / "analysis/sweep_table.md").read_text()
    dnc("plot", f"run_dir={sweep_dir}", *FAST_PLOT)
    for name in ("nc_metrics", "svd_nc1", "layers", "training"):  # only seeds vary: straight into figures/
        assert (sweep_dir / "figures" / f"{name}.png").is_file(), name
    assert (sweep_dir / "0/figures/nc_metrics.png").is_file()  # and every run's own figures


@pytest.mark.slow
def test_relaunched_sweep_resumes_its_runs(analysed_sweep, tmp_path, monkeypatch):
    """The same sweep launched again into the same folder continues each run from last.pt (what a SLURM
    requeue does too): no refusal, no restart; epochs may grow."""
    shutil.copytree(analysed_sweep, tmp_path / "sweep")
    before = (tmp_path / "sweep/0/train_log.csv").read_text()
    monkeypatch.chdir(tmp_path)
    dnc("train", "-m", "seed=0,1", *SMALL, "hydra.sweep.dir=sweep", "epochs=4")
    for job in ("0", "1"):
        log = pd.read_csv(tmp_path / "sweep" / job / "train_log.csv")
        assert list(log.epoch) == [0, 1, 2, 3, 4]
        assert json.loads((tmp_path / "sweep" / job / "summary.json").read_text())["status"] == "done"
    assert (tmp_path / "sweep/0/train_log.csv").read_text().startswith(before)
    assert "resume=" in (tmp_path / "sweep/0/.hydra/overrides.yaml").read_text()
    # resume is bookkeeping, never a swept parameter
    runs_df, _, keys = sweeps.collect(tmp_path / "sweep", [tmp_path / "sweep/0", tmp_path / "sweep/1"])
    assert keys == ["seed"]


@pytest.mark.slow
def test_failed_and_unfinished_runs_are_listed(analysed_sweep, tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(analysed_sweep, sweep_dir)
    # run 1 diverged; a third job (seed 2) started but never wrote its config; a fourth (seed 3) never started
    summary = sweep_dir / "1/summary.json"
    summary.write_text(json.dumps(json.loads(summary.read_text()) | {"status": "failed", "error": "diverged"}))
    stub = sweep_dir / "2/.hydra"
    stub.mkdir(parents=True)
    (stub / "overrides.yaml").write_text((sweep_dir / "0/.hydra/overrides.yaml").read_text()
                                         .replace("seed=0", "seed=2"))
    multirun = sweep_dir / "multirun.yaml"
    multirun.write_text(multirun.read_text().replace("seed=0,1", "seed=0,1,2,3"))
    runs = [sweep_dir / "0", sweep_dir / "1"]
    digest = sweeps.write_sweep_tables(sweep_dir, runs, errors={})
    table = pd.read_csv(sweep_dir / "analysis/runs.csv", keep_default_na=False)
    assert dict(zip(table.seed, table.status)) == {0: "done", 1: "failed", 2: "not started", 3: "missing"}
    assert table.loc[table.seed == 1, "problem"].item() == "diverged"
    assert len(digest["not_done"]) == 3
    text = (sweep_dir / "analysis/sweep_table.md").read_text()
    assert "Runs not done or with problems: 3" in text and "failed; diverged" in text and "missing" in text
    aggregated = pd.read_csv(sweep_dir / "analysis/aggregated.csv")
    assert aggregated.loc[0, "n_runs"] == 3 and aggregated.loc[0, "n_done"] == 1  # missing jobs are not runs
    # a run without analysis is skipped by `dnc plot`, the sweep still plotted
    shutil.rmtree(sweep_dir / "1/analysis")
    sweeps.write_sweep_tables(sweep_dir, runs)
    assert "no analysis/metrics.csv" in (sweep_dir / "analysis/runs.csv").read_text()
    dnc("plot", f"run_dir={sweep_dir}", "figures=[nc_metrics]", *FAST_PLOT)
    assert "not plotted" in capsys.readouterr().out and (sweep_dir / "figures/nc_metrics.png").is_file()


@pytest.mark.slow
def test_comparison_figure_per_swept_parameter(analysed_sweep, tmp_path):
    """Two sweeps' runs side by side, one with label noise: a comparison figure and per-value band figures."""
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(analysed_sweep, sweep_dir)
    for job, fraction in (("0", "0.0"), ("1", "0.5")):  # pretend the sweep was seed x random_fraction
        path = sweep_dir / job / ".hydra/overrides.yaml"
        path.write_text(path.read_text() + f"- dataset.labels.random_fraction={fraction}\n")
    sweeps.write_sweep_tables(sweep_dir, [sweep_dir / "0", sweep_dir / "1"])
    runs = pd.read_csv(sweep_dir / "analysis/runs.csv")
    assert list(runs.columns[1:3]) == ["seed", "dataset.labels.random_fraction"]
    aggregated = pd.read_csv(sweep_dir / "analysis/aggregated.csv")
    assert sorted(aggregated["dataset.labels.random_fraction"]) == [0.0, 0.5]
    written = plot_sweep(sweep_dir, figures=["compare", "nc_metrics"], formats=("png",), dpi=40)
    names = sorted(p.relative_to(sweep_dir / "figures").as_posix() for p in written)
    assert names == ["compare_random_fraction.png", "random_fraction=0.5/nc_metrics.png",
                     "random_fraction=0/nc_metrics.png"]


@pytest.mark.slow
@needs_joblib
def test_joblib_sweep(tmp_path):
    sweep_dir = train_sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    dnc("analyze", f"run_dir={sweep_dir}", "jobs=2", "families=[nc]", "gram_samples_per_class=0")  # parallel
    check_sweep_tables(sweep_dir)
    dnc("plot", f"run_dir={sweep_dir}", "figures=[nc_metrics]", *FAST_PLOT)
    assert (sweep_dir / "figures/nc_metrics.png").is_file()


@pytest.mark.slow
@needs_submitit
def test_submitit_local_sweep(tmp_path):
    sweep_dir = train_sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    assert (sweep_dir / ".submitit").is_dir()
    dnc("analyze", f"run_dir={sweep_dir}", "families=[nc]", "gram_samples_per_class=0")
    check_sweep_tables(sweep_dir)
    dnc("plot", f"run_dir={sweep_dir}", "figures=[nc_metrics]", *FAST_PLOT)
    assert (sweep_dir / "figures/nc_metrics.png").is_file()


def test_overrides_and_expected_jobs(tmp_path):
    (tmp_path / "multirun.yaml").write_text("hydra:\n  sweeper:\n    params:\n      seed: 0,1,2\n"
                                            "  overrides:\n    task:\n    - model.width=16,32\n    - epochs=3\n")
    jobs = sweeps.expected_jobs(tmp_path)
    assert len(jobs) == 6 and jobs[0] == {"seed": "0", "model.width": "16"}
    assert sweeps.parse_override("+dataset.labels.random_fraction=0.5") == ("dataset.labels.random_fraction", "0.5")
    assert sweeps.parse_override("~seed") is None
    assert [sweeps.typed(v) for v in ("1", "0.25", "adam", "null", "False")] == [1, 0.25, "adam", None, False]

