"""dnc_cli/metrics/agop.py: every layer's AGOP (LayerAGOPs) against per-sample autograd Jacobians and a hand
formula, the blocked Gram, PSD powers and the NFA correlation against numpy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import naive_agops, random_orthogonal

from dnc_cli.config import ModelConfig
from dnc_cli.metrics.agop import LayerAGOPs, add_gram, nfa_correlation, pearson, psd_power, symmetrised
from dnc_cli.models.networks import build_model


@pytest.mark.parametrize("depth, bias, width", [(2, False, 9), (4, True, 140)])  # 140: add_gram's blocks
def test_agop_all_layers_matches_per_layer_jacobians(random_net_and_data, depth, bias, width):
    _, data = random_net_and_data
    torch.manual_seed(depth)
    model = build_model(ModelConfig(depth=depth, width=width, init_gain=1.0, bias=bias), (1, 1, 6), 4).double()
    h0 = model.embed(data.train.x[:72])  # 72 samples: every class, and the naive Jacobians stay quick
    agops = LayerAGOPs(model)
    for i in range(0, len(h0), 50):  # batches: the sum over samples is additive
        agops.update(h0[i:i + 50])
    for ours, reference in zip(agops.compute(), naive_agops(model, h0), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-12)


def test_agop_two_layer_network_hand_formula():
    """f(x) = A relu(W x): grad_x f_c = Wᵀ diag(1[Wx > 0]) a_c, so AGOP = mean_i Wᵀ D_i AᵀA D_i W."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(depth=1, width=7, init_gain=1.0), (1, 1, 5), 3).double()
    x = torch.randn(40, 5, dtype=torch.float64)
    w, a = model.layers[0].weight.detach(), model.classifier.weight.detach()
    expected = torch.zeros(5, 5, dtype=torch.float64)
    for xi in x:
        d = torch.diag((w @ xi > 0).double())
        expected += w.T @ d @ a.T @ a @ d @ w
    agops = LayerAGOPs(model)
    agops.update(x)
    torch.testing.assert_close(agops.compute()[0], expected / 40, rtol=1e-12, atol=1e-14)


def test_float32_model_gets_float64_products_of_its_own_gradients():
    """A float32 network runs its forward and backward in float32 (no float64 copy of the head, issue #22 item 7),
    and its gradients' products and sums are float64: the pre-activation Grams equal float64 sums of the float32
    gradients to float64 rounding (float32 products: ~1e-7), and the AGOPs the float64 network's to the float32
    gradients' own rounding (~1e-7)."""
    torch.manual_seed(3)
    model = build_model(ModelConfig(depth=3, width=140, init_gain=1.0, bias=True), (1, 1, 10), 5).eval()
    x = torch.randn(96, 10)
    agops = LayerAGOPs(model)
    for i in range(0, len(x), 50):
        agops.update(x[i:i + 50])
    with torch.no_grad():  # the float32 gradients themselves, summed naively in float64
        gradients = {l: g.double().reshape(-1, g.shape[-1]) for l, _, g in agops._preact_grads(model.trace(x))}
    for l, gram in enumerate(agops.preactivation_grams(), start=1):
        reference = gradients[l].T @ gradients[l] / len(x)
        assert (gram - reference).norm() / reference.norm() < 1e-12, l
    in_float64 = LayerAGOPs(copy.deepcopy(model).double())
    in_float64.update(x.double())
    for ours, reference in zip(agops.compute(), in_float64.compute(), strict=True):
        assert ours.dtype == torch.float64
        assert (ours - reference).norm() / reference.norm() < 1e-5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_agops_match_the_cpu():
    """The default float32 network on the GPU (float32 gradients, float64 Gram products, as on the CPU): the AGOPs
    agree with the CPU's to the float32 gradients' rounding, and they stay float64 on the GPU."""
    torch.manual_seed(4)
    model = build_model(ModelConfig(depth=3, width=140, init_gain=1.0), (1, 1, 10), 5).eval()
    x = torch.randn(96, 10)
    on_cpu, on_gpu = LayerAGOPs(model), LayerAGOPs(copy.deepcopy(model).cuda())
    on_cpu.update(x)
    on_gpu.update(x.cuda())
    for cpu, gpu in zip(on_cpu.compute(), on_gpu.compute(), strict=True):
        assert gpu.dtype == torch.float64 and gpu.is_cuda
        assert (gpu.cpu() - cpu).norm() / cpu.norm() < 1e-5


def test_add_gram_upper_blocks_give_the_full_gram():
    torch.manual_seed(2)
    rows = torch.randn(300, 300, dtype=torch.float64)  # 300 = 2 blocks of 128 and a partial third
    total = torch.zeros(300, 300, dtype=torch.float64)
    add_gram(total, rows[:170])
    add_gram(total, rows[170:])
    torch.testing.assert_close(symmetrised(total), rows.T @ rows, rtol=1e-12, atol=1e-10)


def test_psd_power_against_naive_eigendecomposition():
    rotation = random_orthogonal(4, seed=14)
    eigenvalues = torch.tensor([3.0, 1.0, 0.5, -1e-3], dtype=torch.float64)  # one small negative: clamped
    matrix = rotation @ torch.diag(eigenvalues) @ rotation.T
    for alpha in (0.5, 1.0, 2.0):
        values, vectors = np.linalg.eigh(matrix.numpy())
        expected = vectors @ np.diag(np.clip(values, 0, None) ** alpha) @ vectors.T
        np.testing.assert_allclose(psd_power(matrix.float(), alpha).numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(psd_power(matrix, alpha).numpy(), expected, atol=1e-12)
    root = psd_power(matrix, 0.5)
    assert torch.linalg.eigvalsh(root).min() > -1e-12  # the negative direction is gone, not sqrt'd
    assert not torch.allclose(root @ root, matrix, atol=1e-4)  # the clamp changed something
    psd = matrix + 2e-3 * torch.eye(4, dtype=torch.float64)
    assert torch.allclose(psd_power(psd, 0.5) @ psd_power(psd, 0.5), psd, atol=1e-12)
    assert psd_power(psd, 0.5).dtype == torch.float64
    # an AGOP summed in floating point is only symmetric up to rounding: its symmetric part is used
    skewed = psd + 1e-3 * torch.triu(torch.ones(4, 4, dtype=torch.float64), diagonal=1)
    assert torch.allclose(psd_power(skewed, 0.5), psd_power((skewed + skewed.T) / 2, 0.5), rtol=0, atol=1e-14)


def test_pearson_and_nfa_correlation_against_numpy():
    gen = torch.Generator().manual_seed(15)
    x = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    assert pearson(x, x) == pytest.approx(1.0, abs=1e-14)
    assert pearson(x, -2.0 * x + 3.0) == pytest.approx(-1.0, abs=1e-14)
    expected = np.corrcoef(x.flatten().numpy(), y.flatten().numpy())[0, 1]
    assert pearson(x, y) == pytest.approx(expected, rel=1e-12)

    weight = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    agop = x @ x.T + 0.1 * weight.T @ weight
    for alpha in (0.5, 1.0):
        values, vectors = np.linalg.eigh(agop.numpy())
        power = vectors @ np.diag(np.clip(values, 0, None) ** alpha) @ vectors.T
        gram = weight.numpy().T @ weight.numpy()
        expected = np.corrcoef(gram.flatten(), power.flatten())[0, 1]
        assert nfa_correlation(weight, psd_power(agop, alpha)) == pytest.approx(expected, rel=1e-10)
    # the NFA holds exactly when AGOP^(1/2) is proportional to W^T W
    gram = weight.T @ weight
    assert nfa_correlation(weight, psd_power(4.0 * gram @ gram, 0.5)) == pytest.approx(1.0)


def test_psd_power_counts_eigenvalues_below_the_rounding_floor_as_zero():
    """A PSD matrix with eigenvalues 4, 1, 1/4 and three at the rounding level (1e-19, 0, -1e-18 times λ_max): its
    square root is the one of the three real eigenvalues alone. Rounding-level eigenvalues come out of eigh at
    ~ε·λ_max, and their square roots (~1e-8) would otherwise depend on the order of the additions behind the matrix."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=g))
    matrix = (q * torch.tensor([4.0, 1.0, 0.25, 4e-19, 0.0, -4e-18], dtype=torch.float64)) @ q.T
    expected = (q * torch.tensor([2.0, 1.0, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)) @ q.T
    assert torch.allclose(psd_power(matrix, 0.5), expected, rtol=0, atol=1e-13)
    assert torch.allclose(psd_power(matrix, 1.0), (q * torch.tensor([4.0, 1.0, 0.25, 0, 0, 0],
                                                                    dtype=torch.float64)) @ q.T, rtol=0, atol=1e-13)
