"""dnc_cli/measure/features.py: embeddings files in every format against naive metrics, and bad files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dnc_cli.errors import UsageError
from dnc_cli.measure.features import load_embeddings, measure_embeddings


def _rows(table: pd.DataFrame) -> dict:
    return {(r.split, r.layer, r.stage, r.metric): r.value for r in table.itertuples()}


# ------------------------------------------------------------------------------------ embeddings
def write_embeddings(folder):
    """The same 100 x 12 embeddings (4 classes, a train/test split column) as emb.npz, emb.pt and emb.parquet."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    features = rng.normal(size=(100, 12)) + 2.0 * np.eye(4, 12)[labels]
    split = np.where(np.arange(100) % 5 == 0, "test", "train")
    np.savez(folder / "emb.npz", embeddings=features, labels=labels, split=split)
    torch.save({"features": torch.tensor(features), "y": torch.tensor(labels), "split": split.tolist()},
               folder / "emb.pt")
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(12)]).assign(label=labels, split=split)
    frame.to_parquet(folder / "emb.parquet")
    return features, labels, split


def test_embeddings_in_every_format_match_naive_metrics(tmp_path):
    from test_analyze_network import naive_nc

    features, labels, split = write_embeddings(tmp_path)
    tables = [_rows(measure_embeddings(load_embeddings(tmp_path / name)).table)
              for name in ("emb.npz", "emb.pt", "emb.parquet")]
    assert tables[0].keys() == tables[1].keys() == tables[2].keys()
    for which in ("train", "test"):
        chosen = split == which
        expected = naive_nc(torch.tensor(features[chosen]), torch.tensor(labels[chosen]),
                            torch.zeros(int(chosen.sum()), dtype=torch.int64), 4)
        for metric in ("nc1", "nc1_trace", "nc2", "ncc_acc"):
            for table in tables:
                assert table[(which, 1, "", metric)] == pytest.approx(expected[metric], rel=1e-6)


def test_bad_embeddings_files(tmp_path):
    labels = np.arange(10) % 2
    np.savez(tmp_path / "unlabelled.npz", embeddings=np.ones((10, 3)))
    np.savez(tmp_path / "short.npz", embeddings=np.ones((10, 3)), labels=labels[:7])
    for name, needle in (("unlabelled.npz", "has no labels"), ("short.npz", "features has 10 rows but labels has 7"),
                         ("missing.npz", "does not exist"), ("emb.csv", "unknown format")):
        with pytest.raises(UsageError, match=needle):
            load_embeddings(tmp_path / name)




def test_gram_sample_quota_with_many_classes():
    from dnc_cli.measure.stats import gram_sample_rows

    labels = torch.arange(20_000) % 5_000
    rows = gram_sample_rows(labels, 5_000, 30)  # 4,096 at most: 1 per class, the first 4,096 classes
    assert torch.equal(labels[rows], torch.arange(4_096)) and torch.equal(rows, torch.arange(4_096))
    labels = torch.arange(100) % 10
    rows = gram_sample_rows(labels, 10, 3)  # few classes: the first 3 of each, class by class
    assert torch.equal(rows, torch.tensor([k + 10 * j for k in range(10) for j in range(3)]))
