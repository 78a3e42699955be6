"""The run layout shared by every command, atomic file writes, finding runs and sweeps, a run's kind, and the
resolvers that place a run (`${dnc_run_dir:...}`, `${dnc_resume:}`, `${dnc_job_gpu:}` in conf/).

Imports no torch at module level (`dnc plot` and `dnc report` use it).

<run_dir>/config_resolved.yaml        resolved config (what analyze rebuilds the model and data from)
<run_dir>/train_log.csv               epoch,train_loss,train_acc,test_loss,test_acc,lr,elapsed_s (networks)
<run_dir>/rfm_log.csv                 layer,train_acc,test_acc,nc1_trace,elapsed_s (Deep RFM)
<run_dir>/labels.pt                   labels trained on, and which samples were relabelled
<run_dir>/checkpoints/epoch_NNNNNN.pt the schedule's checkpoints
<run_dir>/checkpoints/last.pt         resume state
<run_dir>/summary.json                status, tpt_epoch, final metrics, seed, versions, git sha
<run_dir>/analysis/...                written by `dnc analyze` (dnc_cli/tables.py)
<run_dir>/figures/...                 written by `dnc plot`
<run_dir>/report.md                   written by `dnc report`

A sweep (`dnc train -m`) is a folder holding Hydra's multirun.yaml and one run per job folder, each with Hydra's
record of its overrides in .hydra/overrides.yaml; `dnc analyze` writes its tables into <sweep>/analysis/.
`dnc measure` writes the same layout without checkpoints or logs: config_resolved.yaml, summary.json ("command":
"measure") and analysis/ (dnc_cli/measure/outputs.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from dnc_cli.config import NC1_FORMS, ModelName, TrainConfig, to_object
from dnc_cli.devices import job_gpu
from dnc_cli.errors import UsageError

CONFIG_FILE = "config_resolved.yaml"
SUMMARY_FILE = "summary.json"
TRAIN_LOG_FILE = "train_log.csv"
RFM_LOG_FILE = "rfm_log.csv"
LABELS_FILE = "labels.pt"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
ANALYSIS_DIR = "analysis"
FIGURES_DIR = "figures"
REPORT_FILE = "report.md"
MULTIRUN_FILE = "multirun.yaml"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
MEASURE_COMMAND = "measure"  # summary.json's "command" in a folder `dnc measure` wrote (it is no training run)


# ---------------------------------------------------------------------------------------------------- resolvers
def resume_here() -> str | None:
    """`resume='${dnc_resume:}'`: this job's own folder when it holds checkpoints/last.pt, else null. `dnc train`
    gives it to every sweep job, so a job requeued after pre-emption (SLURM) or a sweep launched again into the
    same hydra.sweep.dir continues its runs instead of refusing to overwrite them."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or OmegaConf.is_missing(HydraConfig.get().runtime, "output_dir"):
        return None  # composing, before the job's folder is known
    folder = Path(HydraConfig.get().runtime.output_dir)
    return str(folder) if (folder / CHECKPOINTS_DIR / LAST_CHECKPOINT).is_file() else None


# Registered here because every command imports this module, and so does every sweep job that a launcher (joblib,
# submitit) unpickles in a fresh process (it imports the command's module). dnc_run_dir: a resumed run's folder, or
# a fresh timestamped one (conf/train.yaml's hydra.run.dir).
OmegaConf.register_new_resolver("dnc_run_dir", lambda resume, fresh: resume or fresh, replace=True)
OmegaConf.register_new_resolver("dnc_job_gpu", job_gpu, replace=True)
OmegaConf.register_new_resolver("dnc_resume", resume_here, replace=True)
RESUME_IN_SWEEPS = "resume=${dnc_resume:}"


# ---------------------------------------------------------------------------------------------------- run kinds
# Every command keeps a registry keyed by these (how to train, analyse, draw and judge a run of that kind), so that
# it asks a run's kind for its code: a new kind of model adds a key here and an entry in each registry.
NETWORK, DEEP_RFM = "network", "deep_rfm"


def kind_of_model(model: str) -> str:
    """The kind of run a model name makes: every model is a network trained by backprop except the Deep RFM."""
    return DEEP_RFM if model == ModelName.deep_rfm.value else NETWORK


def run_kind(summary: dict, config: dict | None = None, metrics=None) -> str:
    """A run's kind: from the model its summary.json (else its config) records; failing both, from its metrics table
    (a Deep RFM's rows are by stage: no layer has an NC1 of its own representation, stage '')."""
    model = summary.get("model") or ((config or {}).get("model") or {}).get("name")
    if model:
        return kind_of_model(str(model))
    if metrics is not None:
        own_nc1 = (metrics["stage"] == "") & metrics["metric"].isin(NC1_FORMS)
        return NETWORK if own_nc1.any() else DEEP_RFM
    return NETWORK


# ---------------------------------------------------------------------------------------------------- atomic I/O
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path next to `path`; on success rename it over `path` (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the file the permissions open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def save_atomic(obj, path: Path) -> None:
    """torch.save, atomically (checkpoints, labels, resume state)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def truncate_log(path: Path, last_epoch: int) -> None:
    """Drop log rows written after the resume state (an interruption between log append and last.pt)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= last_epoch]
    write_text(path, "".join(kept))


def read_run_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig a run was trained with (analyze rebuilds its model and data from it)."""
    return to_object(OmegaConf.load(Path(run_dir) / CONFIG_FILE), TrainConfig)


def read_summary(run_dir: Path) -> dict:
    """<run_dir>/summary.json, or {} for a run that has none (yet)."""
    path = Path(run_dir) / SUMMARY_FILE
    return read_json(path) if path.is_file() else {}


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:06d}.pt"


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / checkpoint_name(epoch)


def checkpoint_epochs(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (Path(run_dir) / CHECKPOINTS_DIR).glob("epoch_*.pt"))


def gram_file_name(epoch: int, split: str) -> str:
    """analysis/<this>: a class-stratified feature sample of every layer at `epoch`, for the Gram figure."""
    return f"gram_epoch_{epoch:06d}_{split}.npz"


def final_gram_file(run_dir: Path, split: str) -> Path | None:
    """The gram npz of the latest analysed epoch for `split` (names sort by their zero-padded epoch)."""
    files = sorted((Path(run_dir) / ANALYSIS_DIR).glob(f"gram_epoch_*_{split}.npz"))
    return files[-1] if files else None


def gram_epoch(path: Path) -> int:
    return int(Path(path).stem.split("_")[2])


# ---------------------------------------------------------------------------------------------------- finding runs
def require_run_dir(root) -> Path:
    """`run_dir` of analyze/plot/report, checked before any work (the commands' `check`)."""
    root = Path(root)
    if not root.exists():
        raise UsageError(f"run_dir={root} does not exist")
    return root


def find_runs(root: Path) -> list[Path]:
    """Every folder under `root` (itself included) holding a run's config_resolved.yaml."""
    root = require_run_dir(root)
    return sorted(p.parent for p in root.rglob(CONFIG_FILE) if ".hydra" not in p.parts)


def is_sweep(path: Path, runs: list[Path]) -> bool:
    path = Path(path)
    return (path / MULTIRUN_FILE).is_file() or (len(runs) >= 2 and not (path / CONFIG_FILE).is_file())


def find_sweeps(root: Path, runs: list[Path]) -> list[Path]:
    """Folders at or below `root` holding multirun.yaml; failing that, `root` itself if it holds several runs."""
    root = Path(root)
    sweeps = sorted(p.parent for p in root.rglob(MULTIRUN_FILE) if ".hydra" not in p.parts)
    if sweeps:
        return sweeps
    return [root] if is_sweep(root, runs) else []


def is_measure_run(run_dir: Path) -> bool:
    """A folder `dnc measure` wrote (summary.json's command): its analysis/ is complete, it has no checkpoints."""
    try:
        return read_summary(run_dir).get("command") == MEASURE_COMMAND
    except (OSError, ValueError, AttributeError):  # an unreadable or odd summary.json: not ours
        return False


def find_runs_and_sweeps(root: Path, skip_measured: bool = False) -> tuple[list[Path], list[Path]]:
    """The runs and sweeps at or below `run_dir=` of analyze and plot; UsageError when there is neither.
    `skip_measured` (analyze): leave out the folders `dnc measure` wrote, which were analysed when measured. Those
    never make a sweep (a folder of them is no `dnc train -m`)."""
    runs = find_runs(Path(root))
    measured = [run for run in runs if is_measure_run(run)]
    trained = [run for run in runs if run not in measured]
    sweeps = find_sweeps(Path(root), trained)
    if skip_measured:
        runs = trained
    if not runs and not sweeps:
        if measured:
            raise UsageError(f"run_dir={root} holds only `dnc measure` output, analysed when measured: `dnc plot` "
                             "and `dnc report` read it as it is")
        raise UsageError(f"run_dir={root} holds no run (no {CONFIG_FILE} below it)")
    return runs, sweeps


def ensure_writable_dir(path: Path, key: str) -> None:
    """Fail early, in one line, if `path` cannot be created or written (rather than deep inside Hydra)."""
    path = Path(path).absolute()
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{key}={path} cannot be created: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{key}={path} is not writable ({ancestor} denies writing)")
