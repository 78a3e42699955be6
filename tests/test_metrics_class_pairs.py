"""dnc_cli/metrics/class_pairs.py and NeuralCollapse at many classes: the patched K x K metrics (cdnv, nc2,
nc2_gram, nc3) and the patched nearest-centre distances against naive float64 formulas on whole K x K matrices, with
more classes than a patch and more classes than features; the answer does not move with the patch size; close
class means keep their CDNV."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dnc_cli.metrics import class_pairs, collapse
from dnc_cli.metrics.collapse import ClassMeans, NeuralCollapse, nc3


def _naive(features, labels, classifier):
    """Every metric of class pairs from whole K x K float64 matrices, straight from PAPER.md's formulas."""
    f, y = features.double().numpy(), labels.numpy()
    num_classes = int(y.max()) + 1
    means = np.stack([f[y == k].mean(0) for k in range(num_classes)])
    centred = means - means.mean(0)
    variances = np.array([np.square(f[y == k] - means[k]).sum(1).mean() for k in range(num_classes)])
    diff = centred[:, None, :] - centred[None, :, :]
    sq = np.square(diff).sum(-1)
    upper = np.triu_indices(num_classes, 1)
    cdnv = np.mean((variances[:, None] + variances[None, :])[upper] / (2 * sq[upper]))
    directions = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    gram = directions @ directions.T
    target = (np.eye(num_classes) - 1 / num_classes) / math.sqrt(num_classes - 1)
    nc2 = np.linalg.norm(gram / np.linalg.norm(gram) - target)
    etf = (1 + 1 / (num_classes - 1)) * np.eye(num_classes) - 1 / (num_classes - 1)
    nc2_gram = np.mean(np.square(gram - etf))
    product = classifier.double().numpy() @ centred.T
    nc3_value = np.linalg.norm(product / np.linalg.norm(product) - target)
    nearest = np.square(f[:, None, :] - means[None, :, :]).sum(-1).argmin(1)
    return {"cdnv": cdnv, "nc2": nc2, "nc2_gram": nc2_gram, "nc3": nc3_value, "ncc_acc": np.mean(nearest == y)}


def _measured(features, labels, num_classes, classifier):
    means = ClassMeans(num_classes)
    means.update(features, labels)
    result = means.compute()
    collapse_sums = NeuralCollapse(result)
    for start in range(0, len(labels), 97):
        collapse_sums.update(features[start:start + 97], labels[start:start + 97])
    return {**collapse_sums.compute(), "nc3": nc3(classifier, result)}


@pytest.mark.parametrize("num_classes, dim", [(600, 24), (300, 400)])  # K > m (QR norms), K > a patch, m > K
def test_many_classes_match_whole_matrix_formulas(num_classes, dim):
    generator = torch.Generator().manual_seed(num_classes)
    centres = 3 * torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    labels = torch.arange(3 * num_classes) % num_classes
    features = centres[labels] + torch.randn(len(labels), dim, generator=generator, dtype=torch.float64)
    classifier = centres + 0.5 * torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    got = _measured(features, labels, num_classes, classifier)
    for name, value in _naive(features, labels, classifier).items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_the_patch_size_does_not_move_the_answer(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    num_classes, dim = 40, 6
    labels = torch.arange(400) % num_classes
    features = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)[labels] + \
        0.3 * torch.randn(400, dim, generator=generator, dtype=torch.float64)
    classifier = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    whole = _measured(features, labels, num_classes, classifier)
    for patch in (1, 7):
        monkeypatch.setattr(class_pairs, "CLASS_PATCH", patch)
        monkeypatch.setattr(collapse, "CLASS_PATCH", patch)
        patched = _measured(features, labels, num_classes, classifier)
        for name, value in whole.items():
            assert patched[name] == pytest.approx(value, rel=1e-11, abs=1e-14), (patch, name)


def test_close_class_means_keep_their_cdnv():
    """Two classes 1e-6 apart, 100 away from the others: ||a - b||^2 is 1e-8 of ||a||^2 + ||b||^2, where the
    GEMM expansion keeps no digit; the direct differences keep them."""
    means = torch.tensor([[100.0, 0, 0], [-100.0, 0, 0], [0, 100.0, 0], [0, 100.0, 1e-6]], dtype=torch.float64)
    variances = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    expected = np.mean([(variances[i] + variances[j]).item() / (2 * float((means[i] - means[j]).square().sum()))
                        for i, j in pairs])
    assert class_pairs.cdnv(variances, means - means.mean(0)) == pytest.approx(expected, rel=1e-6)
