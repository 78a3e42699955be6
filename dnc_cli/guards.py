"""What reading and writing a run may cost and where it may go: YAML read within bounds, tensors loaded safely and
checked to be finite, folders searched within bounds, no write through a symbolic link that leaves the run, and the
removal of temporaries a killed command left.

Runs are copied between machines and edited by hand (README, "Damaged, hostile and read-only files"), so a file of
ours may be hostile in ways a parser does not stop: a YAML alias bomb expands to gigabytes from a few hundred bytes,
a `figures/` that links elsewhere makes a write land outside the run, `run_dir=/` walks the whole machine.

Imports no torch (`dnc plot` and `dnc report` use it).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import warnings
from pathlib import Path

import yaml

from dnc_cli.errors import UsageError, need, reading

# ---------------------------------------------------------------------------------------------------- YAML
# dnc's YAML files (config_resolved.yaml, Hydra's overrides.yaml and multirun.yaml) are a few KB
MAX_YAML_BYTES = 1 << 20


def yaml_text(path) -> str:
    """The text of a YAML file of ours, refused (UsageError naming it) when it is larger than any dnc writes or when
    it uses aliases: dnc and Hydra write none, and an alias bomb (aliases of aliases) expands exponentially while
    it is parsed. The check reads the events of the stream, which does not expand aliases. Call inside
    `reading(path)` (dnc_cli/errors.py), which names the file when it cannot be read."""
    path = Path(path)
    size = path.stat().st_size
    need(size <= MAX_YAML_BYTES, path, f"{size:,} bytes; dnc's YAML files are under {MAX_YAML_BYTES:,}")
    text = path.read_text()
    aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(io.StringIO(text), Loader=yaml.SafeLoader))
    need(not aliases, path, f"{aliases} YAML alias(es) (*name); dnc writes none, and aliases can expand without bound")
    return text


def load_yaml(path):
    """A YAML file of ours as plain data (the safe loader), within `yaml_text`'s bounds."""
    return yaml.safe_load(yaml_text(path))


def load_omegaconf(path):
    """A YAML file of ours as OmegaConf loads it (its safe loader), within `yaml_text`'s bounds."""
    from omegaconf import OmegaConf

    return OmegaConf.load(io.StringIO(yaml_text(path)))


# ---------------------------------------------------------------------------------------------------- tensors
def load_safely(path, map_location="cpu"):
    """torch.load(weights_only=True): no pickled code runs, and whatever the file is, a one-line UsageError naming it
    when it does not load. torch's warnings about the pickle it is refusing (its protocol) are silenced: the refusal
    says what is wrong."""
    import torch

    with reading(path, library=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=map_location, weights_only=True)


def require_finite(tensors: dict, path) -> None:
    """Refuse (UsageError naming the file) a state_dict whose floating-point tensors hold NaN or Inf: every metric of
    such weights is NaN, and the linear algebra on them fails."""
    import torch

    bad = [key for key, value in tensors.items() if isinstance(value, torch.Tensor) and value.is_floating_point()
           and not bool(torch.isfinite(value).all())]
    need(not bad, path, f"non-finite weights (NaN or Inf) in {', '.join(map(str, bad[:3]))}"
         + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))


# ---------------------------------------------------------------------------------------------------- searching
# Runs sit a few folders below run_dir (multirun/train/<time>/<job>/: 3); a search stops at these bounds
MAX_SEARCH_DEPTH = 8
MAX_SEARCH_FOLDERS = 100_000
SKIPPED_FOLDERS = (".hydra", ".git", ".submitit")  # Hydra's records, a repository, SLURM logs: never runs


def require_searchable(root: Path) -> None:
    """Refuse a run_dir whose search would walk the whole machine or everyone's files: the filesystem root, the home
    folder and the folder of home folders."""
    real = Path(os.path.realpath(root))
    home = Path(os.path.realpath(Path.home()))
    if real == Path(real.anchor) or real in (home, home.parent):
        raise UsageError(f"run_dir={root} is {real}: dnc does not search a whole filesystem or home folder for runs; "
                         "give the folder of a run, a sweep or a parent of runs")


def find_named(root: Path, name: str) -> list[Path]:
    """The folders at or below `root` (MAX_SEARCH_DEPTH deep, symbolic links not followed, SKIPPED_FOLDERS left out)
    that hold a file `name` (a relative path), sorted. UsageError when the search meets more than
    MAX_SEARCH_FOLDERS folders."""
    root = Path(root)
    found, visited = [], 0
    for folder, subfolders, _ in os.walk(root, followlinks=False):
        visited += 1
        if visited > MAX_SEARCH_FOLDERS:
            raise UsageError(f"run_dir={root} holds more than {MAX_SEARCH_FOLDERS:,} folders: give the folder of a "
                             "run, a sweep or a nearer parent of runs")
        depth = len(Path(folder).relative_to(root).parts)
        subfolders[:] = [] if depth >= MAX_SEARCH_DEPTH else sorted(s for s in subfolders if s not in SKIPPED_FOLDERS)
        if (Path(folder) / name).is_file():  # `name` may be a path: .hydra/overrides.yaml
            found.append(Path(folder))
    return sorted(found)


# ---------------------------------------------------------------------------------------------------- links
def require_no_link_out(folder: Path, names) -> None:
    """Before writing `names` (files or folders) in `folder`: refuse (UsageError) when one of them, or a file or folder
    within it (two levels: figures/<combination>/<file>), is a symbolic link to somewhere outside `folder`. Writing
    through it would overwrite files that are not the run's. A link inside the run is followed as usual."""
    folder = Path(folder)
    root = os.path.realpath(folder)

    def check(path: Path, depth: int) -> None:
        if path.is_symlink():
            real = os.path.realpath(path)
            if os.path.commonpath([root, real]) != root:
                raise UsageError(f"{path} is a symbolic link to {real}, outside {folder}: dnc does not write through "
                                 "it; remove the link or make it a folder of the run")
        elif depth and path.is_dir():
            for entry in sorted(path.iterdir()):
                check(entry, depth - 1)

    for name in names:
        check(folder / name, 2)


# ---------------------------------------------------------------------------------------------------- temporaries
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_OURS = re.compile(r"(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)-[a-z0-9_]+")  # <host>.<pid>-<mkstemp's random part>
_BEFORE_PIDS = re.compile(r"[a-z0-9_]{8}")  # mkstemp's random part alone: what dnc named temporaries before


def temporary_prefix(path: Path) -> str:
    """The name a staged write of `path` starts with: .<name>.<host>.<pid>- (then mkstemp's random part and .tmp), so
    that a later command can tell a temporary whose writer is gone from one being written."""
    return f".{Path(path).name}.{_HOST}.{os.getpid()}-"


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries of `path` (.<name>.*.tmp beside it) whose writer is gone: a process of this machine
    that no longer runs (killed during a staged write), or a dnc from before the writer's pid was in the name.
    Another machine's temporaries (a shared file system) and a running process's are left alone."""
    path = Path(path)
    for tmp in path.parent.glob(f".{_glob_escape(path.name)}.*.tmp"):
        middle = tmp.name[len(path.name) + 2:-len(".tmp")]
        ours = _OURS.fullmatch(middle)
        stale = _BEFORE_PIDS.fullmatch(middle) is not None or (
            ours is not None and ours["host"] == _HOST and not _running(int(ours["pid"])))
        if not stale:
            continue
        with contextlib.suppress(OSError):  # a read-only folder: the write itself will say so
            tmp.unlink()


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
