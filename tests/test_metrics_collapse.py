"""dnc_cli/metrics/collapse.py against a naive float64 reference written straight from PAPER.md's formulas, plus
closed forms (collapse -> 0, simplex ETF -> 0), invariances, and degenerate shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import random_orthogonal

from dnc_cli.metrics.collapse import ClassMeans, ClassMeansResult, NeuralCollapse, nc2, nc2_gram, nc3, nc_of

KEYS = ("nc1", "nc1_trace", "tr_sw_over_st", "tr_sb_over_st", "cdnv", "nc2", "nc2_gram", "ncc_acc", "nc4")


def make_data(num_samples=300, dim=20, num_classes=5, seed=0, class_probs=None, spread=1.0):
    """Imbalanced Gaussian classes around random means, translated away from the origin, with random
    network 'predictions' that agree with the label most of the time."""
    gen = torch.Generator().manual_seed(seed)
    if class_probs is None:
        class_probs = torch.arange(1, num_classes + 1, dtype=torch.float64)  # imbalanced: 1 : 2 : ... : K
    class_probs = torch.as_tensor(class_probs, dtype=torch.float64)
    labels = torch.multinomial(class_probs, num_samples, replacement=True, generator=gen)
    centres = 3.0 * torch.randn(num_classes, dim, generator=gen, dtype=torch.float64)
    scales = 0.5 + torch.rand(num_classes, generator=gen, dtype=torch.float64)  # class-dependent spread
    features = centres[labels] + spread * scales[labels, None] * torch.randn(num_samples, dim, generator=gen,
                                                                             dtype=torch.float64)
    features = features + 5.0
    flip = torch.rand(num_samples, generator=gen) < 0.2
    predictions = torch.where(flip, torch.randint(0, num_classes, (num_samples,), generator=gen), labels)
    return features, labels, predictions


def analyse(features, labels, num_classes, predictions=None, batch_sizes=None, **options):
    """Both passes of dnc_cli.metrics, fed in the given batch sizes (one batch by default)."""
    if batch_sizes is None:
        batch_sizes = [len(labels)]
    assert sum(batch_sizes) == len(labels)
    starts = np.cumsum([0, *batch_sizes])
    batches = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    class_means = ClassMeans(num_classes)
    for batch in batches:
        class_means.update(features[batch], labels[batch])
    collapse = NeuralCollapse(class_means.compute(), **options)
    for batch in batches:
        collapse.update(features[batch], labels[batch], None if predictions is None else predictions[batch])
    return collapse.compute()


def reference(features, labels, predictions=None, global_mean="unweighted", official_scaling=False):
    """Every metric straight from the formulas: python grouping, full m x m matrices, pinv, explicit loops."""
    h = features.to(torch.float64)
    n, m = h.shape
    classes = sorted(set(labels.tolist()))  # the non-empty classes
    k = len(classes)
    members = {c: [i for i in range(n) if labels[i] == c] for c in classes}
    means = {c: h[members[c]].mean(0) for c in classes}
    if global_mean == "unweighted":
        mu_g = torch.stack([means[c] for c in classes]).mean(0)
    else:
        mu_g = h.mean(0)

    sigma_w = torch.zeros(m, m, dtype=torch.float64)
    for i in range(n):
        d = h[i] - means[int(labels[i])]
        sigma_w += torch.outer(d, d)
    sigma_w /= (k * n) if official_scaling else n
    sigma_b = torch.zeros(m, m, dtype=torch.float64)
    for c in classes:
        d = means[c] - mu_g
        sigma_b += torch.outer(d, d)
    sigma_b /= k
    sigma_t = sigma_w + sigma_b

    variances = {c: sum(float((h[i] - means[c]).norm() ** 2) for i in members[c]) / len(members[c])
                 for c in classes}
    pairs = [(a, b) for ia, a in enumerate(classes) for b in classes[ia + 1:]]
    cdnv = sum((variances[a] + variances[b]) / (2 * float((means[a] - means[b]).norm() ** 2))
               for a, b in pairs) / len(pairs)

    mm = torch.stack([(means[c] - mu_g) / (means[c] - mu_g).norm() for c in classes])
    gram = mm @ mm.T
    eye = torch.eye(k, dtype=torch.float64)
    target = (eye - torch.ones(k, k, dtype=torch.float64) / k) / math.sqrt(k - 1)
    nc2_slides = torch.linalg.norm(gram / torch.linalg.norm(gram) - target)
    etf = (1 + 1 / (k - 1)) * eye - torch.ones(k, k, dtype=torch.float64) / (k - 1)
    nc2_official = sum(float(gram[a, b] - etf[a, b]) ** 2 for a in range(k) for b in range(k)) / k**2

    nearest = []
    for i in range(n):
        distances = [float((h[i] - means[c]).norm()) for c in classes]
        nearest.append(classes[int(np.argmin(distances))])
    result = {
        "nc1": float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b))) / k,
        "nc1_trace": float(torch.trace(sigma_w) / torch.trace(sigma_b)),
        "tr_sw_over_st": float(torch.trace(sigma_w) / torch.trace(sigma_t)),
        "tr_sb_over_st": float(torch.trace(sigma_b) / torch.trace(sigma_t)),
        "cdnv": cdnv,
        "nc2": float(nc2_slides),
        "nc2_gram": nc2_official,
        "ncc_acc": sum(nearest[i] == int(labels[i]) for i in range(n)) / n,
    }
    if predictions is not None:
        result["nc4"] = sum(nearest[i] != int(predictions[i]) for i in range(n)) / n
    return result


def assert_close(actual: dict, expected: dict, rel=1e-6, abs=0.0):
    assert set(actual) == set(expected), (sorted(actual), sorted(expected))
    for key in expected:
        assert math.isfinite(actual[key]), (key, actual[key])
        assert actual[key] == pytest.approx(expected[key], rel=rel, abs=abs), key


def simplex_etf_means(num_classes, dim, seed, scale=3.0):
    """Rows of sqrt(K/(K-1)) (I - 11^T/K), embedded in dim > K coordinates, rotated, scaled, translated."""
    etf = math.sqrt(num_classes / (num_classes - 1)) * (torch.eye(num_classes, dtype=torch.float64)
                                                        - 1.0 / num_classes)
    embedded = torch.zeros(num_classes, dim, dtype=torch.float64)
    embedded[:, :num_classes] = etf
    return scale * embedded @ random_orthogonal(dim, seed).T + 7.0


@pytest.mark.parametrize("global_mean", ["unweighted", "weighted"])
@pytest.mark.parametrize("official_scaling", [False, True])
def test_matches_naive_reference(global_mean, official_scaling):
    features, labels, predictions = make_data()
    actual = analyse(features, labels, 5, predictions, global_mean=global_mean,
                     official_scaling=official_scaling)
    expected = reference(features, labels, predictions, global_mean, official_scaling)
    assert_close(actual, expected)
    assert 0.0 < actual["nc1"] and 0.0 < actual["nc2"] and 0.0 < actual["nc4"] < 1.0  # a non-trivial case


def test_official_scaling_divides_sigma_w_by_k():
    features, labels, _ = make_data()
    plain = analyse(features, labels, 5)
    official = analyse(features, labels, 5, official_scaling=True)
    assert official["nc1"] == pytest.approx(plain["nc1"] / 5, rel=1e-12)
    assert official["nc1_trace"] == pytest.approx(plain["nc1_trace"] / 5, rel=1e-12)
    assert official["cdnv"] == pytest.approx(plain["cdnv"], rel=1e-12)  # per-class variances: no K


def test_global_mean_modes_differ_for_imbalanced_classes():
    features, labels, _ = make_data()
    means = ClassMeans(5)
    means.update(features, labels)
    result = means.compute()
    assert torch.allclose(result.global_mean("weighted"), features.mean(0), rtol=0, atol=1e-12)
    assert torch.allclose(result.global_mean("unweighted"), result.means.mean(0), rtol=0, atol=1e-12)
    assert not torch.allclose(result.global_mean("weighted"), result.global_mean("unweighted"), atol=1e-3)
    with pytest.raises(ValueError, match="global_mean"):
        result.global_mean("median")


def test_empty_classes_are_dropped():
    # 7 class slots, samples only in 0, 1, 2, 4, 6: K = 5 everywhere
    probs = [1.0, 2.0, 3.0, 0.0, 1.5, 0.0, 2.5]
    features, labels, predictions = make_data(num_classes=7, class_probs=probs, seed=1)
    assert set(labels.tolist()) == {0, 1, 2, 4, 6}
    means = ClassMeans(7)
    means.update(features, labels)
    result = means.compute()
    assert result.counts[[3, 5]].tolist() == [0, 0]
    assert torch.all(result.means[[3, 5]] == 0)
    for global_mean in ("unweighted", "weighted"):
        actual = analyse(features, labels, 7, predictions, global_mean=global_mean)
        assert_close(actual, reference(features, labels, predictions, global_mean))


def test_streaming_equals_one_batch():
    features, labels, predictions = make_data(seed=2)
    whole = analyse(features, labels, 5, predictions)
    streamed = analyse(features, labels, 5, predictions, batch_sizes=[1, 7, 100, 3, 189])
    assert_close(streamed, whole, rel=1e-12)

    means_whole, means_streamed = ClassMeans(5), ClassMeans(5)
    means_whole.update(features, labels)
    for start, stop in [(0, 13), (13, 14), (14, 300)]:
        means_streamed.update(features[start:stop], labels[start:stop])
    assert torch.allclose(means_streamed.compute().means, means_whole.compute().means, rtol=1e-13, atol=1e-13)
    assert torch.equal(means_streamed.compute().counts, means_whole.compute().counts)


def test_low_precision_input_is_accumulated_in_float64():
    features, labels, _ = make_data(seed=3)
    single = features.float()
    assert_close(analyse(single, labels, 5), analyse(single.double(), labels, 5), rel=1e-12)
    means = ClassMeans(5)
    means.update(single, labels)
    assert means.compute().means.dtype == torch.float64


def test_few_dimensions_and_a_singleton_class():
    # m = 2 < K - 1 = 5: Sigma_B has rank 2, and class 5 has exactly one sample (Var = 0)
    features, labels, predictions = make_data(num_samples=120, dim=2, num_classes=6, seed=4,
                                              class_probs=[1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    labels[17] = 5
    assert (labels == 5).sum() == 1
    for global_mean in ("unweighted", "weighted"):
        actual = analyse(features, labels, 6, predictions, global_mean=global_mean, batch_sizes=[50, 70])
        assert all(math.isfinite(value) for value in actual.values()), actual
        assert_close(actual, reference(features, labels, predictions, global_mean))


def test_features_at_their_class_means_are_collapsed():
    features, labels, _ = make_data(seed=5)
    means = ClassMeans(5)
    means.update(features, labels)
    collapsed = means.compute().means[labels]
    result = analyse(collapsed, labels, 5, predictions=labels)
    for key in ("nc1", "nc1_trace", "tr_sw_over_st", "cdnv", "nc4"):
        assert result[key] == pytest.approx(0.0, abs=1e-20), key
    assert result["tr_sb_over_st"] == pytest.approx(1.0, abs=1e-15)
    assert result["ncc_acc"] == 1.0


def test_simplex_etf_means_give_zero_nc2_and_nc3():
    num_classes, dim = 5, 12
    means = simplex_etf_means(num_classes, dim, seed=6)
    gen = torch.Generator().manual_seed(6)
    counts = [7, 20, 3, 11, 40]  # imbalanced: the (default) unweighted global mean is still the ETF centre
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    noise = torch.randn(len(labels), dim, generator=gen, dtype=torch.float64)
    for c in range(num_classes):  # zero-mean noise in every class, so the class means are exactly `means`
        noise[labels == c] -= noise[labels == c].mean(0)
    result = analyse(means[labels] + 0.3 * noise, labels, num_classes)
    assert abs(result["nc2"]) < 1e-10 and abs(result["nc2_gram"]) < 1e-10

    class_means = ClassMeans(num_classes)
    class_means.update(means[labels] + 0.3 * noise, labels)
    class_means = class_means.compute()
    centred = class_means.centred_means()
    assert abs(nc3(2.5 * centred, class_means)) < 1e-10
    random_classifier = torch.randn(num_classes, dim, generator=gen, dtype=torch.float64)
    assert nc3(random_classifier, class_means) > 0.1


def test_non_etf_means_give_clearly_nonzero_nc2():
    means = torch.randn(5, 12, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    centred = means - means.mean(0)
    assert nc2(centred) > 0.1
    assert nc2_gram(centred) > 1e-3
    # a classifier that is not the means' dual: NC3 clearly nonzero too
    class_means = ClassMeansResult(means=means, counts=torch.ones(5, dtype=torch.int64))
    assert nc3(torch.eye(5, 12, dtype=torch.float64), class_means) > 0.1


def test_nc3_drops_rows_of_empty_classes():
    etf = simplex_etf_means(4, 9, seed=8)
    means = torch.zeros(6, 9, dtype=torch.float64)
    means[[0, 2, 3, 5]] = etf
    counts = torch.tensor([3, 0, 5, 2, 0, 9])
    class_means = ClassMeansResult(means=means, counts=counts)
    classifier = torch.full((6, 9), 1e6, dtype=torch.float64)  # garbage rows for the empty classes
    classifier[[0, 2, 3, 5]] = etf - etf.mean(0)
    assert abs(nc3(classifier, class_means)) < 1e-10


def test_rotation_and_translation_invariance():
    features, labels, predictions = make_data(seed=9)
    rotated = features @ random_orthogonal(20, seed=10).T - 100.0
    original = analyse(features, labels, 5, predictions)
    moved = analyse(rotated, labels, 5, predictions)
    for key in ("nc1", "nc1_trace", "tr_sw_over_st", "tr_sb_over_st", "cdnv", "nc2", "nc2_gram"):
        assert moved[key] == pytest.approx(original[key], rel=1e-9), key
    assert moved["ncc_acc"] == original["ncc_acc"] and moved["nc4"] == original["nc4"]
    # but not under a non-orthogonal linear map (so the comparison above can fail)
    stretched = features * torch.linspace(0.1, 3.0, 20, dtype=torch.float64)
    assert analyse(stretched, labels, 5)["nc1"] != pytest.approx(original["nc1"], rel=1e-3)


def test_transformed_means_equal_means_of_transformed_features():
    features, labels, _ = make_data(seed=11)
    linear = torch.randn(7, 20, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    means = ClassMeans(6)  # class 5 empty
    means.update(features, labels)
    direct = ClassMeans(6)
    direct.update(features @ linear.T, labels)
    transformed, expected = means.compute().transformed(linear.float()), direct.compute()
    assert transformed.means.shape == (6, 7) and transformed.means.dtype == torch.float64
    assert torch.allclose(transformed.means, expected.means, rtol=1e-6, atol=1e-6)  # linear given as float32
    assert torch.equal(transformed.counts, expected.counts)
    assert torch.allclose(means.compute().transformed(linear).means, expected.means, rtol=1e-12, atol=1e-12)


def test_errors():
    features, labels, _ = make_data(seed=12)
    single_class = ClassMeans(5)
    single_class.update(features, torch.full_like(labels, 2))
    with pytest.raises(ValueError, match="at least 2 non-empty classes"):
        NeuralCollapse(single_class.compute())
    with pytest.raises(ValueError, match="before any update"):
        ClassMeans(5).compute()

    means = ClassMeans(5)
    means.update(features, labels)
    collapse = NeuralCollapse(means.compute())
    collapse.update(features[:200], labels[:200])  # pass 2 sees fewer samples than pass 1
    with pytest.raises(ValueError, match="same data"):
        collapse.compute()
    with pytest.raises(ValueError, match=r"\(B, m\)"):
        collapse.update(features[:, None], labels)


def test_nc4_absent_without_predictions():
    features, labels, _ = make_data(seed=13)
    assert "nc4" not in analyse(features, labels, 5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    features, labels, predictions = make_data(seed=16)
    on_cpu = analyse(features, labels, 5, predictions)
    on_gpu = analyse(features.cuda().float(), labels.cuda(), 5, predictions.cuda())
    assert_close(on_gpu, analyse(features.float(), labels, 5, predictions), rel=1e-9)
    assert on_gpu["nc1"] == pytest.approx(on_cpu["nc1"], rel=1e-5)


def test_nc_of_is_both_passes_over_features_in_memory():
    features, labels, _ = make_data(seed=17)
    assert_close(nc_of(features, labels, 5, batch_size=7), analyse(features, labels, 5), rel=1e-12)
    options = {"global_mean": "weighted", "official_scaling": True}
    assert_close(nc_of(features, labels, 5, **options), analyse(features, labels, 5, **options), rel=1e-12)
