"""`dnc plot`: the paper's figures for every run under `run_dir`, from the analysis tables alone (no torch)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from dnc_cli.cli import fail
from dnc_cli.config import PlotConfig, to_object
from dnc_cli.errors import UsageError
from dnc_cli.runs import CONFIG_FILE, find_runs


def check(cfg: DictConfig) -> PlotConfig:
    pcfg = to_object(cfg, PlotConfig)
    if not Path(pcfg.run_dir).exists():
        raise UsageError(f"run_dir={pcfg.run_dir} does not exist")
    return pcfg


@hydra.main(version_base="1.3", config_path="pkg://dnc_cli.conf", config_name="plot")
def main(cfg: DictConfig) -> None:
    from dnc_cli.plot import plot_run

    try:
        pcfg = check(cfg)
        runs = find_runs(Path(pcfg.run_dir))
        if not runs:
            raise UsageError(f"run_dir={pcfg.run_dir} holds no run (no {CONFIG_FILE} below it)")
        for run_dir in runs:
            paths = plot_run(run_dir, figures=pcfg.figures, nc1_form=pcfg.nc1_form, split=pcfg.split,
                             formats=tuple(pcfg.formats), dpi=pcfg.dpi)
            print(f"{run_dir}/figures/: {len(paths)} files")
    except UsageError as exc:
        fail("plot", str(exc))
