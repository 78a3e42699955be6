"""`dnc analyze run_dir=<run, sweep or any parent of runs>`: every run's metrics table (dnc_cli/tables.py), then
every sweep's tables (dnc_cli/analyze/sweeps.py).

The run's kind (dnc_cli/runs.py) picks its analyser from `ANALYSERS`; each analyser module has
`analyze_run(run_dir, cfg, acfg, device) -> problems` (checkpoints skipped, as one-line messages).

Scaling out (README, "Scaling out"): under `torchrun` every rank runs this command on its shard of each split and
rank 0 writes (dnc_cli/distributed.py); with a Hydra launcher (`hydra/launcher=slurm`) every run is its own job and
this process writes the sweep tables after them (`launch`, dnc_cli/analyze/jobs.py).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from dnc_cli.analyze import deep_rfm, jobs, network
from dnc_cli.analyze.sweeps import write_sweep_tables
from dnc_cli.config import AnalyzeConfig, to_object, to_plain, validate_analyze
from dnc_cli.devices import resolve_device, worker_device
from dnc_cli.distributed import GroupBroken, is_writer, launched_as_ranks, process_group, require_agreement
from dnc_cli.errors import UsageError, fail
from dnc_cli.guards import require_no_link_out
from dnc_cli.runs import (
    ANALYSIS_DIR,
    DEEP_RFM,
    NETWORK,
    find_runs_and_sweeps,
    kind_of_model,
    read_run_config,
    require_run_dir,
)

log = logging.getLogger("dnc.analyze")
ANALYSERS = {NETWORK: network, DEEP_RFM: deep_rfm}


def check(cfg: DictConfig) -> AnalyzeConfig:
    acfg = validate_analyze(to_object(cfg, AnalyzeConfig))
    require_run_dir(acfg.run_dir)
    return acfg


def analyze_run(run_dir: Path, acfg: AnalyzeConfig, device: torch.device) -> list[str]:
    """Analyse one run with its kind's analyser; returns the problems met (bad checkpoints)."""
    cfg = read_run_config(run_dir)
    require_no_link_out(run_dir, [ANALYSIS_DIR])
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
            if is_writer():
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


def check_ranks(acfg: AnalyzeConfig, runs: list[Path]) -> AnalyzeConfig:
    """Under torchrun: refuse, before any work, ranks that were given other options or found other runs; quieten the
    ranks that do not write (no progress bar, errors only in the log). One process: acfg as it is."""
    if not launched_as_ranks():
        return acfg
    if acfg.jobs > 1:
        raise UsageError(f"jobs={acfg.jobs} analyses runs in worker processes; under torchrun the ranks share each "
                         "run: leave jobs=1")
    options = {key: value for key, value in to_plain(acfg).items() if key != "progress"}
    require_agreement("the options and the runs", options, [str(run) for run in runs])
    if is_writer():
        return acfg
    logging.getLogger().setLevel(logging.ERROR)
    return dataclasses.replace(acfg, progress=False)


def write_sweeps(sweeps: list[Path], runs: list[Path], errors: dict[Path, str]) -> None:
    """Every sweep's tables (dnc_cli/analyze/sweeps.py), and a digest of each on stdout."""
    for sweep_dir in sweeps:
        digest = write_sweep_tables(sweep_dir, runs, errors)
        print(f"{digest['dir']}/runs.csv: {digest['runs']} runs, {digest['done']} done; swept: "
              f"{', '.join(digest['keys']) or 'nothing'}")
        for line in digest["not_done"]:
            print(f"  not done: {line}")


def analyze(acfg: AnalyzeConfig) -> tuple[list[str], dict[Path, str], bool]:
    """The command's work: every run (acfg.jobs at a time, or shared by the torchrun ranks), then every sweep's
    tables; `tables_only` writes the sweep tables alone. Returns (skipped checkpoints, {run: error}, whether this
    process reports them: rank 0)."""
    with process_group(acfg.distributed.timeout_s, resolve_device(acfg.device)) as device:
        runs, sweeps = find_runs_and_sweeps(acfg.run_dir, skip_measured=True)
        acfg = check_ranks(acfg, runs)
        if acfg.tables_only:  # the final step after a job array: what each run lacks comes from its files
            problems, errors = [], jobs.unanalysed_errors(runs, acfg.epochs, Path(acfg.run_dir))
        else:  # with several runs, one that cannot be analysed is listed, not fatal
            problems, errors = analyze_runs(runs, acfg, device)
        writer = is_writer()
        if writer:
            write_sweeps(sweeps, runs, errors)
    return problems, errors, writer


def launch(args: list[str], overrides: list[str]) -> bool:
    """The dispatcher's hook (dnc_cli/cli.py): with a launcher that runs jobs outside this process
    (`hydra/launcher=slurm`, `submitit_local`, `joblib`, ...), analyse every run below run_dir as its own job, wait for
    them, then write the sweep tables here. Returns False, doing nothing, for a command line without one."""
    if jobs.requested_launcher(args, overrides) is None:
        return False
    from hydra import compose, initialize_config_module

    with initialize_config_module("dnc_cli.conf", version_base="1.3"):  # the final step's config
        final_step = compose(config_name="analyze", overrides=[*overrides, "tables_only=true"])
    run_dir = Path(final_step.run_dir)
    try:
        if launched_as_ranks():
            raise UsageError("hydra/launcher= and torchrun do not mix: launch the jobs from one process")
        runs, _ = find_runs_and_sweeps(run_dir, skip_measured=True)
    except UsageError as exc:
        fail("analyze", str(exc))
    sys.argv = ["dnc analyze", *jobs.job_arguments(args, runs, run_dir)]
    main()  # Hydra's multirun: one job per run through the launcher; returns when every job has ended
    run(final_step)
    return True


def report(problems: list[str], errors: dict[Path, str], writer: bool) -> None:
    """Skipped checkpoints and runs not analysed: one line on stderr and exit status 2 (on rank 0; the other ranks
    exit with the same status, silently)."""
    lines = [f"{len(problems)} checkpoint(s) skipped: " + "; ".join(problems)] if problems else []
    if errors:
        lines.append(f"{len(errors)} run(s) not analysed: " + "; ".join(f"{r}: {e}" for r, e in errors.items()))
    if lines and not writer:
        raise SystemExit(2)
    if lines:
        fail("analyze", "; ".join(lines))


def in_launcher_job() -> bool:
    """Whether this call is one job of a multirun (`launch`, or `dnc analyze -m ...`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run(cfg: DictConfig) -> None:
    """The command, with its failures as one line on stderr and exit status 2."""
    try:
        report(*analyze(check(cfg)))
    except (UsageError, GroupBroken) as exc:
        fail("analyze", str(exc))
    except KeyboardInterrupt:
        print("dnc analyze: interrupted; rerun the same command to finish", file=sys.stderr)
        raise SystemExit(130) from None


@hydra.main(version_base="1.3", config_path="pkg://dnc_cli.conf", config_name="analyze")
def main(cfg: DictConfig) -> str | None:
    if not in_launcher_job():
        run(cfg)
        return None
    # one job of a launcher: its failure is printed (or logged) and returned, not raised, so that the other jobs and
    # the launching process go on; what the run still lacks is read from its files (dnc_cli/analyze/jobs.py)
    try:
        run(cfg)
    except SystemExit as exit_:
        return None if exit_.code in (0, None) else f"exit status {exit_.code}"
    except Exception as exc:
        log.exception("dnc analyze job failed")
        return f"{type(exc).__name__}: {exc}"
    return None
