"""`dnc plot`: the paper's figures for every run under `run_dir`, from the analysis tables alone (no torch)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from dnc_cli.cli import fail
from dnc_cli.config import PlotConfig, to_object
from dnc_cli.errors import UsageError
from dnc_cli.runs import CONFIG_FILE, find_runs, require_run_dir


def check(cfg: DictConfig) -> PlotConfig:
    pcfg = to_object(cfg, PlotConfig)
    require_run_dir(pcfg.run_dir)
    return pcfg


@hydra.main(version_base="1.3", config_path="pkg://dnc_cli.conf", config_name="plot")
def main(cfg: DictConfig) -> None:
    import logging

    from dnc_cli.plot import plot_run, plot_sweep
    from dnc_cli.sweep import find_sweeps

    try:
        pcfg = check(cfg)
        runs = find_runs(Path(pcfg.run_dir))
        sweeps = find_sweeps(Path(pcfg.run_dir), runs)
        if not runs and not sweeps:
            raise UsageError(f"run_dir={pcfg.run_dir} holds no run (no {CONFIG_FILE} below it)")
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
            if not (sweep_dir / "multirun.yaml").is_file() and not (sweep_dir / "analysis/runs.csv").is_file():
                print(f"{sweep_dir}: several runs; `dnc analyze run_dir={sweep_dir}` tabulates them for the "
                      "mean ± std figures")  # a folder of separate runs, analysed one by one: nothing to add
                continue
            paths = plot_sweep(sweep_dir, **options)
            print(f"{sweep_dir}/figures/: {len(paths)} sweep files (mean ± std over seeds, comparisons)")
        if skipped:
            print(f"not plotted ({len(skipped)} run(s) without analysis): {', '.join(map(str, skipped))}")
    except UsageError as exc:
        fail("plot", str(exc))
