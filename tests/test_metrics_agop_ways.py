"""dnc_cli/metrics/agop/: the ways of computing an AGOP chosen per layer. The closed form (a layer reaching the
outputs through linear maps only) against per-sample autograd Jacobians, and where it must not apply; the sketch:
unbiased (the mean over seeds converges to the exact AGOP), error falling like 1/√s, exact at s = K with
orthogonal probes; what measure() serves under a sketch and how the table says so."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dnc_cli.errors import UsageError
from dnc_cli.measure import run_measure
from dnc_cli.metrics.agop import CLOSED_FORM, SKETCH, LayerAGOP, OrthogonalProbes, autograd, backward_rows


def _jacobian_agop(function, inputs: torch.Tensor) -> torch.Tensor:
    """(1/N) Σ_i J_iᵀ J_i from per-sample float64 autograd Jacobians: the independent naive reference."""
    total = 0
    for sample in inputs:
        jac = torch.autograd.functional.jacobian(function, sample)  # (K, d)
        total = total + jac.T @ jac
    return total / len(inputs)


def _data(num_samples=12, dim=6, num_classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, dim, generator=generator, dtype=torch.float64)
    return x, torch.arange(num_samples) % num_classes


class Scaled(nn.Module):
    """A head whose output is the final Linear's times 2: not the Linear's own output, so no closed form."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.body(x)) * 2


def _methods(measured) -> dict:
    return {info.module: info.agop_method for info in measured.layers}


# ------------------------------------------------------------------------------------------------- closed form
def test_closed_form_of_linear_tails_equals_autograd_jacobians():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Identity(), nn.Linear(5, 4)).double()
    x, y = _data()
    measured = run_measure(net, (x, y), 4, layers=["0", "2", "4"], batch_size=5, progress=False)
    assert _methods(measured) == {"0": "autograd", "2": CLOSED_FORM, "4": CLOSED_FORM}
    with torch.no_grad():
        h1 = net[1](net[0](x))
        h2 = net[2](h1)
    for name, function, inputs in (("0", net, x), ("2", lambda t: net[4](net[2](t)), h1), ("4", net[4], h2)):
        reference = _jacobian_agop(function, inputs)
        torch.testing.assert_close(measured.agops[name], reference, rtol=1e-9, atol=1e-14 * float(reference.max()))
    # the final Linear's is WᵀW: the weights alone
    weight = net[4].weight.detach()
    torch.testing.assert_close(measured.agops["4"], weight.T @ weight, rtol=1e-12, atol=0)
    rows = {(r.layer, r.metric): r.value for r in measured.table.itertuples() if r.stage == ""}
    assert rows[(3, "agop_sketch_probes")] == 0 and rows[(1, "agop_sketch_probes")] == 0


@pytest.mark.parametrize("case", ["inplace_relu", "scaled", "tokens"])
def test_no_closed_form_where_something_nonlinear_follows(case):
    """An in-place ReLU on the final Linear's own output tensor, a scale after it, a Linear on tokens: autograd,
    and the AGOP is the true one."""
    torch.manual_seed(1)
    x, y = _data()
    if case == "inplace_relu":
        net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4), nn.ReLU(inplace=True)).double()
        layer, function, inputs = "2", lambda t: torch.relu(net[2](t)), torch.tanh(net[0](x)).detach()
    elif case == "scaled":
        net = Scaled().double()
        layer, function, inputs = "fc", lambda t: 2 * net.fc(t), net.body(x).detach()
    else:
        net = nn.Sequential(nn.Unflatten(1, (2, 3)), nn.Linear(3, 4), nn.Flatten(), nn.Linear(8, 4)).double()
        layer, function = "1", lambda t: net[3](net[1](t).reshape(-1))
        inputs = x.reshape(-1, 2, 3)
    measured = run_measure(net, (x, y), 4, layers=[layer], batch_size=5, progress=False)
    assert _methods(measured)[layer] == "autograd"
    reference = _jacobian_agop(function, inputs) if case != "tokens" else sum(
        torch.einsum("kpd,kpe->de", *[torch.autograd.functional.jacobian(function, s)] * 2) for s in inputs) / len(x)
    torch.testing.assert_close(measured.agops[layer], reference, rtol=1e-9, atol=1e-14 * float(reference.max()))


# ------------------------------------------------------------------------------------------------- the sketch
def _head(num_outputs: int, seed: int = 0):
    """A small nonlinear map h (5) -> K outputs and a batch of inputs: J_i differs per sample."""
    generator = torch.Generator().manual_seed(seed)
    w1 = torch.randn(16, 5, generator=generator, dtype=torch.float64) / math.sqrt(5)
    w2 = torch.randn(num_outputs, 16, generator=generator, dtype=torch.float64) / 4
    h = torch.randn(10, 5, generator=generator, dtype=torch.float64)
    return (lambda t: torch.tanh(t @ w1.T) @ w2.T), h


def _sketch(function, h: torch.Tensor, probes: int, seed: int) -> torch.Tensor:
    agop = LayerAGOP(nn.Linear(5, 16).double())  # wrt its input (5 <= 16): the rows are J_iᵀ g
    target = h.clone().requires_grad_(True)
    with torch.enable_grad():
        out = function(target)
        sketch = OrthogonalProbes(out.shape[1], min(probes, out.shape[1]), torch.Generator().manual_seed(seed),
                                  torch.float64)
        backward_rows(out, [(agop, target)], probes, sketch, len(h))
    return agop.compute()


@pytest.mark.parametrize("mixed", [True, False])  # probes from a random rotation, or the outputs themselves
def test_sketch_is_unbiased_its_mean_converges_to_the_exact_agop(mixed, monkeypatch):
    if not mixed:
        monkeypatch.setattr(autograd, "MIXED_MAX_OUTPUTS", 0)
    function, h = _head(12)
    exact = _jacobian_agop(function, h)
    torch.testing.assert_close(_sketch(function, h, 12, 0), exact, rtol=1e-10, atol=0)  # s >= K: exact passes
    sketches = torch.stack([_sketch(function, h, 2, seed) for seed in range(400)])
    single = (sketches - exact).norm(dim=(1, 2)).mean() / exact.norm()
    mean = (sketches.mean(0) - exact).norm() / exact.norm()
    assert single > 0.05  # one sketch of 2 probes in 12 is visibly off ...
    assert mean < single / 8  # ... the mean of 400 is 1/√400 = 1/20 of that in expectation: unbiased


def test_sketch_error_falls_like_one_over_root_s():
    function, h = _head(256)
    exact = _jacobian_agop(function, h)
    counts = [2, 8, 32]
    errors = [np.sqrt(np.mean([float((_sketch(function, h, s, seed) - exact).norm() / exact.norm()) ** 2
                               for seed in range(12)])) for s in counts]
    slope = np.polyfit(np.log(counts), np.log(errors), 1)[0]
    assert -0.75 < slope < -0.3, (errors, slope)  # -½ expected: sqrt(K/s - 1) for orthogonal probes


@pytest.mark.parametrize("mixed", [True, False])
def test_orthogonal_probes_at_s_equal_k_are_exact(mixed, monkeypatch):
    if not mixed:
        monkeypatch.setattr(autograd, "MIXED_MAX_OUTPUTS", 0)
    num_outputs = 7
    probes = OrthogonalProbes(num_outputs, num_outputs, torch.Generator().manual_seed(0), torch.float64)
    probes.draw(3)
    frames = torch.stack([probes.direction(j) for j in range(num_outputs)], 2)  # (3, K, s = K)
    identity = torch.eye(num_outputs, dtype=torch.float64).expand(3, -1, -1)
    torch.testing.assert_close(frames @ frames.transpose(1, 2), identity, rtol=0, atol=1e-12)
    # so the s = K sketch (each sample's probes a random orthogonal frame, not the K unit vectors) is the exact AGOP
    function, h = _head(num_outputs)
    probes.draw(len(h))
    target = h.clone().requires_grad_(True)
    out = function(target)
    total = torch.zeros(5, 5, dtype=torch.float64)
    for j in range(num_outputs):
        grad, = torch.autograd.grad((out * probes.direction(j)).sum(), target, retain_graph=True)
        total += grad.T @ grad
    torch.testing.assert_close(total / len(h), _jacobian_agop(function, h), rtol=1e-10, atol=1e-14)


def test_measure_says_what_was_sketched_and_leaves_out_the_agop_stage_under_auto():
    torch.manual_seed(2)
    num_outputs = 130  # above auto's 128 probes: auto sketches
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, num_outputs)).double()
    x = torch.randn(20, 6, dtype=torch.float64)
    y = torch.arange(20) % 4
    auto = run_measure(net, (x, y), 4, layers=["2"], batch_size=10, progress=False)
    assert _methods(auto) == {"2": SKETCH}
    rows = {(r.stage, r.metric): r.value for r in auto.table.itertuples()}
    assert rows[("", "agop_sketch_probes")] == 128
    assert "agop" not in set(auto.table.stage) and ("", "nfa_corr_0.5") in rows  # NFA served, agop stage not
    asked = run_measure(net, (x, y), 4, layers=["2"], batch_size=10, progress=False, agop_probes=16)
    assert "agop" in set(asked.table.stage)
    assert {(r.stage, r.metric): r.value for r in asked.table.itertuples()}[("", "agop_sketch_probes")] == 16
    exact = run_measure(net, (x, y), 4, layers=["2"], batch_size=10, progress=False, agop_probes="exact")
    reference = _jacobian_agop(lambda t: net[4](net[3](net[2](t))), torch.tanh(net[0](x)).detach())
    torch.testing.assert_close(exact.agops["2"], reference, rtol=1e-9, atol=1e-14 * float(reference.max()))
    again = run_measure(net, (x, y), 4, layers=["2"], batch_size=10, progress=False)
    torch.testing.assert_close(again.agops["2"], auto.agops["2"], rtol=0, atol=0)  # the same seed, the same probes


@pytest.mark.parametrize("value", ["many", 0, -3, 2.5, True])
def test_bad_agop_probes_is_a_usage_error(value):
    x, y = _data()
    with pytest.raises(UsageError, match="agop_probes="):
        run_measure(nn.Linear(6, 4).double(), (x, y), 4, progress=False, agop_probes=value)


def test_gram_rows_cast_in_chunks_sum_to_the_whole_gram(monkeypatch):
    """A conv map's Gram rows (B·positions x C_out) are cast to float64 in cache-sized chunks: the chunks' products,
    summed, are the float64 Gram of the float32 rows, whatever the chunk boundaries."""
    torch.manual_seed(5)
    grad = torch.randn(3, 4, 7, 7)  # (B, C_out, H', W'): 147 rows of 4
    rows = grad.permute(0, 2, 3, 1).reshape(-1, 4).double()
    for chunk_elements in (4, 40, 1 << 18):  # 1 row per chunk, 10 rows (a partial last chunk), all at once
        monkeypatch.setattr(autograd, "GRAM_CHUNK_ELEMENTS", chunk_elements)
        agop = autograd.LayerAGOP(nn.Conv2d(2, 4, 3))
        agop.add(grad)
        torch.testing.assert_close(agop.gram, rows.T @ rows, rtol=1e-13, atol=1e-12)
