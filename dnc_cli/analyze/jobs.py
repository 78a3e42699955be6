"""`dnc analyze run_dir=<sweep> hydra/launcher=<launcher>`: every run analysed as its own job of a Hydra launcher (a
SLURM job array with `hydra/launcher=slurm`), then the sweep tables.

The dispatcher hands the command line to `dnc_cli.analyze.command.launch`, which rewrites it into a Hydra multirun
with one job per run (`job_arguments`): `-m run_dir='<run 1>','<run 2>',...` and the launcher's own folder
`<run_dir>/.hydra/analyze` (multirun.yaml and submitit's `.submitit/<job id>/` logs; `.hydra` folders are never taken
for runs or sweeps, dnc_cli/runs.py). Each job analyses its run as `dnc analyze run_dir=<run>` would, so it resumes
after a pre-emption and ends at once when the run is analysed already. When the jobs have ended, the launching
process writes the sweep tables.

What each run still lacks is read from its files, not from the jobs (`unanalysed`): the same final step works after
a launching process that died, as `dnc analyze run_dir=<sweep> tables_only=true`, by hand or as a SLURM job that
depends on the array, and rerunning the launch analyses only what is missing.
"""

from __future__ import annotations

from pathlib import Path

from dnc_cli.errors import UsageError
from dnc_cli.runs import analysable_epochs
from dnc_cli.tables import read_metrics, run_metrics_path

# the launchers that run jobs in this process, one after the other: no reason to split the work into jobs
IN_PROCESS_LAUNCHERS = ("basic",)
LAUNCH_SUBDIR = Path(".hydra") / "analyze"


def requested_launcher(args: list[str], overrides: list[str]) -> str | None:
    """The `hydra/launcher=` of a plain command line (no flags such as -m or --cfg), unless it runs in-process."""
    if any(arg.startswith("-") for arg in args):
        return None
    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "hydra/launcher"]
    return chosen[-1] if chosen and chosen[-1] not in IN_PROCESS_LAUNCHERS else None


def launch_dir(run_dir: Path) -> Path:
    """Where the launcher keeps multirun.yaml and its job folders and logs (submitit: `.submitit/<job id>/`)."""
    return Path(run_dir) / LAUNCH_SUBDIR


def quoted(value: str) -> str:
    """A value as a quoted Hydra override string: commas, spaces and `=` in a path stay part of it."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def job_arguments(args: list[str], runs: list[Path], run_dir: Path) -> list[str]:
    """The multirun command line: the user's overrides but run_dir, then one job per run."""
    kept = [arg for arg in args if arg.split("=", 1)[0].lstrip("+") not in ("run_dir", "hydra.sweep.dir")]
    return ["-m", *kept, "run_dir=" + ",".join(quoted(run) for run in runs),
            "hydra.sweep.dir=" + quoted(launch_dir(run_dir))]


def unanalysed(run_dir: Path, epochs: list[int] | None) -> list[int]:
    """The checkpoints of a run (of `epochs=[...]` when given, as `dnc analyze` chooses them) that its metrics table
    lacks: what a job that failed, or has not run, leaves behind. UsageError when the run cannot be analysed at all
    (no checkpoint, none of `epochs`) or its table cannot be read."""
    table = run_metrics_path(run_dir)
    analysed = set(read_metrics(table).epoch) if table.is_file() else set()
    return [epoch for epoch in analysable_epochs(run_dir, epochs) if epoch not in analysed]


def unanalysed_errors(runs: list[Path], epochs: list[int] | None, run_dir: Path) -> dict[Path, str]:
    """What each run lacks, as the per-run problems of the sweep tables (pointing at the launcher's logs); runs
    that lack nothing are left out."""
    logs = launch_dir(run_dir) / ".submitit"
    errors = {}
    for run in runs:
        try:
            pending = unanalysed(run, epochs)
        except UsageError as exc:
            errors[run] = str(exc)
            continue
        if pending:
            errors[run] = (f"checkpoint(s) {', '.join(map(str, pending))} not analysed (their job failed or has not "
                           f"run; logs in {logs}): rerun the launch")
    return errors
