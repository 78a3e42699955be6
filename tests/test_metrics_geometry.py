"""dnc_cli/metrics/geometry.py against naive float64 references (numpy, explicit loops, straight from the formulas
in the module's docstring and the README) and closed forms: a simplex ETF (equinorm 0, gnc2 at its minimum
-(1/2) log(2K/(K-1)), unc3 0 for a self-dual classifier), identity covariances (effective rank m)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import random_orthogonal

from dnc_cli.metrics.collapse import ClassMeans
from dnc_cli.metrics.geometry import (
    GEOMETRY_METRICS,
    WithinScatter,
    effective_rank,
    equinorm,
    gnc2,
    gnc2_simplex_etf,
    unc3,
)


# ------------------------------------------------------------------------------------------------ naive references
def naive_cv(values) -> float:
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(variance) / mean


def naive_class_means(features: np.ndarray, labels: np.ndarray):
    classes = sorted(set(labels.tolist()))
    means = np.array([features[labels == c].mean(0) for c in classes])
    return classes, means, means - means.mean(0)  # unweighted global mean


def naive_equinorm(centred: np.ndarray) -> float:
    return naive_cv([math.sqrt(sum(x * x for x in row)) for row in centred])


def naive_gnc2(centred: np.ndarray) -> float:
    directions = [row / np.linalg.norm(row) for row in centred]
    energies = [math.log(1.0 / np.linalg.norm(directions[i] - directions[j]))
                for i in range(len(directions)) for j in range(i + 1, len(directions))]
    return sum(energies) / len(energies)


def naive_unc3(weight: np.ndarray, centred: np.ndarray) -> float:
    cosines = [float(w @ mu) / (np.linalg.norm(w) * np.linalg.norm(mu)) for w, mu in zip(weight, centred)]
    return naive_cv(cosines)


def naive_effective_rank(matrix: np.ndarray) -> float:
    eigenvalues = np.clip(np.linalg.eigvalsh(matrix), 0.0, None)
    p = eigenvalues / eigenvalues.sum()
    return math.exp(-sum(q * math.log(q) for q in p if q > 0))


def naive_covariances(features: np.ndarray, labels: np.ndarray):
    """Sigma_W (1/N sum of outer products around the class means) and Sigma_T = Sigma_W + Sigma_B (PAPER.md)."""
    classes, means, centred = naive_class_means(features, labels)
    m = features.shape[1]
    within = np.zeros((m, m))
    for x, y in zip(features, labels):
        r = x - means[classes.index(y)]
        within += np.outer(r, r)
    within /= len(labels)
    between = sum(np.outer(mu, mu) for mu in centred) / len(classes)
    return within, within + between


def make_data(num_samples=400, dim=12, num_classes=7, seed=0):
    gen = np.random.default_rng(seed)
    labels = gen.integers(0, num_classes, num_samples)
    labels[:num_classes] = np.arange(num_classes)  # every class present
    centres = 3.0 * gen.standard_normal((num_classes, dim))
    scales = gen.uniform(0.2, 2.0, dim)  # an anisotropic within-class spread
    features = centres[labels] + gen.standard_normal((num_samples, dim)) * scales + 4.0
    return features, labels


def class_means_of(features: np.ndarray, labels: np.ndarray, num_classes: int):
    accumulator = ClassMeans(num_classes)
    accumulator.update(torch.from_numpy(features), torch.from_numpy(labels))
    return accumulator.compute()


def scatter_metrics(features, labels, num_classes, batch=None, **options):
    means = class_means_of(features, labels, num_classes)
    scatter = WithinScatter(means)
    batch = batch or len(labels)
    for start in range(0, len(labels), batch):
        scatter.update(torch.from_numpy(features[start:start + batch]), torch.from_numpy(labels[start:start + batch]))
    return scatter.compute(**options)


def simplex_etf(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """K centred means forming a simplex ETF in R^dim (K <= dim + 1 is not needed: K <= dim here), randomly
    rotated, of norm 2.5."""
    etf = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes  # rows: a simplex ETF in R^K
    etf = etf / etf.norm(dim=1, keepdim=True) * 2.5
    embedded = torch.zeros(num_classes, dim, dtype=torch.float64)
    embedded[:, :num_classes] = etf
    return embedded @ random_orthogonal(dim, seed).T


# ------------------------------------------------------------------------------------------------ against the naive
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_means_metrics_match_the_naive_reference(seed):
    features, labels = make_data(seed=seed)
    _, _, centred = naive_class_means(features, labels)
    means = class_means_of(features, labels, 7)
    assert equinorm(means.centred_means()) == pytest.approx(naive_equinorm(centred), rel=1e-10)
    assert gnc2(means.centred_means()) == pytest.approx(naive_gnc2(centred), rel=1e-10)
    weight = np.random.default_rng(seed + 10).standard_normal(centred.shape) + centred  # a noisy dual classifier
    assert unc3(torch.from_numpy(weight), means) == pytest.approx(naive_unc3(weight, centred), rel=1e-10)


@pytest.mark.parametrize("patch_size", [1, 3, 7, 64, 1024])
def test_gnc2_tiles_give_the_untiled_value(patch_size):
    """The tiling over pairs of classes (diagonal tiles: their upper triangle) covers every pair exactly once."""
    centred = torch.from_numpy(np.random.default_rng(5).standard_normal((50, 9)))
    assert gnc2(centred, patch_size=patch_size) == pytest.approx(naive_gnc2(centred.numpy()), rel=1e-10)


def test_gnc2_of_close_directions_from_their_difference():
    """Two directions 1e-7 apart: 2 - 2 u.u' would keep ~2% of their squared distance (1e-14 against a rounding of
    ~2e-16), an error of ~1e-2 in log(1/d); the difference keeps it to ~1e-9."""
    first = np.array([1.0, 0.0, 0.0])
    second = np.array([1.0, 1e-7, 0.0])
    third = np.array([-1.0, 0.3, 0.5])
    centred = np.stack([first, second, third]) * 3.0
    value = gnc2(torch.from_numpy(centred))
    assert value == pytest.approx(naive_gnc2(centred), rel=1e-6)
    assert value > 4.5  # (log(1/1e-7) + two pairs at distance ~1.5) / 3: the close pair dominates


def test_gnc2_of_coinciding_directions_is_infinite():
    centred = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert gnc2(centred) == math.inf


@pytest.mark.parametrize("seed", [0, 3])
def test_effective_ranks_match_the_naive_reference(seed):
    features, labels = make_data(seed=seed)
    within, total = naive_covariances(features, labels)
    found = scatter_metrics(features, labels, 7, batch=37)  # several batches
    assert found["erank_within"] == pytest.approx(naive_effective_rank(within), rel=1e-10)
    assert found["erank_total"] == pytest.approx(naive_effective_rank(total), rel=1e-10)


def test_effective_ranks_with_the_official_scaling():
    """Sigma_W / K is a scale: erank_within is unchanged; erank_total is of Sigma_W / K + Sigma_B."""
    features, labels = make_data(seed=4)
    within, _ = naive_covariances(features, labels)
    _, _, centred = naive_class_means(features, labels)
    between = centred.T @ centred / 7
    found = scatter_metrics(features, labels, 7, official_scaling=True)
    assert found["erank_within"] == pytest.approx(naive_effective_rank(within), rel=1e-10)
    assert found["erank_total"] == pytest.approx(naive_effective_rank(within / 7 + between), rel=1e-10)


# ------------------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("num_classes, dim", [(2, 3), (5, 5), (10, 32)])
def test_simplex_etf_closed_forms(num_classes, dim):
    centred = simplex_etf(num_classes, dim)
    means = torch.cat([centred + 1.5, torch.zeros(0, dim, dtype=torch.float64)])  # translated: mu_G = 1.5
    assert equinorm(centred) < 1e-12
    assert gnc2(centred) == pytest.approx(gnc2_simplex_etf(num_classes), rel=1e-12)
    from dnc_cli.metrics.collapse import ClassMeansResult

    result = ClassMeansResult(means=means, counts=torch.ones(num_classes, dtype=torch.int64))
    scales = torch.linspace(0.5, 3.0, num_classes, dtype=torch.float64)[:, None]  # self-dual up to per-class scales
    assert unc3(scales * centred, result) < 1e-12


def test_gnc2_is_smallest_at_the_simplex_etf():
    """The ETF value is a lower bound for K <= m + 1 unit vectors (Jensen, module docstring): random configurations
    sit clearly above it, and a nearly-ETF one just above."""
    bound = gnc2_simplex_etf(6)
    for seed in range(5):
        centred = torch.from_numpy(np.random.default_rng(seed).standard_normal((6, 8)))
        assert gnc2(centred) > bound + 1e-3
    perturbed = simplex_etf(6, 8) + 1e-3 * torch.from_numpy(np.random.default_rng(9).standard_normal((6, 8)))
    assert bound < gnc2(perturbed) < bound + 1e-4


def test_effective_rank_closed_forms():
    assert effective_rank(torch.ones(17)) == pytest.approx(17.0, rel=1e-12)  # c I_m: m
    assert effective_rank(torch.tensor([4.0, 4.0, 4.0, 0.0, 0.0])) == pytest.approx(3.0, rel=1e-12)  # rank 3
    assert effective_rank(torch.tensor([2.0, 0.0, -1e-18])) == pytest.approx(1.0, rel=1e-12)  # rounding's negatives
    assert math.isnan(effective_rank(torch.zeros(4)))


def test_identity_within_class_covariance_has_effective_rank_m():
    """Each class: mu_k +- sqrt(m) e_j for j = 1..m, so Sigma_W = (1/N) sum = I_m exactly in exact arithmetic."""
    dim, num_classes = 6, 4
    centres = np.random.default_rng(1).standard_normal((num_classes, dim)) * 5.0
    steps = np.concatenate([np.eye(dim), -np.eye(dim)]) * math.sqrt(dim)
    features = np.concatenate([centre + steps for centre in centres])
    labels = np.repeat(np.arange(num_classes), 2 * dim)
    within, _ = naive_covariances(features, labels)
    np.testing.assert_allclose(within, np.eye(dim), atol=1e-12)
    found = scatter_metrics(features, labels, num_classes)
    assert found["erank_within"] == pytest.approx(dim, rel=1e-10)


def test_within_scatter_refuses_wide_representations(monkeypatch):
    import dnc_cli.metrics.geometry as geometry

    monkeypatch.setattr(geometry, "ERANK_MAX_FEATURES", 8)
    features, labels = make_data(dim=9)
    with pytest.raises(ValueError, match="m x m"):
        WithinScatter(class_means_of(features, labels, 7))


def test_the_metric_names_are_the_ones_computed():
    features, labels = make_data()
    means = class_means_of(features, labels, 7)
    from dnc_cli.metrics.geometry import geometry_of_means

    names = set(geometry_of_means(means.centred_means())) | set(scatter_metrics(features, labels, 7)) | {"unc3"}
    assert names == set(GEOMETRY_METRICS)
