"""`dnc plot run_dir=<run, sweep or any parent of runs>`: the paper's figures for every run under `run_dir`, and a
sweep's mean ± std figures, from the analysis tables alone (no torch).

Outputs: <run_dir>/figures/<name>.<png|pdf>, byte-identical for identical inputs. A run's kind (dnc_cli/runs.py)
picks its figures from the registry (dnc_cli/plot/figures.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dnc_cli.config import PlotConfig, to_object
from dnc_cli.errors import UsageError, fail
from dnc_cli.guards import require_no_link_out
from dnc_cli.plot.figures import FIGURES, RUN_FIGURES, FigureInputs, check_options
from dnc_cli.plot.style import NotDrawable, as_tpt, save
from dnc_cli.plot.sweep import plot_sweep
from dnc_cli.runs import (
    ANALYSIS_DIR,
    FIGURES_DIR,
    MULTIRUN_FILE,
    find_runs_and_sweeps,
    read_summary,
    require_run_dir,
    run_kind,
    staged_files,
)
from dnc_cli.tables import RUNS_TABLE, read_run_metrics, read_train_log

log = logging.getLogger("dnc_cli.plot")


def plot_run(run_dir: Path, figures: list[str] | None = None, nc1_form: str = "nc1_trace",
             split: str = "train", formats: tuple[str, ...] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Draw `figures` (default: all that apply to the run's kind) into <run_dir>/figures; return the files.

    Figures whose data is absent (a skipped metric family, no gram npz, no train log) or that belong to the
    other kind of run (network vs deep_rfm) are skipped with a one-line warning.
    Bad options (unknown figure, nc1_form, split or format; no analysis yet) raise UsageError.
    """
    run_dir = Path(run_dir)
    formats = tuple(formats)
    check_options(figures, nc1_form, formats, dpi)
    metrics = read_run_metrics(run_dir)
    splits = sorted(metrics["split"].unique())
    if split not in splits:
        raise UsageError(f"split={split} is not in {run_dir}/analysis/metrics.csv "
                         f"(it has: {', '.join(splits)})")
    summary = read_summary(run_dir)
    kind = run_kind(summary, metrics=metrics)
    inputs = FigureInputs(metrics, as_tpt(summary.get("tpt_epoch")), nc1_form, split, kind,
                          train_log=read_train_log(run_dir), run_dir=run_dir)
    applicable = RUN_FIGURES[kind]
    written: list[Path] = []
    require_no_link_out(run_dir, [FIGURES_DIR])
    with staged_files() as stage:  # the run's figure set is replaced whole, or not at all
        for name in figures if figures is not None else applicable:
            if name not in applicable:
                log.warning("skipping figure %s: not drawn for %s runs like %s (those get: %s)",
                            name, kind, run_dir, ", ".join(applicable))
                continue
            try:
                fig = FIGURES[name](inputs)
            except NotDrawable as reason:
                log.warning("skipping figure %s for %s: %s", name, run_dir, reason)
                continue
            written += save(fig, run_dir / FIGURES_DIR / name, formats, dpi, stage)
    return written


def check(cfg: DictConfig) -> PlotConfig:
    pcfg = to_object(cfg, PlotConfig)
    check_options(pcfg.figures, pcfg.nc1_form, tuple(pcfg.formats), pcfg.dpi)  # before any run is read
    require_run_dir(pcfg.run_dir)
    return pcfg


@hydra.main(version_base="1.3", config_path="pkg://dnc_cli.conf", config_name="plot")
def main(cfg: DictConfig) -> None:
    try:
        pcfg = check(cfg)
        runs, sweeps = find_runs_and_sweeps(pcfg.run_dir)
        options = dict(figures=pcfg.figures, nc1_form=pcfg.nc1_form, split=pcfg.split, formats=tuple(pcfg.formats),
                       dpi=pcfg.dpi)
        skipped = []
        for run_dir in runs:
            try:
                paths = plot_run(run_dir, **options)
            except UsageError as exc:  # several runs (a sweep): a run without analysis is listed, not fatal
                if len(runs) == 1 or len(skipped) + 1 == len(runs):
                    raise
                skipped.append(run_dir)
                logging.getLogger("dnc.plot").warning("skipping %s: %s", run_dir, exc)
                continue
            print(f"{run_dir}/figures/: {len(paths)} files")
        for sweep_dir in sweeps:
            if not (sweep_dir / MULTIRUN_FILE).is_file() and not (sweep_dir / ANALYSIS_DIR / RUNS_TABLE).is_file():
                print(f"{sweep_dir}: several runs; `dnc analyze run_dir={sweep_dir}` tabulates them for the "
                      "mean ± std figures")  # a folder of separate runs, analysed one by one: nothing to add
                continue
            paths = plot_sweep(sweep_dir, **options)
            print(f"{sweep_dir}/figures/: {len(paths)} sweep files (mean ± std over seeds, comparisons)")
        if skipped:
            print(f"not plotted ({len(skipped)} run(s) without analysis): {', '.join(map(str, skipped))}")
    except UsageError as exc:
        fail("plot", str(exc))
    except KeyboardInterrupt:  # staged files are discarded: every file as it was
        print("dnc plot: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
