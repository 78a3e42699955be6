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
import filecmp
import json
import os
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dnc_cli.config import NC1_FORMS, ModelName, TrainConfig, to_object
from dnc_cli.devices import job_gpu
from dnc_cli.errors import UsageError, need, reading
from dnc_cli.guards import (
    find_named,
    load_omegaconf,
    load_safely,
    remove_stale_temporaries,
    require_searchable,
    temporary_prefix,
)

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
# what `dnc train` writes in a run folder (a resumed run: refused when one of them links out of it)
TRAINING_WRITES = (CONFIG_FILE, SUMMARY_FILE, TRAIN_LOG_FILE, RFM_LOG_FILE, LABELS_FILE, CHECKPOINTS_DIR,
                   str(OVERRIDES_FILE.parent))
MEASURE_COMMAND = "measure"  # summary.json's "command" in a folder `dnc measure` wrote (it is no training run)
RUN_DEFINING_KEYS = ("seed", "dataset", "model")  # a config_resolved.yaml without them does not describe a run


# ---------------------------------------------------------------------------------------------------- resolvers
def resume_here() -> str | None:
    """`resume='${dnc_resume:}'`: this job's own folder when it holds checkpoints/last.pt, else null. `dnc train`
    gives it to every sweep job, so a job requeued after pre-emption (SLURM) or a sweep launched again into the
    same hydra.sweep.dir continues its runs instead of refusing to overwrite them."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or OmegaConf.is_missing(HydraConfig.get().runtime, "output_dir"):
        return None  # composing, before the job's folder is known
    folder = Path(HydraConfig.get().runtime.output_dir)
    return str(folder) if holds_run(folder) else None


def holds_run(folder: Path) -> bool:
    """Whether `folder` holds a run that can be resumed (its checkpoints/last.pt)."""
    return (Path(folder) / CHECKPOINTS_DIR / LAST_CHECKPOINT).is_file()


def hydra_record_dir() -> str | None:
    """`hydra.output_subdir` of `dnc train`: Hydra's record of the job (.hydra/) for a new run only. A run being
    resumed keeps the record of how it was started: the sweep tables read its overrides, and a refused resume (a
    sweep job launched again with other settings) must leave the folder as it was."""
    return None if resume_here() is not None else ".hydra"


# Registered here because every command imports this module, and so does every sweep job that a launcher (joblib,
# submitit) unpickles in a fresh process (it imports the command's module). dnc_run_dir: a resumed run's folder, or
# a fresh timestamped one (conf/train.yaml's hydra.run.dir).
OmegaConf.register_new_resolver("dnc_run_dir", lambda resume, fresh: resume or fresh, replace=True)
OmegaConf.register_new_resolver("dnc_job_gpu", job_gpu, replace=True)
OmegaConf.register_new_resolver("dnc_resume", resume_here, replace=True)
OmegaConf.register_new_resolver("dnc_hydra_record_dir", hydra_record_dir, replace=True)
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


class Staging:
    """Files written under temporary names next to their targets (see `staged_files`)."""

    def __init__(self):
        self.staged: list[tuple[Path, Path]] = []  # (temporary, target)

    def __call__(self, path: Path) -> Path:
        """A temporary file to write in place of `path`."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(path)  # left by a command killed while it wrote `path`
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp")
        except OSError as exc:
            raise UsageError(f"cannot write {path} ({exc.strerror or exc})") from exc
        os.close(fd)
        self.staged.append((Path(tmp), path))
        return Path(tmp)

    def commit(self) -> None:
        for tmp, path in self.staged:
            if path.is_file() and filecmp.cmp(tmp, path, shallow=False):
                tmp.unlink()  # unchanged: the target keeps its bytes and its time
                continue
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the file the permissions open() would
            os.replace(tmp, path)

    def discard(self) -> None:
        for tmp, _ in self.staged:
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def staged_files():
    """`with staged_files() as stage:` write each file to `stage(path)`; when the block ends, every file is renamed
    over its target together. Readers never see half a file, and a failure inside the block (a read-only folder, a
    full disk, an interruption) leaves every target as it was: no half-written figure set, no table without its
    Parquet twin. A staged file identical to its target is dropped, so a rerun with nothing new changes nothing."""
    staging = Staging()
    try:
        yield staging
        staging.commit()
    except OSError as exc:
        target = next((path for tmp, path in staging.staged if str(tmp) == exc.filename), None)
        where = target or (staging.staged[-1][1] if staging.staged else exc.filename)
        raise UsageError(f"cannot write {where} ({exc.strerror or exc})") from exc
    finally:
        staging.discard()


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path next to `path`; on success rename it over `path` (`staged_files` for one file)."""
    with staged_files() as stage:
        yield stage(path)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict:
    """A JSON object written by dnc (summary.json, settings.json); UsageError naming the file when it is not one."""
    with reading(path):
        data = json.loads(Path(path).read_text())
    need(isinstance(data, dict), path, f"a JSON object expected, found {type(data).__name__}")
    return data


def append_line(path: Path, line: str) -> None:
    """One row more of a log (train_log.csv, rfm_log.csv); UsageError naming the file when it cannot be written.
    A row half-written by an interruption is dropped on resume (`truncate_log`)."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write {path} ({exc.strerror or exc})") from exc


def save_atomic(obj, path: Path) -> None:
    """torch.save, atomically (checkpoints, labels, resume state)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def truncate_log(path: Path, last_epoch: int) -> None:
    """Drop log rows written after the resume state (an interruption between log append and last.pt)."""
    if not path.exists():
        return
    with reading(path):
        header, *rows = path.read_text().splitlines()
        # a row cut short by an interruption has fewer fields: it goes too
        kept = [row for row in rows if row.count(",") == header.count(",") and int(row.split(",", 1)[0]) <= last_epoch]
    write_text(path, "\n".join([header, *kept]) + "\n")


def read_run_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig a run was trained with (analyze rebuilds its model and data from it); UsageError naming
    config_resolved.yaml when it is missing, not YAML (or hostile: OmegaConf's loader is yaml's safe one), lacks
    what defines the run, or holds values the schema refuses."""
    path = Path(run_dir) / CONFIG_FILE
    with reading(path):
        loaded = load_omegaconf(path)
        need(isinstance(loaded, DictConfig), path, "a YAML mapping expected")
        missing = [key for key in RUN_DEFINING_KEYS if key not in loaded]
        need(not missing, path, f"no {', '.join(missing)}")
        return to_object(loaded, TrainConfig)


# summary.json's keys that commands compute with: their JSON type (null is allowed for each)
SUMMARY_TYPES = {"tpt_epoch": int, "epochs_done": int, "n_relabelled": int, "status": str, "command": str, "model": str,
                 "dataset": str, "final": dict, "error": str}


def read_summary(run_dir: Path) -> dict:
    """<run_dir>/summary.json, or {} for a run that has none (yet); UsageError naming the file and the key when a
    value has the wrong type (a tpt_epoch edited into a string)."""
    path = Path(run_dir) / SUMMARY_FILE
    summary = read_json(path) if path.exists() else {}
    final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
    values = {**{key: (summary.get(key), kind) for key, kind in SUMMARY_TYPES.items()},
              **{f"final.{key}": (value, (int, float, str)) for key, value in final.items()}}
    for key, (value, kind) in values.items():
        need(value is None or (isinstance(value, kind) and not isinstance(value, bool)), path,
             f"{key} is {json.dumps(value)[:40]}, of the wrong type")
    return summary


def load_tensors(path: Path, device=None, keys: tuple[str, ...] = ()) -> dict:
    """A .pt file dnc wrote (a checkpoint, labels.pt), loaded with weights_only=True (no code in it can run);
    UsageError naming the file when it is missing, truncated, hostile, or not a dict holding `keys`."""
    data = load_safely(path, device)
    need(isinstance(data, dict), path, f"a dict of tensors expected, found {type(data).__name__}")
    missing = [key for key in keys if key not in data]
    need(not missing, path, f"no {', '.join(missing)} entry")
    return data


def read_train_labels(run_dir: Path, num_classes: int, num_samples: int):
    """The labels a run trained on (<run>/labels.pt: random labels included), checked against the training split's
    size and classes."""
    import torch

    path = Path(run_dir) / LABELS_FILE
    labels = load_tensors(path, "cpu", ("train_labels",))["train_labels"]
    need(isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and labels.shape == (num_samples,), path,
         f"train_labels must be {num_samples} int64 labels, as the run's training split")
    need(bool(((labels >= 0) & (labels < num_classes)).all()), path, f"train_labels outside 0..{num_classes - 1}")
    return labels


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:06d}.pt"


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / checkpoint_name(epoch)


def checkpoint_epochs(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (Path(run_dir) / CHECKPOINTS_DIR).glob("epoch_*.pt"))


def analysable_epochs(run_dir: Path, wanted: list[int] | None = None) -> list[int]:
    """The checkpoint epochs of a run to analyse (all, or those of `wanted`); UsageError when there are none."""
    available = checkpoint_epochs(run_dir)
    if not available:
        raise UsageError(f"{Path(run_dir) / CHECKPOINTS_DIR} holds no checkpoint (epoch_NNNNNN.pt): nothing to "
                         "analyse; train the run first (dnc train)")
    if wanted is None:
        return available
    chosen = [epoch for epoch in available if epoch in wanted]
    if not chosen:
        raise UsageError(f"epochs={list(wanted)}: {run_dir} has no such checkpoint; it has epochs "
                         f"{', '.join(map(str, available))}")
    return chosen


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
    require_searchable(root)
    return root


def find_runs(root: Path) -> list[Path]:
    """Every folder under `root` (itself included) holding a run's config_resolved.yaml."""
    root = require_run_dir(root)
    return find_named(root, CONFIG_FILE)


def is_sweep(path: Path, runs: list[Path]) -> bool:
    path = Path(path)
    return (path / MULTIRUN_FILE).is_file() or (len(runs) >= 2 and not (path / CONFIG_FILE).is_file())


def find_sweeps(root: Path, runs: list[Path]) -> list[Path]:
    """Folders at or below `root` holding multirun.yaml; failing that, `root` itself if it holds several runs."""
    root = Path(root)
    sweeps = find_named(root, MULTIRUN_FILE)
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
