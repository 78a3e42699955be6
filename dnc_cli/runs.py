"""The run layout shared by every command, and atomic file writes. Imports no torch (`dnc plot` uses it).

<run_dir>/config_resolved.yaml        resolved config (what analyze rebuilds the model and data from)
<run_dir>/train_log.csv               epoch,train_loss,train_acc,test_loss,test_acc,lr,elapsed_s
<run_dir>/checkpoints/epoch_NNNNNN.pt the schedule's checkpoints
<run_dir>/checkpoints/last.pt         resume state
<run_dir>/summary.json                status, tpt_epoch, final metrics, seed, versions, git sha
<run_dir>/analysis/...                written by `dnc analyze`
<run_dir>/figures/...                 written by `dnc plot`
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from dnc_cli.errors import UsageError

CONFIG_FILE = "config_resolved.yaml"
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


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:06d}.pt"


def checkpoint_epochs(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (Path(run_dir) / "checkpoints").glob("epoch_*.pt"))


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
