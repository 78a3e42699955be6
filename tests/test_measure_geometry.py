"""The `geometry` family in `measure` and `dnc measure` (dnc_cli/metrics/geometry.py wired through the session,
SplitStats and embeddings files): its rows against the naive float64 references of tests/test_metrics_geometry.py on
the features the layers really output, which families give which rows, wide layers, and `dnc analyze`'s refusal."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from test_metrics_geometry import (
    naive_class_means,
    naive_covariances,
    naive_effective_rank,
    naive_equinorm,
    naive_gnc2,
    naive_unc3,
)
from torch import nn

from dnc_cli.config import AnalyzeConfig, validate_analyze
from dnc_cli.errors import UsageError
from dnc_cli.measure import run_measure
from dnc_cli.measure.features import Embeddings, measure_embeddings
from dnc_cli.metrics.geometry import GEOMETRY_METRICS


def _rows(table) -> dict:
    return {(r.split, r.layer, r.stage, r.metric): r.value for r in table.itertuples()}


def _net_and_data(num_classes=4):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, num_classes))
    x = torch.randn(90, 10, dtype=torch.float64) + 2.0 * torch.eye(num_classes, 10, dtype=torch.float64)[
        torch.arange(90) % num_classes]
    return net.double(), x, torch.arange(90) % num_classes


def _outputs(net, x, index):
    with torch.no_grad():
        return net[: index + 1](x).numpy()


def test_geometry_rows_match_the_naive_reference_on_each_layers_features():
    net, x, y = _net_and_data()
    rows = _rows(run_measure(net, (x, y), 4, batch_size=32, progress=False).table)
    for layer, index in ((1, 0), (2, 2), (3, 4)):  # the table's layer l is the l-th nn.Linear; stage "" its output
        features, labels = _outputs(net, x, index), y.numpy()
        _, _, centred = naive_class_means(features, labels)
        within, total = naive_covariances(features, labels)
        expected = {"equinorm": naive_equinorm(centred), "gnc2": naive_gnc2(centred),
                    "erank_within": naive_effective_rank(within), "erank_total": naive_effective_rank(total)}
        for metric, value in expected.items():
            assert rows[("train", layer, "", metric)] == pytest.approx(value, rel=1e-9), (layer, metric)
    # unc3 beside nc3: where the classifier (layer 3) reads the representation, the `input` stage of layer 3
    features = nn.functional.relu(torch.from_numpy(_outputs(net, x, 2))).numpy()
    _, _, centred = naive_class_means(features, y.numpy())
    expected = naive_unc3(net[4].weight.detach().numpy(), centred)
    assert rows[("train", 3, "input", "unc3")] == pytest.approx(expected, rel=1e-9)
    assert ("train", 3, "input", "nc3") in rows


def test_the_families_choose_the_rows():
    net, x, y = _net_and_data()
    only_nc = set(run_measure(net, (x, y), 4, families=["nc"], progress=False).table.metric)
    assert not only_nc & set(GEOMETRY_METRICS) and {"nc1", "nc2", "nc4"} <= only_nc
    only_geometry = run_measure(net, (x, y), 4, layers=["4"], families=["geometry"], progress=False).table
    assert set(only_geometry.metric) == set(GEOMETRY_METRICS) - {"unc3"}  # no svd: no `input` stage for unc3
    assert set(only_geometry.stage) == {""}


def test_a_layer_wider_than_the_erank_limit_has_no_erank_rows(monkeypatch, caplog):
    import dnc_cli.measure.session as session
    import dnc_cli.measure.stats as stats

    monkeypatch.setattr(stats, "ERANK_MAX_FEATURES", 20)
    monkeypatch.setattr(session, "ERANK_MAX_FEATURES", 20)
    net, x, y = _net_and_data()
    with caplog.at_level(logging.WARNING, logger="dnc.measure"):
        rows = _rows(run_measure(net, (x, y), 4, families=["geometry"], progress=False).table)
    assert ("train", 1, "", "erank_within") not in rows and ("train", 1, "", "gnc2") in rows  # m = 24
    assert ("train", 2, "", "erank_within") in rows  # m = 16
    assert "no erank rows for 0 (m=24)" in caplog.text


def test_embeddings_get_the_geometry_family_and_unc3_from_their_classifier():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(5), 30)
    features = rng.normal(size=(150, 8)) + 3.0 * rng.normal(size=(5, 8))[labels]
    classifier = rng.normal(size=(5, 8))
    embeddings = Embeddings(torch.from_numpy(features), torch.from_numpy(labels),
                            classifier=torch.from_numpy(classifier))
    rows = _rows(measure_embeddings(embeddings, batch_size=64).table)
    _, _, centred = naive_class_means(features, labels)
    within, total = naive_covariances(features, labels)
    expected = {"equinorm": naive_equinorm(centred), "gnc2": naive_gnc2(centred),
                "unc3": naive_unc3(classifier, centred), "erank_within": naive_effective_rank(within),
                "erank_total": naive_effective_rank(total)}
    for metric, value in expected.items():
        assert rows[("train", 1, "", metric)] == pytest.approx(value, rel=1e-9), metric
    plain = _rows(measure_embeddings(embeddings, geometry=False).table)
    assert not {key[3] for key in plain} & set(GEOMETRY_METRICS)


def test_analyze_keeps_its_three_families():
    assert "geometry" not in AnalyzeConfig().families
    with pytest.raises(UsageError, match="families contains 'geometry'; valid: nc, svd, nfa$"):
        validate_analyze(AnalyzeConfig(families=["geometry"]))
