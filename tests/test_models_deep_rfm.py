"""dnc_cli/models/kernels.py and deep_rfm.py: kernels, the ridge solve, the closed-form AGOP against autograd,
random feature maps, collapse over layers and the replay of a fitted Deep RFM."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from dnc_cli.config import ModelConfig, ModelName
from dnc_cli.errors import UsageError
from dnc_cli.models.deep_rfm import (
    RFMLayer,
    deep_rfm_representations,
    fit_deep_rfm,
    memory_check,
    random_feature_map,
    validate_deep_rfm,
)
from dnc_cli.models.kernels import kernel_agop, kernel_matrix, solve_kernel_ridge


def rfm_model(**keys) -> ModelConfig:
    """The model group's settings of a Deep RFM (ModelConfig, whose defaults the YAML's depth/width override)."""
    return ModelConfig(name=ModelName.deep_rfm, **keys)


KINDS = ("laplace", "gaussian")


def naive_kernel(x, z, kind, bandwidth):
    dist = torch.cdist(x.double(), z.double())
    if kind == "laplace":
        return torch.exp(-dist / bandwidth)
    return torch.exp(-dist**2 / (2 * bandwidth**2))


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_matrix_matches_cdist_formula(kind):
    gen = torch.Generator().manual_seed(0)
    x, z = torch.randn(50, 7, generator=gen), torch.randn(30, 7, generator=gen)
    expected = naive_kernel(x, z, kind, 1.5)
    # float32 by default, blocks smaller than N give the same matrix
    for block_size in (4096, 16):
        got = kernel_matrix(x, z, kind, 1.5, block_size=block_size)
        assert got.dtype == torch.float32 and got.shape == (50, 30)
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(kernel_matrix(x.double(), z.double(), kind, 1.5, block_size=7), expected,
                               rtol=1e-10, atol=1e-12)
    # K_XX: exact ones on the diagonal, matches the formula elsewhere
    kxx = kernel_matrix(x, x, kind, 1.5, block_size=16)
    assert torch.equal(kxx.diagonal(), torch.ones(50))
    torch.testing.assert_close(kxx.double(), naive_kernel(x, x, kind, 1.5), rtol=0, atol=1e-5)


def test_solve_kernel_ridge_matches_linalg_solve():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(60, 5, generator=gen, dtype=torch.float64)
    targets = torch.randn(60, 3, generator=gen, dtype=torch.float64)
    kxx = kernel_matrix(x, x, "laplace", 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a well-posed system must take the Cholesky path silently
        alpha = solve_kernel_ridge(kxx, targets, 1e-3)
    expected = torch.linalg.solve(kxx + 1e-3 * torch.eye(60, dtype=torch.float64), targets)
    assert alpha.dtype == torch.float64 and alpha.shape == (60, 3)
    assert ((alpha - expected).norm() / expected.norm()).item() <= 1e-8
    # a float32 kernel is promoted, not solved in float32
    alpha32 = solve_kernel_ridge(kxx.float(), targets, 1e-3)
    assert alpha32.dtype == torch.float64


def test_solve_kernel_ridge_singular_kernel_warns_and_stays_finite():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(20, 5, generator=gen, dtype=torch.float64)
    x[1] = x[0]  # a duplicate sample: rows 0 and 1 of K coincide, ridge 0 leaves K singular
    kxx = kernel_matrix(x, x, "laplace", 2.0)
    kxx[1], kxx[:, 1] = kxx[0], kxx[:, 0]
    targets = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="singular"):
        alpha = solve_kernel_ridge(kxx, targets, 0.0)
    assert torch.isfinite(alpha).all()
    # the minimum-norm least-squares solution, as pinv gives
    expected = torch.linalg.pinv(kxx, hermitian=True) @ targets
    assert ((alpha - expected).norm() / expected.norm()).item() <= 1e-6


def autograd_agop(x, alpha, kind, bandwidth):
    """Reference: per-sample jacobians of f(z) = sum_{j != i} alpha_j k(z, x_j) at z = x_i, via autograd."""
    n, d = x.shape
    agop = torch.zeros(d, d, dtype=torch.float64)
    for i in range(n):
        others = torch.arange(n) != i  # the self term is not differentiable for Laplace (and 0 for Gaussian)

        def predictor(z, others=others):
            dist = (z[None, :] - x[others]).norm(dim=1)
            if kind == "laplace":
                k = torch.exp(-dist / bandwidth)
            else:
                k = torch.exp(-dist**2 / (2 * bandwidth**2))
            return k @ alpha[others]

        jac = torch.autograd.functional.jacobian(predictor, x[i])  # K x d
        agop += jac.T @ jac
    return agop / n


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_agop_matches_autograd(kind):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    alpha = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    expected = autograd_agop(x, alpha, kind, 2.0)
    for batch_size in (512, 7):
        got = kernel_agop(x, alpha, kind, 2.0, batch_size=batch_size)
        assert got.dtype == torch.float64 and got.shape == (6, 6)
        assert ((got - expected).norm() / expected.norm()).item() <= 1e-6, batch_size


def test_kernel_agop_drops_duplicate_points():
    # a duplicated sample must not blow up the Laplace gradient (1/||x_i - x_j|| with x_j = x_i)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    x[5] = x[9]
    alpha = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    got = kernel_agop(x, alpha, "laplace", 2.0, batch_size=8)
    assert torch.isfinite(got).all()
    # the reference drops exactly the coincident pairs
    n = len(x)
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for i in range(n):
        others = (x - x[i]).norm(dim=1) > 0

        def predictor(z, others=others):
            return torch.exp(-(z[None, :] - x[others]).norm(dim=1) / 2.0) @ alpha[others]

        jac = torch.autograd.functional.jacobian(predictor, x[i])
        expected += jac.T @ jac / n
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-6


@pytest.mark.parametrize("features", ["relu", "rff"])
def test_random_feature_map_is_deterministic_per_seed_and_layer(features):
    cfg = rfm_model(features=features, width=64)
    x = torch.randn(10, 12, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # the global RNG must not matter
    first = random_feature_map(12, cfg, 3, 2, "cpu")(x)
    torch.manual_seed(456)
    again = random_feature_map(12, cfg, 3, 2, "cpu")(x)
    assert first.shape == (10, 64)
    assert torch.equal(first, again)
    assert not torch.allclose(first, random_feature_map(12, cfg, 3, 3, "cpu")(x))
    assert not torch.allclose(first, random_feature_map(12, cfg, 4, 2, "cpu")(x))  # another seed


def test_width_null_is_the_input_dimension():
    """model.width=null: as many random features as the map's input coordinates, at every layer (the official RFF
    map, paper_deep_rfm); the same map as an explicit width equal to the input dimension."""
    x = torch.randn(10, 12, generator=torch.Generator().manual_seed(5))
    for features in ("relu", "rff"):
        null = random_feature_map(12, rfm_model(features=features, width=None), 3, 2, "cpu")(x)
        assert null.shape == (10, 12)
        assert torch.equal(null, random_feature_map(12, rfm_model(features=features, width=12), 3, 2, "cpu")(x))


def test_relu_feature_map_uses_linear_default_init():
    cfg = rfm_model(features="relu", width=2000)
    feature_map = random_feature_map(25, cfg, 0, 1, "cpu")
    eye = torch.eye(25)
    weight_t = feature_map(eye) - feature_map(-eye)  # ReLU(w) - ReLU(-w) = w: recovers W^T
    bound = 1 / math.sqrt(25)  # nn.Linear: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert weight_t.abs().max() <= bound
    assert weight_t.abs().max() > 0.99 * bound
    assert abs(weight_t.mean().item()) < 0.01


def nc1_trace(h, labels, num_classes):
    """tr(Sigma_W) / tr(Sigma_B), global mean = mean of class means (PAPER.md)."""
    means = torch.stack([h[labels == k].mean(0) for k in range(num_classes)])
    within = ((h - means[labels]) ** 2).sum(1).mean()
    between = ((means - means.mean(0)) ** 2).sum(1).mean()
    return (within / between).item()


def gaussian_mixture(n, dim, num_classes, generator):
    means = 1.0 * torch.randn(num_classes, dim, generator=generator)
    labels = torch.arange(n) % num_classes
    return means[labels] + torch.randn(n, dim, generator=generator), labels


def test_deep_rfm_collapses_and_replays_its_features(tmp_path):
    gen = torch.Generator().manual_seed(6)
    x_all, y_all = gaussian_mixture(400, 20, 4, gen)
    x_train, y_train, x_test, y_test = x_all[:300], y_all[:300], x_all[300:], y_all[300:]
    cfg, seed = rfm_model(depth=3, width=256, features="relu"), 1
    calls = []
    layers = fit_deep_rfm(x_train, y_train, x_test, y_test, 4, cfg, seed,
                          on_layer=lambda layer, record, elapsed, x: calls.append((layer, record, elapsed)))
    assert len(layers) == 3 and [c[0] for c in calls] == [1, 2, 3]
    assert all(c[1] is record for c, record in zip(calls, layers, strict=True))
    assert layers[0].agop.shape == (20, 20) and layers[1].agop.shape == (256, 256)
    assert all(record.agop.max().item() == pytest.approx(1.0) for record in layers)
    assert all(0.0 <= record.test_acc <= 1.0 for record in layers)
    # records survive torch.save / torch.load(weights_only=True)
    torch.save([record.as_dict() for record in layers], tmp_path / "layers.pt")
    loaded = [RFMLayer.from_dict(r) for r in torch.load(tmp_path / "layers.pt", weights_only=True)]
    assert all(torch.equal(a.sqrt_agop, b.sqrt_agop) and a.test_acc == b.test_acc
               for a, b in zip(loaded, layers, strict=True))

    train = dict(deep_rfm_representations(x_train, loaded, cfg, seed))
    test = dict(deep_rfm_representations(x_test, loaded, cfg, seed))
    nc1 = [nc1_trace(train[layer]["input"], y_train, 4) for layer in (1, 2, 3)]
    assert nc1[2] < nc1[0], nc1
    assert train[1]["activation"].shape == (300, 256) and train[3]["activation"].shape == (300, 256)

    # the replayed inputs are the ones the fit used: refitting each layer reproduces its record
    for layer, record in enumerate(layers, start=1):
        x_layer = train[layer]["input"]
        torch.testing.assert_close(x_layer.norm(dim=1), torch.ones(300))
        kxx = kernel_matrix(x_layer, x_layer, cfg.kernel, cfg.bandwidth)
        targets = 2.0 * torch.nn.functional.one_hot(y_train, 4).double() - 1.0
        alpha = solve_kernel_ridge(kxx, targets, cfg.ridge)
        train_acc = (kxx.double() @ alpha).argmax(1).eq(y_train).double().mean().item()
        kzx = kernel_matrix(test[layer]["input"], x_layer, cfg.kernel, cfg.bandwidth)
        test_acc = (kzx.double() @ alpha).argmax(1).eq(y_test).double().mean().item()
        assert (train_acc, test_acc) == (record.train_acc, record.test_acc)
        agop = kernel_agop(x_layer, alpha, cfg.kernel, cfg.bandwidth)
        torch.testing.assert_close(agop / agop.max(), record.agop.double(), rtol=1e-5, atol=1e-6)
        if layer < 3:
            next_input = train[layer]["activation"] / train[layer]["activation"].norm(dim=1, keepdim=True)
            torch.testing.assert_close(next_input, train[layer + 1]["input"])


@pytest.mark.parametrize("change, needle", [
    ({"bandwidth": -1.0}, "model.bandwidth=-1.0"),
    ({"kernel": "cosine"}, "model.kernel=cosine"),
    ({"features": "tanh"}, "model.features=tanh"),
    ({"ridge": -0.1}, "model.ridge=-0.1"),
    ({"rff_gamma": 0.0}, "model.rff_gamma=0.0"),
    ({"agop_power": -0.5}, "model.agop_power=-0.5"),
])
def test_validation_names_the_bad_value(change, needle):
    validate_deep_rfm(rfm_model())  # the defaults are valid
    with pytest.raises(UsageError, match=needle) as excinfo:
        validate_deep_rfm(rfm_model(**change))
    assert "\n" not in str(excinfo.value)
    if "kernel" in change:
        assert "laplace, gaussian" in str(excinfo.value)


def test_memory_check():
    memory_check(1000, 784, "cpu")  # a few dozen MB: fine
    with pytest.raises(UsageError, match=r"n_train=100000000 needs ~.* GiB .*lower dataset.n_train"):
        memory_check(100_000_000, 784, "cpu")
