"""dnc_cli/distributed.py and the accumulators' sync(): the sharding, the accumulators synchronised over two gloo
ranks against one process, `torchrun --nproc_per_node=2 -m dnc_cli analyze` against one process, and the ways a
process group fails (cannot form, ranks that disagree, a rank that dies or hangs)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, assert_usage_error, run_cli
from test_analyze_sweeps import dnc

from dnc_cli import distributed
from dnc_cli.data import load_dataset
from dnc_cli.metrics.agop import LayerAGOPs
from dnc_cli.metrics.collapse import ClassMeans, NeuralCollapse
from dnc_cli.runs import read_run_config

needs_gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="this torch has no gloo backend (torch.distributed.is_gloo_available())")
# the run: 201 training samples (odd), and a test split of 21 samples for 10 classes (2 or 3 each), so that with 2
# ranks some class is absent from a shard; float64 so that the comparison is down to the order of additions
RUN = ["model.width=40", "model.depth=3", "model.init_gain=1.0", "epochs=4", "dataset.n_train=201",
       "dataset.n_test=21", "checkpoints.schedule=every", "checkpoints.every=2"]
ANALYSIS = ["precision=float64", "progress=false"]


# ---------------------------------------------------------------------------------------------------- in process
@pytest.mark.parametrize("num_shards", [1, 2, 3, 5])
@pytest.mark.parametrize("num_samples", [5, 11, 201, 1000])
def test_shards_cover_every_sample_once(num_samples, num_shards):
    shards = [distributed.shard_indices(num_samples, r, num_shards) for r in range(num_shards)]
    assert torch.equal(torch.cat(shards).sort().values, torch.arange(num_samples))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert all(torch.equal(s, distributed.shard_indices(num_samples, r, num_shards)) for r, s in enumerate(shards))
    assert all(torch.equal(s, s.sort().values) for s in shards)  # each shard in the data's order


def test_one_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched_as_ranks()
    with distributed.process_group(1.0, torch.device("cpu")) as device:
        assert device == torch.device("cpu") and distributed.world_size() == 1 and distributed.is_writer()
        assert distributed.shard(7) == slice(None)
        state = torch.ones(3, dtype=torch.float64)
        distributed.all_reduce_sum([state])
        assert torch.equal(state, torch.ones(3, dtype=torch.float64))
        distributed.require_agreement("anything", 1, [2])


def _split(labels: torch.Tensor, num_shards: int):
    return [distributed.shard_indices(len(labels), r, num_shards) for r in range(num_shards)]


def _accumulate(model, x, labels, num_classes, index=slice(None), sync=False):
    """The two passes over h_1 of `model` and its AGOPs, on the samples `index`, synchronised when asked."""
    with torch.no_grad():
        h0 = model.embed(x[index])
    agops, means = LayerAGOPs(model, shift_inputs=model.embed(x[:10])), ClassMeans(num_classes)
    trace = agops.update(h0)
    means.update(trace.outputs[0], labels[index])
    if sync:
        distributed.sync_all([means, agops])
    collapse = NeuralCollapse(means.compute())
    collapse.update(trace.outputs[0], labels[index], trace.logits.argmax(1))
    if sync:
        collapse.sync()
    dtypes = [t.dtype for t in means.sum_states() + agops.sum_states() + collapse.sum_states()]
    return collapse.compute(), agops.compute(), dtypes


def _rank_of_two(rank: int, store: str, model, x, labels, results: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    metrics, agops, dtypes = _accumulate(model, x, labels, 4, distributed.shard(len(labels)), sync=True)
    torch.save({"metrics": metrics, "agops": agops, "dtypes": dtypes}, f"{results}.{rank}")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
@needs_gloo
def test_accumulators_sync_over_two_gloo_ranks(tmp_path, random_net_and_data):
    """Two ranks, each on its shard of 119 samples (odd) in which class 3 has a single sample, so that it is absent
    from one shard: after sync() every rank computes one process's metrics and AGOPs, and float64 stays float64."""
    model, data = random_net_and_data
    x, labels = data.train.x[:119], data.train.labels[:119].clone()
    labels[labels == 3] = 0
    labels[0] = 3
    assert any(not (labels[index] == 3).any() for index in _split(labels, 2))
    expected, expected_agops, _ = _accumulate(model, x, labels, 4)
    torch.multiprocessing.spawn(_rank_of_two, args=(str(tmp_path / "store"), model, x, labels, str(tmp_path / "out")),
                                nprocs=2)
    for rank in (0, 1):
        found = torch.load(tmp_path / f"out.{rank}", weights_only=False)
        assert found["metrics"].keys() == expected.keys()
        for name, value in expected.items():
            assert found["metrics"][name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
        for agop, reference in zip(found["agops"], expected_agops):
            assert torch.allclose(agop, reference, rtol=1e-12, atol=1e-15 * reference.abs().max())
        assert set(found["dtypes"]) == {torch.float64, torch.int64}


# ---------------------------------------------------------------------------------------------------- torchrun
def torchrun(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 <args>` (a free port of its own), one thread per rank."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def tables_agree(one: Path, two: Path) -> float:
    """The largest relative difference between two runs' metrics.parquet; the rows and every other file of the
    analysis must be the same."""
    a, b = (pd.read_parquet(run / "analysis/metrics.parquet") for run in (one, two))
    assert a[a.columns[:5]].equals(b[b.columns[:5]])
    relative = (a.value - b.value).abs() / a.value.abs().clip(lower=1e-300)
    relative[a.value.isna() & b.value.isna()] = 0.0
    for name in ("nc_table.md", "settings.json"):
        assert (one / "analysis" / name).read_text() == (two / "analysis" / name).read_text(), name
    grams = [np.load(next((run / "analysis").glob("gram_*.npz"))) for run in (one, two)]
    assert all(np.array_equal(grams[0][key], grams[1][key]) for key in grams[0].files)
    return float(relative.max())


def files_below(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """A trained run (RUN) and its single-process float64 analysis."""
    root = tmp_path_factory.mktemp("odd")
    result = run_cli("train", *RUN, "progress=false", f"hydra.run.dir={root / 'run'}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(root / "run", root / "one_process")
    dnc("analyze", f"run_dir={root / 'one_process'}", *ANALYSIS)
    return root


@pytest.mark.slow
@needs_gloo
def test_torchrun_table_equals_one_process(odd_run):
    data = load_dataset(read_run_config(odd_run / "run").dataset, seed=0)
    assert len(data.train.labels) % 2 == 1  # N not divisible by the 2 ranks
    # the test split: 21 samples of 10 classes, and a class absent from a shard
    assert any(len(data.test.labels[index].unique()) < 10 for index in _split(data.test.labels, 2))

    two = odd_run / "two_ranks"
    shutil.copytree(odd_run / "run", two)
    result = torchrun("-m", "dnc_cli", "analyze", f"run_dir={two}", *ANALYSIS, cwd=odd_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert tables_agree(odd_run / "one_process", two) <= 1e-12
    # rank 1 wrote nothing: no other file (no Hydra output, no log) than one process writes
    assert files_below(two) == files_below(odd_run / "one_process")
    assert result.stdout.count(f"{two}/analysis/metrics.csv") == 1  # rank 0 alone reports


# ---------------------------------------------------------------------------------------------------- failures
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ranks_by_hand(arguments: list[list[str]], cwd: Path, env: dict | None = None, script: str | None = None,
                  timeout: int = 120) -> list[subprocess.CompletedProcess]:
    """Start one process per argument list as ranks 0, 1, ... of a gloo group (the environment torchrun would give),
    wait for all, and return them with their wall time as `.seconds`."""
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(len(arguments)), **(env or {})}
    program = [sys.executable, script] if script else [sys.executable, "-m", "dnc_cli"]
    started = time.monotonic()
    processes = [subprocess.Popen([*program, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)})
                 for rank, args in enumerate(arguments)]
    results = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        result.seconds = time.monotonic() - started
        results.append(result)
    return results


@pytest.mark.slow
@needs_gloo
def test_a_group_that_cannot_form(tmp_path, tiny_run):
    alone = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    result = subprocess.run([sys.executable, "-m", "dnc_cli", "analyze", f"run_dir={tiny_run}",
                             "distributed.timeout_s=2"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, **alone})
    assert_usage_error(result, "MASTER_ADDR=127.0.0.1", f"MASTER_PORT={alone['MASTER_PORT']}", "rank 1")
    result = subprocess.run([sys.executable, "-m", "dnc_cli", "analyze", f"run_dir={tiny_run}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "WORLD_SIZE": "2"})
    assert_usage_error(result, "MASTER_ADDR", "MASTER_PORT", "torchrun")
    assert not (tiny_run / "analysis").exists()


@pytest.mark.slow
@needs_gloo
def test_ranks_that_disagree_refuse_before_any_work(tmp_path, tiny_run):
    common = ["analyze", f"run_dir={tiny_run}", "distributed.timeout_s=60"]
    for rank in ranks_by_hand([common, [*common, "nc1.global_mean=weighted"]], cwd=tmp_path):
        assert_usage_error(rank, "ranks disagree", "options and the runs")
    assert not (tiny_run / "analysis").exists()


@pytest.mark.slow
@needs_gloo
@pytest.mark.parametrize("failure", ["dies", "hangs"])
def test_a_rank_that_fails_mid_analysis_ends_the_others(tmp_path, tiny_run, failure):
    """Rank 1 dies (or hangs) in its second all-reduce, inside the first checkpoint: rank 0 exits with one line within
    the timeout (at once when rank 1's sockets close), and no table is written."""
    arguments = ["analyze", f"run_dir={tiny_run}", "distributed.timeout_s=5"]
    env = {"DNC_TEST_HANG": "15"} if failure == "hangs" else {}  # hangs 3x the timeout, then dies
    rank_0, rank_1 = ranks_by_hand([arguments, arguments], cwd=tmp_path, script=str(REPO / "tests/failing_rank.py"),
                                   env=env, timeout=60)
    assert_usage_error(rank_0, "rank 0 of 2", "died or hung", "rerun")
    assert rank_0.seconds < rank_1.seconds - 5 if failure == "hangs" else rank_0.seconds < 45  # ended by the timeout
    assert rank_1.returncode != 0
    assert not (tiny_run / "analysis").exists()


@pytest.mark.slow
@needs_gloo
def test_torchrun_ends_every_rank_when_one_dies(tmp_path, tiny_run):
    result = torchrun(str(REPO / "tests/failing_rank.py"), "analyze", f"run_dir={tiny_run}",
                      "distributed.timeout_s=30", cwd=tmp_path)
    assert result.returncode != 0
    assert not (tiny_run / "analysis").exists()
