"""Every file `dnc` reads or writes may be missing, damaged, hostile or unwritable (issue #14): each case below
breaks one file of a small analysed run (or sweep), runs one command in-process, and asserts one line on stderr that
names the file, exit status 2, no traceback, and every file of the folder byte-for-byte as it was.

Read-only folders and a full disk are simulated (`unwritable`): as root, chmod does not stop writes, so the OS calls
that create, write, rename or delete below a folder fail there with EROFS or ENOSPC, for root too.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY

from dnc_cli.cli import main

CHECKPOINTS = ["checkpoints.schedule=list", "checkpoints.epochs=[0,2,4]"]
MARKER = "dnc-hostile-file-ran"  # what a hostile file would create if dnc let its code run


def call(*argv: str) -> tuple[int, str]:
    """`dnc <argv>` in this process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A trained run (checkpoints 0, 2, 4) analysed at epochs 0 and 2, plotted and reported, and a two-run sweep of
    copies of it (multirun.yaml, .hydra/overrides.yaml), analysed and plotted."""
    root = tmp_path_factory.mktemp("template")
    run = root / "run"
    assert call("train", f"hydra.run.dir={run}", "progress=false", *TINY, *CHECKPOINTS)[0] == 0
    assert call("analyze", f"run_dir={run}", "epochs=[0,2]", "progress=false")[0] == 0
    assert call("plot", f"run_dir={run}", "figures=[nc_metrics,gram,training]", "formats=[png]")[0] == 0
    assert call("report", f"run_dir={run}")[0] == 0
    sweep = root / "sweep"
    for seed in (0, 1):
        shutil.copytree(run, sweep / str(seed))
        (sweep / str(seed) / ".hydra/overrides.yaml").write_text(f"- seed={seed}\n")
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - seed=0,1\n")
    assert call("analyze", f"run_dir={sweep}", "epochs=[0,2]", "progress=false")[0] == 0
    assert call("plot", f"run_dir={sweep}", "figures=[nc_metrics]", "formats=[png]")[0] == 0
    return root


# ---------------------------------------------------------------------------------------------------- damage
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def text(content: str):
    return lambda path: path.write_text(content)


def append(content: str):
    return lambda path: path.write_text(path.read_text() + content)


def replace(old: str, new: str):
    def damage(path: Path) -> None:
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new, 1))
    return damage


class Hostile:
    """Pickled as a call of os.system: torch.load(weights_only=True) must refuse it without running it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_pickle(path: Path) -> None:
    torch.save({"model": Hostile(path.parent / MARKER), "train_labels": Hostile(path.parent / MARKER)}, path)


def saved(obj):
    return lambda path: torch.save(obj, path)


def hostile_npz(path: Path) -> None:
    np.savez(path, labels=np.array([Hostile(path.parent / MARKER)], dtype=object))


def damaged_mnist(config: Path) -> None:
    """The run's dataset becomes MNIST, from a folder of truncated MNIST files."""
    raw = config.parent / "mnist_files" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03\x00\x00")
    config.write_text(config.read_text().replace("name: digits", "name: mnist", 1)
                      .replace("root: data", f"root: {raw.parent.parent}", 1))


def then(damage, error: int):
    """`damage`, then the folder unwritable with `error`."""
    return damage, error


HOSTILE_YAML = "!!python/object/apply:os.system ['touch " + MARKER + "']\n"


def remove(path: Path) -> None:
    path.unlink()


def remove_checkpoints(path: Path) -> None:
    for checkpoint in path.glob("epoch_*.pt"):
        checkpoint.unlink()


def gram(folder: Path) -> Path:
    return next((folder / "analysis").glob("gram_epoch_*_train.npz"))


# ---------------------------------------------------------------------------------------------------- unwritable
@contextlib.contextmanager
def unwritable(folder: Path, error: int):
    """Below `folder`, every OS call that would create, write, rename or delete fails with `error` (EROFS: a
    read-only folder; ENOSPC: a full disk, which lets files be created but not written)."""
    root = os.path.realpath(folder)
    real = {name: getattr(os, name) for name in ("open", "mkdir", "replace", "rename", "unlink", "remove", "rmdir",
                                                 "access", "chmod")}
    real_open = builtins.open
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def below(path) -> bool:
        return not isinstance(path, int) and os.path.realpath(os.fsdecode(path)).startswith(root)

    def deny(path):
        raise OSError(error, os.strerror(error), os.fsdecode(path))

    def os_open(path, flags, *args, **kwargs):
        if flags & writes and below(path) and error == errno.EROFS:
            deny(path)
        return real["open"](path, flags, *args, **kwargs)

    def changes(name):
        def call_(path, *args, **kwargs):
            if below(path) and (error == errno.EROFS or name in ("replace", "rename")):
                deny(path)
            return real[name](path, *args, **kwargs)
        return call_

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and below(path) and error == errno.EROFS:
            return False
        return real["access"](path, mode, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and below(file):
            deny(file)
        return real_open(file, mode, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", os_open)
        patch.setattr(os, "access", access)
        for name in ("mkdir", "replace", "rename", "unlink", "remove", "rmdir", "chmod"):
            patch.setattr(os, name, changes(name))
        patch.setattr(builtins, "open", open_)
        patch.setattr(io, "open", open_)
        yield


# ---------------------------------------------------------------------------------------------------- the cases
# (command, folder, file broken, damage, extra overrides, words the one line must hold). `folder` is run or sweep;
# the file is relative to it; damage None means the folder (or file) is made unwritable instead.
RUN_CONFIG, LABELS, SUMMARY, LOG = "config_resolved.yaml", "labels.pt", "summary.json", "train_log.csv"
METRICS, SETTINGS = "analysis/metrics.csv", "analysis/settings.json"
EPOCH0, EPOCH4, LAST = "checkpoints/epoch_000000.pt", "checkpoints/epoch_000004.pt", "checkpoints/last.pt"
WIDER = {"model": torch.nn.Linear(2, 2).state_dict()}
# resuming the template's run with its own settings and 2 more epochs
RESUME = ["resume={run}", *[o for o in TINY if not o.startswith("epochs=")], *CHECKPOINTS, "epochs=6"]
SWEPT = ["epochs=[0,2]"]  # the epochs the sweep's runs were analysed at: only the sweep's own files are new
PLOTTED = ["figures=[nc_metrics,gram,training]", "formats=[png]"]  # what the template drew


def remove_sweep_table(folder: Path) -> None:
    (folder / "sweep_table.md").unlink()


def remove_report(folder: Path) -> None:
    (folder / "report.md").unlink()

CASES = {
    # dnc analyze: a run
    "analyze/config-empty": ("analyze", "run", RUN_CONFIG, empty, [], ["config_resolved.yaml"]),
    "analyze/config-not-yaml": ("analyze", "run", RUN_CONFIG, text("model: [width\n"), [], ["config_resolved.yaml"]),
    "analyze/config-a-list": ("analyze", "run", RUN_CONFIG, text("- 1\n- 2\n"), [], ["config_resolved.yaml"]),
    "analyze/config-wrong-type": ("analyze", "run", RUN_CONFIG, replace("width: 32", "width: many"), [],
                                  ["config_resolved.yaml", "width"]),
    "analyze/config-hostile": ("analyze", "run", RUN_CONFIG, text(HOSTILE_YAML), [], ["config_resolved.yaml"]),
    "analyze/summary-truncated": ("analyze", "run", SUMMARY, truncate, [], ["summary.json"]),
    "analyze/summary-not-an-object": ("analyze", "run", SUMMARY, text("[1, 2]\n"), [], ["summary.json", "object"]),
    "analyze/labels-truncated": ("analyze", "run", LABELS, truncate, [], ["labels.pt"]),
    "analyze/labels-hostile": ("analyze", "run", LABELS, hostile_pickle, [], ["labels.pt", "weights_only"]),
    "analyze/labels-wrong-size": ("analyze", "run", LABELS, saved({"train_labels": torch.zeros(3, dtype=torch.long)}),
                                  [], ["labels.pt", "train_labels"]),
    "analyze/labels-missing-entry": ("analyze", "run", LABELS, saved({"labels": 1}), [], ["labels.pt",
                                                                                            "train_labels"]),
    "analyze/checkpoint-truncated": ("analyze", "run", EPOCH4, truncate, [], ["epoch_000004.pt", "skipped"]),
    "analyze/checkpoint-hostile": ("analyze", "run", EPOCH4, hostile_pickle, [], ["epoch_000004.pt",
                                                                                 "weights_only"]),
    "analyze/checkpoint-no-model": ("analyze", "run", EPOCH4, saved({"weights": 1}), [], ["epoch_000004.pt",
                                                                                         "model"]),
    "analyze/checkpoint-other-model": ("analyze", "run", EPOCH4, saved(WIDER), [], ["epoch_000004.pt",
                                                                                   "does not match"]),
    "analyze/initial-checkpoint-garbage": ("analyze", "run", EPOCH0, text("not a checkpoint"), [],
                                           ["epoch_000000.pt"]),
    "analyze/no-checkpoints": ("analyze", "run", "checkpoints", remove_checkpoints, [], ["checkpoints",
                                                                                          "no checkpoint"]),
    "analyze/metrics-garbage-row": ("analyze", "run", METRICS, append("garbage,row\n"), [],
                                    ["metrics.csv", "line", "force=true"]),
    "analyze/metrics-value-not-a-number": ("analyze", "run", METRICS, append("2,train,1,,nc1,abc\n"), [],
                                           ["metrics.csv", "force=true"]),
    "analyze/metrics-repeated-row": ("analyze", "run", METRICS, lambda p: p.write_text(
        p.read_text() + p.read_text().splitlines()[1] + "\n"), [], ["metrics.csv", "repeats", "force=true"]),
    "analyze/metrics-empty": ("analyze", "run", METRICS, empty, [], ["metrics.csv", "force=true"]),
    "analyze/settings-truncated": ("analyze", "run", SETTINGS, truncate, [], ["settings.json"]),
    "analyze/analysis-read-only": ("analyze", "run", "analysis", errno.EROFS, [], ["cannot write", "analysis"]),
    "analyze/disk-full": ("analyze", "run", "analysis", errno.ENOSPC, [], ["cannot write", "No space left"]),
    "analyze/too-few-samples": ("analyze", "run", RUN_CONFIG, replace("n_train: 200", "n_train: 5"), [],
                                ["dataset.n_train=5", "class"]),
    "analyze/dataset-files-damaged": ("analyze", "run", RUN_CONFIG, damaged_mnist, [], ["dataset.root", "mnist"]),
    # dnc analyze: a sweep (its runs are analysed already; the sweep's own files break)
    "analyze/multirun-not-yaml": ("analyze", "sweep", "multirun.yaml", text("hydra: [\n"), SWEPT, ["multirun.yaml"]),
    "analyze/overrides-not-a-list": ("analyze", "sweep", "0/.hydra/overrides.yaml", text("seed: 0\n"), SWEPT,
                                     ["overrides.yaml"]),
    "analyze/sweep-analysis-read-only": ("analyze", "sweep", "analysis", then(remove_sweep_table, errno.EROFS), SWEPT,
                                         ["cannot write", "analysis"]),
    # dnc plot
    "plot/metrics-garbage-row": ("plot", "run", METRICS, append("0,train\n"), [], ["metrics.csv", "force=true"]),
    "plot/metrics-no-columns": ("plot", "run", METRICS, text("a,b\n1,2\n"), [], ["metrics.csv", "column"]),
    "plot/metrics-binary": ("plot", "run", METRICS, lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), [],
                            ["metrics.csv"]),
    "plot/train-log-damaged": ("plot", "run", LOG, append("7,abc,1,1,1,1,1\n"), ["figures=[training]"],
                               ["train_log.csv"]),
    "plot/gram-truncated": ("plot", "run", None, truncate, ["figures=[gram]"], ["gram_epoch_"]),
    "plot/gram-hostile": ("plot", "run", None, hostile_npz, ["figures=[gram]"], ["gram_epoch_"]),
    "plot/summary-damaged": ("plot", "run", SUMMARY, text("{\"status\": "), [], ["summary.json"]),
    "plot/figures-read-only": ("plot", "run", "figures", errno.EROFS, ["dpi=99"], ["cannot write", "figures"]),
    "plot/disk-full": ("plot", "run", "figures", errno.ENOSPC, ["dpi=99"], ["cannot write"]),
    "plot/sweep-runs-table-damaged": ("plot", "sweep", "analysis/runs.csv", text("\"unclosed\n"), [],
                                      ["runs.csv"]),
    # dnc report
    "report/metrics-damaged": ("report", "run", METRICS, append("x,y,z,,nc1,1\n"), [], ["metrics.csv"]),
    "report/summary-damaged": ("report", "run", SUMMARY, truncate, [], ["summary.json"]),
    "report/config-hostile": ("report", "run", RUN_CONFIG, text(HOSTILE_YAML), [], ["config_resolved.yaml"]),
    "report/train-log-damaged": ("report", "run", LOG, append("8,1,1\n9,x\n"), [], ["train_log.csv"]),
    "report/run-read-only": ("report", "run", ".", then(remove_report, errno.EROFS), [], ["cannot write",
                                                                                          "report.md"]),
    # dnc train: refusals before Hydra writes, and resuming from damaged files
    "train/run-dir-holds-a-run": ("train", "run", ".", None, ["hydra.run.dir={run}", *TINY], ["already holds a run"]),
    "train/resume-other-settings": ("train", "run", ".", None, [*RESUME, "seed=5"], ["seed=5", "differs"]),
    "train/resume-last-truncated": ("train", "run", LAST, truncate, RESUME, ["last.pt"]),
    "train/resume-last-hostile": ("train", "run", LAST, hostile_pickle, RESUME,
                                  ["last.pt", "weights_only"]),
    "train/resume-last-incomplete": ("train", "run", LAST, saved({"model": {}}), RESUME,
                                     ["last.pt", "optimizer"]),
    "train/resume-config-damaged": ("train", "run", RUN_CONFIG, text("seed: [\n"), RESUME,
                                    ["config_resolved.yaml"]),
    "train/resume-summary-damaged": ("train", "run", SUMMARY, truncate, RESUME,
                                     ["summary.json"]),
    "train/resume-log-damaged": ("train", "run", LOG, append("x,1,1,1,1,1,1\n"), RESUME,
                                 ["train_log.csv"]),
    "train/run-dir-read-only": ("train", "run", ".", errno.EROFS, ["hydra.run.dir={run}/new", *TINY],
                                ["hydra.run.dir", "not writable"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_exit_2_and_nothing_changed(case, template, tmp_path):
    command, where, target, damage, overrides, words = CASES[case]
    shutil.copytree(template / where, tmp_path / where)  # the run or the sweep the case breaks, nothing else
    folder = tmp_path / where
    path = gram(folder) if target is None else folder / target
    damage, error = damage if isinstance(damage, tuple) else (None, damage) if isinstance(damage, int) else (damage,
                                                                                                            None)
    if damage is not None:
        damage(path)
    before = hashes(tmp_path)
    args = [command, *[o.format(run=folder) for o in overrides]]
    if command == "plot":
        args += [o for o in PLOTTED if o.split("=")[0] not in {a.split("=")[0] for a in overrides}]
    if command != "train":
        args += [f"run_dir={folder}"] + (["progress=false"] if command == "analyze" else [])
    with unwritable(path, error) if error is not None else contextlib.nullcontext():
        code, stderr = call(*args)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (code, stderr[-3000:])
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"dnc {command}: error: "), lines[0]
    print(f"{case}: {lines[0]}")  # the closing note of issue #14 lists them (pytest -s)
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert hashes(tmp_path) == before, "the command changed files on disk"
    assert not list(tmp_path.rglob(MARKER)), "a hostile file ran code"
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"


@pytest.mark.slow
def test_a_refused_sweep_job_leaves_its_run_as_it_was(tmp_path):
    """A sweep launched again into its folder with other settings: each job resumes its run, is refused, and its run
    folder (Hydra's .hydra/ record included) stays as it was. A resume that succeeds keeps the record of how the run
    started, which the sweep tables read."""
    from conftest import run_cli

    sweep = tmp_path / "sweep"
    launch = ["-m", f"hydra.sweep.dir={sweep}", "seed=0", "progress=false", *TINY]
    assert run_cli("train", *launch, cwd=tmp_path).returncode == 0
    before = hashes(sweep / "0")
    refused = run_cli("train", *launch, "optimizer.lr=0.002", cwd=tmp_path)
    assert refused.returncode == 2 and "optimizer.lr=0.002" in refused.stderr, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    assert hashes(sweep / "0") == before
    record = (sweep / "0/.hydra/overrides.yaml").read_text()
    longer = [o for o in launch if not o.startswith("epochs=")] + ["epochs=6"]
    assert run_cli("train", *longer, cwd=tmp_path).returncode == 0
    assert (sweep / "0/.hydra/overrides.yaml").read_text() == record
    assert "epoch,6" not in record and (sweep / "0/train_log.csv").read_text().splitlines()[-1].startswith("6,")
