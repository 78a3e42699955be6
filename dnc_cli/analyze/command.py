"""`dnc analyze run_dir=<run, sweep or any parent of runs>`: every run's metrics table (dnc_cli/tables.py), then
every sweep's tables (dnc_cli/analyze/sweeps.py).

The run's kind (dnc_cli/runs.py) picks its analyser from `ANALYSERS`; each analyser module has
`analyze_run(run_dir, cfg, acfg, device) -> problems` (checkpoints skipped, as one-line messages).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from dnc_cli.analyze import deep_rfm, network
from dnc_cli.analyze.sweeps import write_sweep_tables
from dnc_cli.config import AnalyzeConfig, to_object, validate_analyze
from dnc_cli.devices import resolve_device, worker_device
from dnc_cli.errors import UsageError, fail
from dnc_cli.runs import DEEP_RFM, NETWORK, find_runs_and_sweeps, kind_of_model, read_run_config, require_run_dir

log = logging.getLogger("dnc.analyze")
ANALYSERS = {NETWORK: network, DEEP_RFM: deep_rfm}


def check(cfg: DictConfig) -> AnalyzeConfig:
    acfg = validate_analyze(to_object(cfg, AnalyzeConfig))
    require_run_dir(acfg.run_dir)
    return acfg


def analyze_run(run_dir: Path, acfg: AnalyzeConfig, device: torch.device) -> list[str]:
    """Analyse one run with its kind's analyser; returns the problems met (bad checkpoints)."""
    cfg = read_run_config(run_dir)
    return ANALYSERS[kind_of_model(cfg.model.name.value)].analyze_run(run_dir, cfg, acfg, device)


def _analyze_in_worker(run_dir: Path, acfg, device: str, threads: int) -> tuple[list[str], str | None]:
    torch.set_num_threads(threads)
    try:
        return analyze_run(Path(run_dir), acfg, resolve_device(device)), None
    except UsageError as exc:
        return [], str(exc)


def analyze_runs(runs: list[Path], acfg: AnalyzeConfig, device) -> tuple[list[str], dict[Path, str]]:
    """Analyse every run, or `acfg.jobs` at a time in worker processes (there with several GPUs, run i on GPU i mod
    #GPUs); returns (skipped-checkpoint problems, {run: error}).

    A single run keeps the one-run contract (its UsageError propagates); with several, a run that cannot be analysed
    is recorded and the others go on."""
    jobs = max(1, min(acfg.jobs, len(runs)))
    problems: list[str] = []
    errors: dict[Path, str] = {}
    if jobs == 1:
        for run_dir in runs:
            try:
                problems += analyze_run(run_dir, acfg, device)
            except UsageError as exc:
                if len(runs) == 1:
                    raise
                errors[run_dir] = str(exc)
                log.error("%s: %s", run_dir, exc)
                continue
            print(f"{run_dir}/analysis/metrics.csv", flush=True)
        return problems, errors
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # no fork after torch (and CUDA) are initialised
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(_analyze_in_worker, run_dir, acfg, worker_device(acfg.device, i), threads): run_dir
                   for i, run_dir in enumerate(runs)}
        try:
            for future, run_dir in futures.items():
                found, error = future.result()
                problems += found
                if error is not None:
                    errors[run_dir] = error
                    log.error("%s: %s", run_dir, error)
                else:
                    print(f"{run_dir}/analysis/metrics.csv", flush=True)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return problems, errors


@hydra.main(version_base="1.3", config_path="pkg://dnc_cli.conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    try:
        acfg = check(cfg)
        runs, sweeps = find_runs_and_sweeps(acfg.run_dir, skip_measured=True)
        # every run (acfg.jobs at a time); with several runs, one that cannot be analysed is listed, not fatal
        problems, errors = analyze_runs(runs, acfg, resolve_device(acfg.device))
        for sweep_dir in sweeps:
            digest = write_sweep_tables(sweep_dir, runs, errors)
            print(f"{digest['dir']}/runs.csv: {digest['runs']} runs, {digest['done']} done; swept: "
                  f"{', '.join(digest['keys']) or 'nothing'}")
            for line in digest["not_done"]:
                print(f"  not done: {line}")
    except UsageError as exc:
        fail("analyze", str(exc))
    except KeyboardInterrupt:
        print("dnc analyze: interrupted; rerun the same command to finish", file=sys.stderr)
        raise SystemExit(130) from None
    report = [f"{len(problems)} checkpoint(s) skipped: " + "; ".join(problems)] if problems else []
    if errors:
        report.append(f"{len(errors)} run(s) not analysed: " + "; ".join(f"{r}: {e}" for r, e in errors.items()))
    if report:
        fail("analyze", "; ".join(report))
