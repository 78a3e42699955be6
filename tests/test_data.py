"""dnc_cli/data.py: subsets, standardisation, random labels and targets (the torchvision path: test_train_network)."""

from __future__ import annotations

import pytest
import torch

from dnc_cli.config import DatasetConfig, RandomLabelMode
from dnc_cli.data import load_dataset, randomize_labels, targets


def test_balanced_subset_and_standardisation():
    data = load_dataset(DatasetConfig(n_train=500, n_test=100), seed=0)
    counts = torch.bincount(data.train.labels, minlength=10)
    assert counts.tolist() == [50] * 10
    assert data.train.x.shape == (500, 1, 8, 8) and data.test.x.shape == (100, 1, 8, 8)
    flat = data.train.x.flatten(1)
    varying = flat.std(0) > 0
    torch.testing.assert_close(flat.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(0)[varying], torch.ones(int(varying.sum())), atol=1e-5, rtol=0)
    assert (flat[:, ~varying] == 0).all()  # constant pixels map to 0, never NaN
    assert not data.test.x.isnan().any()
    # the test split uses the training statistics, so its mean is not exactly 0
    assert data.test.x.flatten(1).mean(0).abs().max() > 1e-3


def test_unbalanced_subset_takes_the_first_samples():
    full = load_dataset(DatasetConfig(), seed=0)
    first = load_dataset(DatasetConfig(n_train=100, balanced=False, standardize="none"), seed=0)
    raw = load_dataset(DatasetConfig(standardize="none"), seed=0)
    assert torch.equal(first.train.labels, full.train.labels[:100])
    assert torch.equal(first.train.x, raw.train.x[:100])


@pytest.mark.parametrize("mode", [RandomLabelMode.balanced, RandomLabelMode.iid])
def test_random_labels(mode):
    labels = torch.arange(1000) % 10
    new, relabelled = randomize_labels(labels, 0.5, mode, 10, seed=3)
    assert int(relabelled.sum()) == 500
    assert torch.equal(new[~relabelled], labels[~relabelled])
    if mode == RandomLabelMode.balanced:  # a permutation of the multiset: class sizes unchanged
        assert torch.equal(torch.bincount(new), torch.bincount(labels))
    assert (new[relabelled] != labels[relabelled]).float().mean() > 0.7  # really re-drawn
    again, _ = randomize_labels(labels, 0.5, mode, 10, seed=3)
    assert torch.equal(new, again)  # seeded


def test_targets():
    labels = torch.tensor([0, 2])
    assert targets(labels, 3, "mse").tolist() == [[1, -1, -1], [-1, -1, 1]]
    assert torch.equal(targets(labels, 3, "ce"), labels)
