"""A training run's first files and its resume check, shared by every kind's trainer (network.py, deep_rfm.py)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from omegaconf import OmegaConf

import dnc_cli
from dnc_cli.config import TrainConfig, to_object, to_plain, validate_train
from dnc_cli.errors import UsageError, need, reading
from dnc_cli.guards import find_named, load_omegaconf
from dnc_cli.runs import CONFIG_FILE, LABELS_FILE, atomic_path, holds_run, save_atomic

# config keys that may change when resuming a run (everything else must match the saved config)
RESUMABLE_CHANGES = {"resume", "epochs", "epochs_after_tpt", "device", "progress"}


def versions() -> dict:
    import torch

    sha = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(dnc_cli.__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "dnc": dnc_cli.__version__,
            "git_sha": sha}


def check_resume_config(run_dir: Path, plain: dict) -> None:
    """Refuse to resume `run_dir` with a config that differs from the one it was started with, apart from
    RESUMABLE_CHANGES. The saved config is read through the schema, so that a run written by an older dnc compares
    by its meaning (standardize: true = pixel); keys that its file lacks (added to dnc since) are not compared."""
    path = run_dir / CONFIG_FILE
    with reading(path):
        written = load_omegaconf(path)
        saved = to_plain(validate_train(to_object(written, TrainConfig)))
        written = OmegaConf.to_container(written)
        need(isinstance(written, dict), path, "a YAML mapping expected")

    def diff(a, b, present, prefix=""):
        for key in sorted(set(a) | set(b)):
            if (prefix == "" and key in RESUMABLE_CHANGES) or key not in present:
                continue
            va, vb = a.get(key), b.get(key)
            if isinstance(va, dict) and isinstance(vb, dict):
                yield from diff(va, vb, present[key] if isinstance(present[key], dict) else {}, f"{prefix}{key}.")
            elif va != vb:
                yield f"{prefix}{key}={vb} (the run has {va})"

    changed = list(diff(saved, plain, written))
    if changed:
        raise UsageError(f"resume={run_dir}: config differs from the run's: {', '.join(changed)}; "
                         f"only {', '.join(sorted(RESUMABLE_CHANGES - {'resume'}))} may change")


def start_run(cfg: TrainConfig, plain: dict, data, run_dir: Path) -> dict:
    """A fresh run's first files (its config and labels; refused if `run_dir` already holds a run); returns the
    initial summary."""
    if holds_run(run_dir):
        raise UsageError(f"hydra.run.dir={run_dir} already holds a run; continue it with resume={run_dir}")
    with atomic_path(run_dir / CONFIG_FILE) as tmp:
        tmp.write_text(OmegaConf.to_yaml(plain))
    # which samples were relabelled (random labels), and the labels actually trained on
    save_atomic({"train_labels": data.train.labels.cpu(), "relabelled": data.relabelled,
                 "true_train_labels": data.true_train_labels}, run_dir / LABELS_FILE)
    return {"status": "running", "model": cfg.model.name.value, "dataset": cfg.dataset.name.value,
            "seed": cfg.seed, "tpt_epoch": None, "versions": versions(), "run_dir": str(run_dir),
            "num_classes": data.num_classes, "n_train": len(data.train.labels), "n_test": len(data.test.labels),
            "n_relabelled": int(data.relabelled.sum())}


def check_not_nested(folder: Path, key: str, new_run: bool) -> None:
    """Refuse a run (or a sweep, `new_run` False) placed inside another run, and a new run in a folder that holds
    runs: `dnc analyze`, `dnc plot` and `dnc report` on the outer folder would take the runs for seeds of one sweep."""
    folder = Path(folder).absolute()
    outer = next((parent for parent in folder.parents if (parent / CONFIG_FILE).is_file()), None)
    if outer is not None:
        raise UsageError(f"{key}={folder} is inside the run {outer}: commands on {outer} would take the two for "
                         "seeds of a sweep; put it beside that run")
    if new_run and folder.is_dir():
        inner = [run for run in find_named(folder, CONFIG_FILE) if run != folder]
        if inner:
            raise UsageError(f"{key}={folder} holds the run {inner[0]}" + (f" and {len(inner) - 1} more" if
                             len(inner) > 1 else "") + ": train a new run into an empty or a new folder")
