"""Hardening, round 2 (issue #21): measure's model factory, non-finite and degenerate features, symbolic links out of
a run, bounded parsing, faults during plot and on a full disk, files that are not what they claim, and options.

Each case builds its input, runs one command in this process (tests/test_files_on_disk.py's `call`) and asserts one
line on stderr, exit status 2 (or a stated warning), and every file that was there before unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from test_files_on_disk import call, hashes, unwritable

from dnc_cli.errors import UsageError

MEASURE = ["progress=false"]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    """A tiny trained run (checkpoints 0, 2, 4), analysed at epochs 0 and 2."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    assert call("train", f"hydra.run.dir={run}", "progress=false", *TINY, "checkpoints.schedule=list",
                "checkpoints.epochs=[0,2,4]")[0] == 0
    assert call("analyze", f"run_dir={run}", "epochs=[0,2]", "progress=false", "families=[nc]")[0] == 0
    return run


@pytest.fixture
def run(analysed, tmp_path) -> Path:
    """A copy of the analysed run to break."""
    shutil.copytree(analysed, tmp_path / "run")
    return tmp_path / "run"


def refused(root: Path, *argv: str, words=()) -> str:
    """`dnc <argv>` refuses in one line, exit 2, no traceback, every file below `root` unchanged; the line."""
    before = hashes(root)
    code, stderr = call(*argv)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (code, stderr[-3000:])
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith(f"dnc {argv[0]}: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert hashes(root) == before, "the command changed files on disk"
    return lines[0]


# ---------------------------------------------------------------------------------------------------- 1. factory
FACTORIES = '''
import torch
def raises(): raise RuntimeError("factory broke")
def small(): return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
def narrow(): return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 10))
'''


@pytest.mark.parametrize("model, words", [
    ("hostile_factories:raises", ["model=hostile_factories:raises", "RuntimeError: factory broke"]),
    ("hostile_syntax:f", ["model=hostile_syntax:f", "SyntaxError"]),
    ("no_such_module_here:f", ["model=no_such_module_here:f", "ModuleNotFoundError"]),
    (":f", ["model=:f", "absolute module path"]),
    (".pkg:f", ["model=.pkg:f", "absolute module path"]),
    ("sys:exit", ["model=sys:exit", "SystemExit"]),
    ("hostile_factories:narrow", ["model=hostile_factories:narrow", "forward pass failed", "(256, 1, 8, 8)"]),
])
def test_a_factory_that_fails_is_one_line(model, words, tmp_path, monkeypatch):
    (tmp_path / "hostile_factories.py").write_text(FACTORIES)
    (tmp_path / "hostile_syntax.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    refused(tmp_path, "measure", f"model={model}", f"out_dir={tmp_path / 'out'}", *MEASURE, words=words)
    assert not (tmp_path / "out").exists()


def test_a_torchvision_builder_given_bad_kwargs_is_one_line(tmp_path):
    refused(tmp_path, "measure", "model=resnet18", "+model.kwargs.bogus=3", f"out_dir={tmp_path / 'out'}", *MEASURE,
            words=["model=resnet18", "bogus"])


def test_a_raw_hostile_pickle_as_weights_is_one_line_without_torch_warnings(tmp_path, monkeypatch):
    import pickle

    from test_files_on_disk import Hostile

    (tmp_path / "hostile_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    with open(tmp_path / "raw.pt", "wb") as f:
        pickle.dump({"w": Hostile(tmp_path / "ran")}, f, protocol=4)
    refused(tmp_path, "measure", "model=hostile_factories:small", f"weights={tmp_path / 'raw.pt'}",
            f"out_dir={tmp_path / 'out'}", *MEASURE, words=["raw.pt", "weights_only"])
    assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------------------------------------------- 2. non-finite
def embeddings(path: Path, features, labels=None) -> Path:
    labels = np.repeat(np.arange(3), len(features) // 3) if labels is None else labels
    np.savez(path, embeddings=features, labels=labels)
    return path


@pytest.mark.parametrize("values, words", [
    (np.where(np.eye(30, 5) > 0, np.nan, 1.0), ["NaN or Inf", "row"]),
    (np.full((30, 5), np.inf), ["NaN or Inf"]),
    (np.random.default_rng(0).normal(size=(30, 5)) * 1e300, ["overflow"]),
])
def test_non_finite_or_overflowing_embeddings_are_refused(values, words, tmp_path):
    path = embeddings(tmp_path / "emb.npz", values)
    refused(tmp_path, "measure", f"features={path}", f"out_dir={tmp_path / 'out'}", *MEASURE,
            words=["features=", "emb.npz", *words])


def test_non_finite_weights_are_refused(tmp_path, monkeypatch):
    (tmp_path / "hostile_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    state = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).state_dict()
    state["1.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    refused(tmp_path, "measure", "model=hostile_factories:small", f"weights={tmp_path / 'nan.pt'}",
            f"out_dir={tmp_path / 'out'}", *MEASURE, words=["nan.pt", "non-finite", "1.weight"])


def test_a_checkpoint_with_nan_is_named_and_skipped(run):
    checkpoint = run / "checkpoints/epoch_000004.pt"
    data = torch.load(checkpoint, weights_only=True)
    key = next(iter(data["model"]))
    data["model"][key].fill_(float("inf"))
    torch.save(data, checkpoint)
    before = hashes(run / "checkpoints")
    code, stderr = call("analyze", f"run_dir={run}", "progress=false", "families=[nc]")
    assert code == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert "epoch_000004.pt" in stderr and "non-finite" in stderr and "skipped" in stderr
    assert hashes(run / "checkpoints") == before


def test_constant_features_and_identical_classes_give_rows_and_one_warning(tmp_path, capsys):
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(10, 4))
    cases = {"zeros": np.zeros((30, 4)),  # all-zero embeddings: every ratio is 0/0
             "twins": np.concatenate([spread, spread[::-1], spread + 5])}  # classes 0 and 1 share their mean
    for name, values in cases.items():
        path = embeddings(tmp_path / f"{name}.npz", values)
        capsys.readouterr()
        code, stderr = call("measure", f"features={path}", f"out_dir={tmp_path / name}", *MEASURE)
        assert code == 0, stderr
        logged = capsys.readouterr()  # Hydra's console handler: the job's log lines
        warnings = [line for line in (logged.out + logged.err).splitlines() if "undefined values" in line]
        assert len(warnings) == 1, logged
        assert "layer(s) 1" in warnings[0]
        if name == "zeros":
            assert "nan in" in warnings[0] and "nc1_trace" in warnings[0] and "do not vary" in warnings[0]
        else:
            assert "inf in cdnv" in warnings[0] and "coincide" in warnings[0]


def test_one_sample_per_class_and_huge_labels_are_refused(tmp_path):
    from dnc_cli.measure import measure

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(UsageError, match="fewer than 2 samples of class"):
        measure(model, (torch.randn(3, 4), torch.arange(3)), 3, progress=False)
    with pytest.raises(UsageError, match="num_classes=1000000000000 but the largest split has 6 samples"):
        measure(model, (torch.randn(6, 4), torch.arange(6) % 3), 10**12, progress=False)
    path = embeddings(tmp_path / "one.npz", np.random.default_rng(0).normal(size=(3, 4)), np.arange(3))
    refused(tmp_path, "measure", f"features={path}", f"out_dir={tmp_path / 'one'}", *MEASURE,
            words=["fewer than 2 samples"])
    path = embeddings(tmp_path / "huge.npz", np.ones((3, 4)), np.array([0, 1, 10**12]))
    refused(tmp_path, "measure", f"features={path}", f"out_dir={tmp_path / 'huge'}", *MEASURE,
            words=["num_classes=1000000000001", "3 samples"])


# ---------------------------------------------------------------------------------------------------- 3. links
@pytest.mark.parametrize("folder, command", [("figures", "plot"), ("analysis", "analyze")])
def test_no_write_through_a_link_out_of_the_run(folder, command, run, tmp_path):
    outside = tmp_path / "outside"
    if (run / folder).exists():
        shutil.copytree(run / folder, outside)
        shutil.rmtree(run / folder)
    else:
        outside.mkdir()
    (outside / "precious.txt").write_text("not the run's")
    (run / folder).symlink_to(outside, target_is_directory=True)
    extra = ["force=true", "progress=false", "families=[nc]"] if command == "analyze" else ["formats=[png]"]
    refused(tmp_path, command, f"run_dir={run}", *extra, words=[folder, "symbolic link", "outside"])


def test_a_file_linked_out_of_the_run_is_not_written_through(run, tmp_path):
    (tmp_path / "elsewhere.md").write_text("someone's notes\n")
    (run / "report.md").unlink(missing_ok=True)
    (run / "report.md").symlink_to(tmp_path / "elsewhere.md")
    refused(tmp_path, "report", f"run_dir={run}", words=["report.md", "symbolic link"])


@pytest.mark.parametrize("name, is_folder", [("train_log.csv", False), ("checkpoints", True)])
def test_a_resumed_run_is_not_written_through_a_link_out_of_it(run, tmp_path, name, is_folder):
    """`dnc train resume=` appends to the log and writes checkpoints: a link out of the run is refused first."""
    outside = tmp_path / "outside"
    if is_folder:
        shutil.copytree(run / name, outside)
        shutil.rmtree(run / name)
    else:
        shutil.copy(run / name, outside)
        (run / name).unlink()
    (run / name).symlink_to(outside, target_is_directory=is_folder)
    refused(tmp_path, "train", f"resume={run}", "epochs=6", words=[name, "symbolic link", "outside"])


def test_a_run_saved_with_a_key_its_dataset_ignores_still_resumes(run):
    """An older dnc accepted `dataset.root=` with digits (ignored); such a run resumes with its own config, while a
    new run with that key is refused (tests/test_measure_command.py)."""
    config = run / "config_resolved.yaml"
    config.write_text(config.read_text().replace("root: data", "root: /data"))
    same = [override for override in TINY if not override.startswith("epochs=")]  # the run's own, one epoch more
    code, stderr = call("train", f"resume={run}", "progress=false", *same, "epochs=5", "checkpoints.schedule=list",
                        "checkpoints.epochs=[0,2,4]", "dataset.root=/data")
    assert code == 0, stderr[-2000:]


@pytest.mark.parametrize("root", ["/", str(Path.home())])
def test_a_whole_filesystem_or_home_is_not_searched(root):
    code, stderr = call("report", f"run_dir={root}")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "does not search" in stderr, stderr


def test_the_search_for_runs_is_bounded(tmp_path):
    from dnc_cli.guards import MAX_SEARCH_DEPTH, find_named

    deep = tmp_path.joinpath(*["d"] * (MAX_SEARCH_DEPTH + 1))
    deep.mkdir(parents=True)
    (deep / "config_resolved.yaml").write_text("seed: 0\n")
    (deep.parent / "config_resolved.yaml").write_text("seed: 0\n")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config_resolved.yaml").write_text("seed: 0\n")
    assert find_named(tmp_path, "config_resolved.yaml") == [deep.parent]


# ---------------------------------------------------------------------------------------------------- 4. parsing
BOMB = "".join([
    "\nbomb_a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    *(f"bomb_{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
      f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8)),
])


@pytest.mark.parametrize("command", ["report", "analyze"])
def test_a_yaml_alias_bomb_is_refused_at_once(command, run, tmp_path):
    config = run / "config_resolved.yaml"
    config.write_text(config.read_text() + BOMB)
    start = time.perf_counter()
    refused(tmp_path, command, f"run_dir={run}", *(["progress=false"] if command == "analyze" else []),
            words=["config_resolved.yaml", "alias"])
    assert time.perf_counter() - start < 30


def test_aliases_in_a_sweep_jobs_overrides_are_refused(run, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(run, sweep / "0")
    (sweep / "0/.hydra/overrides.yaml").write_text("- &a seed=0\n- *a\n")
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - seed=0,1\n")
    refused(tmp_path, "analyze", f"run_dir={sweep}", "epochs=[0,2]", "families=[nc]", "progress=false",
            words=["overrides.yaml", "alias"])


def test_a_yaml_file_larger_than_dnc_writes_is_refused(run, tmp_path):
    from dnc_cli.guards import MAX_YAML_BYTES

    config = run / "config_resolved.yaml"
    config.write_text(config.read_text() + "#" * MAX_YAML_BYTES + "\n")
    refused(tmp_path, "report", f"run_dir={run}", words=["config_resolved.yaml", "bytes"])


@pytest.mark.parametrize("key, value", [("tpt_epoch", '"three"'), ("status", "[1]"), ("final", '"x"')])
def test_summary_values_of_the_wrong_type_are_one_line(key, value, run, tmp_path):
    import json

    summary = json.loads((run / "summary.json").read_text())
    summary[key] = json.loads(value)
    (run / "summary.json").write_text(json.dumps(summary))
    for command in ("plot", "report"):
        refused(tmp_path, command, f"run_dir={run}", words=["summary.json", key])


# ---------------------------------------------------------------------------------------------------- 5. faults
def test_plot_on_a_full_disk_names_the_file(run, tmp_path):
    with unwritable(run / "figures", errno.ENOSPC):
        refused(tmp_path, "plot", f"run_dir={run}", "figures=[nc_metrics]", "formats=[pdf]", "dpi=50",
                words=["cannot write", "nc_metrics.pdf", "No space left on device"])
    assert not list(run.rglob("*.tmp"))


@pytest.mark.parametrize("command, target", [("plot", "dnc_cli.plot.command.plot_run"),
                                             ("report", "dnc_cli.report.command.write_report")])
def test_ctrl_c_during_plot_and_report_is_one_line_and_130(command, target, run, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    code, stderr = call(command, f"run_dir={run}")
    assert code == 130 and stderr.strip() == f"dnc {command}: interrupted", stderr


def test_train_onto_a_full_disk_is_one_line_and_leaves_no_empty_record(tmp_path, monkeypatch):
    """A full disk lets files be created, not written (the log file opens; Hydra's record cannot be written)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    write_text = Path.write_text

    def full(path, *args, **kwargs):
        if Path(path).is_relative_to(disk):
            Path(path).touch()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    code, stderr = call("train", f"hydra.run.dir={disk / 'run'}", "progress=false", *TINY)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "No space left on device" in lines[0], stderr[-2000:]
    assert not [p for p in disk.rglob("*.yaml") if p.stat().st_size == 0]
    assert not list(disk.rglob("*.tmp"))


def test_the_next_run_removes_stale_temporaries_of_its_own(run):
    from dnc_cli.guards import temporary_prefix

    analysis = run / "analysis"
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    stale = [analysis / ".metrics.csv.ab_c1234.tmp",  # before pids were in the name
             analysis / (temporary_prefix(analysis / "metrics.csv").replace(f".{os.getpid()}-", f".{dead}-")
                         + "x1y2z3w4.tmp")]
    kept = [analysis / (temporary_prefix(analysis / "metrics.csv") + "live1234.tmp"),  # a running writer's
            analysis / ".metrics.csv.otherhost.1-abcdefgh.tmp",  # another machine's
            analysis / ".notes.txt.ab_c1234.tmp"]  # not a temporary of a file dnc writes here
    for path in stale + kept:
        path.write_text("partial")
    assert call("analyze", f"run_dir={run}", "progress=false", "families=[nc]", "force=true")[0] == 0
    assert [p.exists() for p in stale] == [False, False]
    assert [p.exists() for p in kept] == [True, True, True]


# ---------------------------------------------------------------------------------------------------- 6. foreign
def test_mnist_files_of_random_bytes_are_one_line(run, tmp_path):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    config = run / "config_resolved.yaml"
    config.write_text(config.read_text().replace("name: digits", "name: mnist", 1)
                      .replace("root: data", f"root: {tmp_path / 'mnist'}", 1))
    refused(tmp_path, "analyze", f"run_dir={run}", "progress=false", "force=true", words=["dataset.root", "mnist"])


def test_reading_keeps_the_traceback_of_our_own_bugs(tmp_path):
    from dnc_cli.errors import reading

    with pytest.raises(AssertionError), reading(tmp_path / "x"):
        raise AssertionError("a bug of ours")
    with pytest.raises(UsageError, match="x is damaged"), reading(tmp_path / "x", library=True):
        raise AssertionError("a reader's check")


# ---------------------------------------------------------------------------------------------------- 7. options
@pytest.mark.parametrize("argv, words", [
    (["plot", "dpi=100000"], ["dpi=100000", "10 to 1200"]),
    (["analyze", "families=[]"], ["families=[] is empty"]),
    (["train", "seed=1,2"], ["seed=1,2", "add -m"]),
])
def test_bad_options_are_one_line(argv, words, tmp_path):
    refused(tmp_path, *argv, f"{'hydra.run.dir' if argv[0] == 'train' else 'run_dir'}={tmp_path}", words=words)


@pytest.mark.parametrize("command", ["analyze", "plot"])
def test_cfg_job_prints_without_checking_run_dir(command, tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code, stderr = call(command, f"run_dir={tmp_path / 'absent'}", "--cfg", "job")
    assert code == 0 and not stderr.strip(), stderr
    assert f"run_dir: {tmp_path / 'absent'}" in out.getvalue()


def test_a_run_inside_another_run_is_refused(run, tmp_path):
    refused(tmp_path, "train", f"hydra.run.dir={run / 'inner'}", *TINY, words=["inside the run", str(run)])
    refused(tmp_path, "train", f"hydra.run.dir={tmp_path}", *TINY, words=["holds the run", str(run)])
    assert not (run / "inner").exists()


def test_deep_rfm_undefined_values_are_warned(tmp_path, capsys):
    """A Deep RFM whose first AGOP projection is zero has constant M^½X features: rows, and one warning."""
    import torch

    run = tmp_path / "rfm"
    assert call("train", "model=deep_rfm", "dataset=synthetic", "dataset.n_available=200", "model.depth=2",
                "model.width=32", f"hydra.run.dir={run}", "progress=false")[0] == 0
    checkpoint = run / "checkpoints" / "epoch_000000.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["rfm_layers"][0]["sqrt_agop"].zero_()
    torch.save(state, checkpoint)
    capsys.readouterr()
    code, stderr = call("analyze", f"run_dir={run}", "progress=false", "force=true")
    assert code == 0, stderr
    logged = capsys.readouterr()
    warnings = [line for line in (logged.out + logged.err).splitlines() if "undefined values" in line]
    assert len(warnings) == 1 and "do not vary" in warnings[0], logged
