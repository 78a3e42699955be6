"""`torchrun --nproc_per_node=2 -m dnc_cli measure` (gloo, CPU) against one process: a model on the digits and an
embeddings file, each with N odd and a class absent from one rank's shard; the API's DataLoaders under a group."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_usage_error, run_cli
from test_distributed import files_below, needs_gloo, ranks_by_hand, torchrun

from dnc_cli import distributed
from dnc_cli.errors import UsageError
from dnc_cli.measure.api import run_measure
from dnc_cli.measure.inputs import Source

# conv + MLP on the 8x8 digits: the conv's patch AGOP, every Linear's SVD stages and AGOP, NC3 (fc2 reads fc1's
# activation) and NC4 (10 outputs)
FACTORY = '''
from torch import nn

def tiny():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(192, 24), nn.ReLU(),
                         nn.Linear(24, 10))
'''
# a factory whose weights depend on the rank (its own seed): ranks that would measure different models
BY_RANK = '''
import os
import torch

def by_rank():
    torch.manual_seed(int(os.environ["RANK"]))
    return tiny()
'''
# 201 training images (odd), 21 test images of 10 classes: with 2 ranks a class is missing from a test shard
MODEL = ["model=tiny_nets:tiny", "layers=[0,3,5]", "dataset.n_train=201", "dataset.n_test=21", "precision=float64",
         "batch_size=16", "progress=false"]
METRIC_FAMILIES = {"nfa": r"nfa_.*", "nc3": "nc3", "nc4": "nc4", "nc1-2, ncc, cdnv": r".*"}


def differences(one, two) -> dict[str, float]:
    """The largest relative difference between two measurements' metrics.parquet per metric family (the rows must
    be the same), and every other file but the Gram sample and the config (out_dir) the same."""
    a, b = (pd.read_parquet(out / "analysis/metrics.parquet") for out in (one, two))
    assert a[a.columns[:5]].equals(b[b.columns[:5]])
    relative = (a.value - b.value).abs() / a.value.abs().clip(lower=1e-300)
    relative[a.value.isna() & b.value.isna()] = 0.0
    found, left = {}, pd.Series(True, index=a.index)
    for family, pattern in METRIC_FAMILIES.items():
        chosen = left & a.metric.str.fullmatch(pattern)
        found[family], left = float(relative[chosen].max()) if chosen.any() else 0.0, left & ~chosen
    for name in ("analysis/layers.csv", "analysis/nc_table.md", "summary.json"):
        assert (one / name).read_text() == (two / name).read_text(), name
    return found


def two_ranks_agree(tmp_path, arguments: list[str]) -> tuple[dict, pd.DataFrame]:
    """The measurement in one process and under torchrun; (differences, the one-process table)."""
    one, two = tmp_path / "one_process", tmp_path / "two_ranks"
    before = files_below(tmp_path)
    result = run_cli("measure", *arguments, f"out_dir={one}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    result = torchrun("-m", "dnc_cli", "measure", *arguments, f"out_dir={two}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"{two}/analysis/metrics.csv") == 1  # rank 0 alone reports
    # rank 1 wrote nothing: no other file than one process writes, here or in the working folder
    assert files_below(two) == files_below(one)
    elsewhere = {name for name in files_below(tmp_path) - before
                 if name.split("/")[0] not in ("one_process", "two_ranks", "__pycache__")}
    assert not elsewhere  # no Hydra output, no log in the working folder
    return differences(one, two), pd.read_parquet(one / "analysis/metrics.parquet")


@pytest.mark.slow
@needs_gloo
def test_torchrun_measure_of_a_model_equals_one_process(tmp_path):
    (tmp_path / "tiny_nets.py").write_text(FACTORY)
    found, table = two_ranks_agree(tmp_path, MODEL)
    assert {"nfa_corr_0.5", "nfa_corr_1", "nc3", "nc4"} <= set(table.metric)
    assert set(table.stage) >= {"", "input", "right", "left", "activation", "agop"}
    summary = json.loads((tmp_path / "two_ranks/summary.json").read_text())
    assert summary["splits"] == {"train": 201, "test": 21}
    assert all(difference <= 1e-12 for difference in found.values()), found


@pytest.mark.slow
@needs_gloo
def test_torchrun_measure_of_embeddings_equals_one_process(tmp_path):
    rng = np.random.default_rng(1)
    # 123 (odd); class 4 has the 2 samples it needs, both in the train split, and one shard lacks it
    labels = np.concatenate([np.repeat(np.arange(4), 30), [0, 4, 4]])
    features = rng.normal(size=(123, 9)) + 3.0 * np.eye(5, 9)[labels]
    split = np.where(np.arange(123) % 4 == 0, "test", "train")
    split[-3:] = "train"
    np.savez(tmp_path / "emb.npz", features=features, labels=labels, split=split,
             predictions=(labels + (np.arange(123) % 7 == 0)) % 5, classifier=rng.normal(size=(5, 9)))
    train = np.flatnonzero(split == "train")
    assert any(4 not in labels[train][index.numpy()] for index in
               (distributed.shard_indices(len(train), r, 2) for r in range(2)))
    found, table = two_ranks_agree(tmp_path, [f"features={tmp_path / 'emb.npz'}"])
    assert {"nc1", "nc2", "nc3", "nc4"} <= set(table.metric)
    assert all(difference <= 1e-12 for difference in found.values()), found


@pytest.mark.slow
@needs_gloo
@pytest.mark.parametrize("differs", ["options", "weights"])
def test_ranks_that_disagree_measure_nothing(tmp_path, differs):
    (tmp_path / "tiny_nets.py").write_text(FACTORY + BY_RANK)
    common = ["measure", f"model=tiny_nets:{'by_rank' if differs == 'weights' else 'tiny'}", "dataset.n_train=50",
              "dataset.n_test=20", "progress=false", "distributed.timeout_s=60", f"out_dir={tmp_path / 'out'}"]
    other = [*common, "nc1.global_mean=weighted"] if differs == "options" else common
    for rank in ranks_by_hand([common, other], cwd=tmp_path):
        assert_usage_error(rank, "ranks disagree", "options and the inputs" if differs == "options" else "weights")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- the API
def _measure_api(model, data, embeddings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """measure() of the model (train: a tensor pair, test: a DataLoader of 4-image batches) and of embeddings."""
    from torch.utils.data import DataLoader, TensorDataset

    from dnc_cli.measure.features import measure_embeddings

    test = DataLoader(TensorDataset(data.test.x, data.test.labels), batch_size=4)
    measured = run_measure(model, num_classes=10, layers=["0", "3", "5"], dtype="float64", progress=False,
                           splits={"train": (data.train.x, data.train.labels), "test": test}, batch_size=16)
    return measured.table, measure_embeddings(embeddings).table


def _api_rank(rank: int, store: str, model, data, embeddings, results: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.save(_measure_api(model, data, embeddings), f"{results}.{rank}")
    torch.distributed.destroy_process_group()


def relative_differences(expected: pd.DataFrame, found: pd.DataFrame) -> dict[str, float]:
    """Per metric family, the largest relative difference of the (unrounded) values; the rows must be the same."""
    assert expected.drop(columns="value").equals(found.drop(columns="value"))
    relative = (expected.value - found.value).abs() / expected.value.abs().clip(lower=1e-300)
    relative[expected.value.isna() & found.value.isna()] = 0.0
    differences, left = {}, pd.Series(True, index=expected.index)
    for family, pattern in METRIC_FAMILIES.items():
        chosen = left & expected.metric.str.fullmatch(pattern)
        differences[family], left = float(relative[chosen].max()) if chosen.any() else 0.0, left & ~chosen
    return differences


@pytest.mark.slow
@needs_gloo
def test_api_over_two_gloo_ranks_equals_one_process(tmp_path):
    """measure() on every rank of a 2-rank group, a tensor pair (sharded) and a DataLoader (dealt by batch), and
    measure_embeddings(): every rank's table equals one process's to 1e-12 relative, before any rounding."""
    from dnc_cli.config import DatasetConfig, DatasetName
    from dnc_cli.data import load_dataset
    from dnc_cli.measure.features import Embeddings

    torch.manual_seed(0)
    namespace: dict = {}
    exec(FACTORY, namespace)
    model = namespace["tiny"]().double()
    data = load_dataset(DatasetConfig(name=DatasetName.digits, n_train=201, n_test=21), seed=0)
    rng = np.random.default_rng(1)
    labels = torch.tensor(np.concatenate([np.repeat(np.arange(4), 30), [0, 4, 4]]))  # 2 of class 4 (measure's least)
    embeddings = Embeddings(torch.tensor(rng.normal(size=(123, 9))) + 3.0 * torch.eye(5, 9)[labels], labels,
                            predictions=(labels + 1) % 5, classifier=torch.tensor(rng.normal(size=(5, 9))))
    expected = _measure_api(model, data, embeddings)
    torch.multiprocessing.spawn(_api_rank, nprocs=2, args=(str(tmp_path / "store"), model, data, embeddings,
                                                           str(tmp_path / "out")))
    for rank in (0, 1):
        found = torch.load(tmp_path / f"out.{rank}", weights_only=False)
        for which, table, reference in zip(("model", "embeddings"), found, expected):
            differences = relative_differences(reference, table)
            assert all(difference <= 1e-12 for difference in differences.values()), (which, differences)


def test_loaders_are_dealt_by_batch_and_tensors_by_sample(monkeypatch):
    """Under a group of 3 (faked): rank 1 measures the batches 1, 4, ... of a loader and its shard of a tensor pair;
    a loader of fewer batches than ranks is refused."""
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr("dnc_cli.measure.inputs.world_size", lambda: 3)
    monkeypatch.setattr("dnc_cli.measure.inputs.rank", lambda: 1)
    batches = [(torch.full((2, 1), float(i)), torch.zeros(2, dtype=torch.int64)) for i in range(8)]
    source = Source("train", batches, 4)
    assert source.num_batches == 3 and [float(x[0, 0]) for x, _ in source] == [1.0, 4.0, 7.0]
    assert len(list(Source("train", batches, 4, sharded=True))) == 8  # each rank's own part: measured whole
    x, y = torch.arange(10.0)[:, None], torch.arange(10) % 2
    rows = torch.cat([x for x, _ in Source("train", (x, y), 2)])
    assert torch.equal(rows[:, 0].long(), distributed.shard_indices(10, 1, 3))
    with pytest.raises(UsageError, match="len\\(\\) of at least 3 batches"):
        Source("test", batches[:2], 4)
