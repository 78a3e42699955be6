"""The official analysis algorithm, re-implemented (not copied) as the baseline for `bench/bench_analyze.py`.

What the authors' script does per checkpoint (PAPER.md, and `nc_nn.py` of dmbeaglehole/neural_collapse_rfm),
and so what this module does:

* statistics of one representation H (N x m): per-class Python grouping (a loop over the classes, a boolean
  mask per class), the full m x m within-class covariance Sigma_W and between-class covariance Sigma_B;
* Sigma_B^+ from `scipy.sparse.linalg.svds(Sigma_B, k=K-1)` (Papyan's route; torch.linalg.eigh if scipy is
  missing, see SVDS_BACKEND); NC1 = tr(Sigma_W Sigma_B^+)/K and tr(Sigma_W)/tr(Sigma_B); NC2 from the means;
  NCC accuracy / NC4 from explicit distances to the class means;
* every layer's AGOP separately, with `torch.func.vmap(torch.func.jacrev(subnetwork_l))`, which materialises
  a (B, K, d) Jacobian per batch of B samples, then grad^T grad; AGOP^(1/2) via eigh (negatives clamped);
  NFA = Pearson correlation of W^T W with AGOP^alpha;
* the representations of the SVD-decomposed NC1 rebuilt from the input for every layer: h_{l-1}
  (prefix network), `right` = h S V^T... as h V S^T, `left` = W h, `activation` = relu(W h), and the AGOP
  stage as h V_a S_a^(1/2) (the official rotation-free form; NC1 is invariant to the missing V_a^T).

Two deliberate deviations, both in the baseline's favour (documented in BENCHMARKS.md):
* tr(Sigma_W Sigma_B^+) is evaluated as sum_j (1/s_j) u_j^T Sigma_W u_j (O(m^2 K)) instead of forming the
  m x m product Sigma_W @ pinv (O(m^3));
* `analyze_official` computes each distinct representation once (21 for a 5-layer MLP) where the script
  recomputes the statistics of layer l's input that it already had as layer l-1's activation (25).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch import Tensor

try:
    from scipy.sparse.linalg import svds as _svds

    SVDS_BACKEND = "scipy.sparse.linalg.svds"
except ImportError:  # pragma: no cover - scipy ships with scikit-learn, a dnc dependency
    _svds = None
    SVDS_BACKEND = "torch.linalg.eigh (scipy missing)"

EPS64 = torch.finfo(torch.float64).eps
TIMINGS: defaultdict[str, float] = defaultdict(float)  # seconds per phase, summed over calls; reset by callers


@contextmanager
def phase(name: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        TIMINGS[name] += time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ statistics
def class_covariances(features: Tensor, labels: Tensor, num_classes: int, dtype=torch.float64):
    """Per-class grouping by boolean masks; full Sigma_W (in `dtype`) and Sigma_B (float64).

    Returns (sigma_w (m, m), sigma_b (m, m) float64, means (K, m) float64, counts (K,), per-class scatter
    traces (K,) float64). Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, Sigma_B = (1/K) sum_k
    (mu_k - mu_G)(mu_k - mu_G)^T with mu_G the unweighted mean of the class means.
    """
    num_samples, width = features.shape
    means, counts, scatter = [], [], []
    sigma_w = torch.zeros(width, width, dtype=dtype)
    for k in range(num_classes):
        members = features[labels == k].to(dtype)
        mean = members.to(torch.float64).mean(0)
        residuals = members - mean.to(dtype)
        sigma_w.addmm_(residuals.T, residuals)  # in place: no m x m temporary
        means.append(mean)
        counts.append(len(members))
        scatter.append(float(residuals.to(torch.float64).square().sum()))
    sigma_w /= num_samples
    means = torch.stack(means)
    centred = means - means.mean(0)
    sigma_b = centred.T @ centred / num_classes
    return sigma_w, sigma_b, means, torch.tensor(counts), torch.tensor(scatter, dtype=torch.float64)


def between_pinv_factors(sigma_b: Tensor, rank: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sigma_B^+ = U diag(1/s) U^T from the top-`rank` singular triplets (svds, as Papyan's code).

    Singular values below s_max * m * eps (torch.linalg.pinv's default cut-off) are dropped."""
    width = sigma_b.shape[0]
    if _svds is not None:
        import numpy as np

        u, s, _ = _svds(sigma_b.numpy(), k=rank, random_state=np.random.default_rng(seed))
        u, s = torch.from_numpy(u.copy()), torch.from_numpy(s.copy())
    else:
        s, u = torch.linalg.eigh(sigma_b)
        s, u = s[-rank:], u[:, -rank:]
    keep = s > s.max() * width * EPS64
    return u[:, keep], s[keep]


def nc_metrics(features: Tensor, labels: Tensor, num_classes: int, predictions: Tensor | None = None,
               dtype=torch.float64) -> dict[str, float]:
    """The metric set dnc reports for one representation, the official way (full m x m matrices)."""
    with phase("Sigma_W, Sigma_B (per-class masks, m x m)"):
        sigma_w, sigma_b, means, counts, scatter = class_covariances(features, labels, num_classes, dtype)
    with phase("svds(Sigma_B, K-1)"):
        u, s = between_pinv_factors(sigma_b, num_classes - 1)
    # tr(Sigma_W Sigma_B^+) = sum_j (1/s_j) u_j^T Sigma_W u_j  (Sigma_B^+ = U diag(1/s) U^T)
    sw_u = (sigma_w @ u.to(sigma_w.dtype)).to(torch.float64)
    tr_w_binv = float(((u * sw_u).sum(0) / s).sum())
    tr_w, tr_b = float(torch.trace(sigma_w.to(torch.float64))), float(torch.trace(sigma_b))
    centred = means - means.mean(0)
    variances = scatter / counts.to(torch.float64)
    pairs = [(a, b) for a in range(num_classes) for b in range(a + 1, num_classes)]
    cdnv = sum(float((variances[a] + variances[b]) / (2 * (means[a] - means[b]).square().sum()))
               for a, b in pairs) / len(pairs)
    with phase("NCC distances (cdist)"):
        nearest = torch.cdist(features.to(torch.float64), means).argmin(1)
    out = {
        "nc1": tr_w_binv / num_classes,
        "nc1_trace": tr_w / tr_b,
        "tr_sw_over_st": tr_w / (tr_w + tr_b),
        "tr_sb_over_st": tr_b / (tr_w + tr_b),
        "cdnv": cdnv,
        "nc2": _nc2(centred),
        "nc2_gram": _nc2_gram(centred),
        "ncc_acc": float((nearest == labels).double().mean()),
    }
    if predictions is not None:
        out["nc4"] = float((nearest != predictions).double().mean())
    return out


def _etf_unit(num_classes: int) -> Tensor:
    return (torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes) / math.sqrt(num_classes - 1)


def _nc2(centred: Tensor) -> float:
    directions = centred / centred.norm(dim=1, keepdim=True)
    gram = directions @ directions.T
    return float((gram / gram.norm() - _etf_unit(len(gram))).norm())


def _nc2_gram(centred: Tensor) -> float:
    directions = centred / centred.norm(dim=1, keepdim=True)
    k = len(directions)
    etf = (1 + 1 / (k - 1)) * torch.eye(k, dtype=torch.float64) - 1 / (k - 1)
    return float((directions @ directions.T - etf).square().mean())


def _nc3(weight: Tensor, means: Tensor) -> float:
    product = weight.to(torch.float64) @ (means - means.mean(0)).T
    return float((product / product.norm() - _etf_unit(len(product))).norm())


def matrix_power_psd(matrix: Tensor, alpha: float) -> Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    eigenvalues = eigenvalues.clamp_min(0)
    return eigenvectors @ torch.diag(eigenvalues ** alpha) @ eigenvectors.T


def matrix_correlation(a: Tensor, b: Tensor) -> float:
    a = a.flatten().to(torch.float64)
    b = b.flatten().to(torch.float64)
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / a.norm() / b.norm())


# ------------------------------------------------------------------------------------------------ the network
def prefix(model, layer: int, h0: Tensor) -> Tensor:
    """h_{layer}: the input run through the first `layer` Linear+ReLU layers (no grad)."""
    h = h0
    with torch.no_grad():
        for linear in model.layers[:layer]:
            h = model.act(linear(h))
    return h


def subnetwork(model, layer: int):
    """f_l: h_{l-1} -> logits, the sub-network from layer l's input (layer is 0-based here)."""
    def f(h):
        for linear in model.layers[layer:]:
            h = model.act(linear(h))
        return model.classifier(h)
    return f


def agop_vmap_jacrev(model, layer: int, h_in: Tensor, batch_size: int) -> Tensor:
    """AGOP of f_l on the samples h_in, from per-sample Jacobians vmap(jacrev(f_l)): (B, K, d) per batch."""
    f = subnetwork(model, layer)

    def single(x):
        return f(x.unsqueeze(0)).squeeze(0)

    jacobian = torch.func.vmap(torch.func.jacrev(single))
    width = h_in.shape[1]
    agop = torch.zeros(width, width, dtype=torch.float64)
    for start in range(0, len(h_in), batch_size):
        grads = jacobian(h_in[start:start + batch_size]).detach().reshape(-1, width)  # (B*K, d)
        agop += (grads.T @ grads).double()
    return agop / len(h_in)


def analyze_official(model, x: Tensor, labels: Tensor, num_classes: int, batch_size: int = 1000,
                     nfa_powers=(0.5, 1.0), dtype=torch.float64):
    """Everything `dnc analyze` reports on the train split (families nc, svd, nfa), the official way.

    Returns ({(layer, stage): metrics}, {(layer, power): nfa correlation}, nc3, [AGOP_l]). Keys follow dnc's
    table: (0, "") is h_0, (l, "") is h_l, and (l, "right" / "left" / "agop") are layer l's SVD stages.
    Phase times accumulate in TIMINGS."""
    model.eval()
    with phase("forward passes, SVD of W, stage matmuls"), torch.no_grad():
        h0 = model.embed(x).detach()
        predictions = model(x).argmax(1)
    results, nfa, agops = {}, {}, []
    results[(0, "")] = nc_metrics(h0, labels, num_classes, predictions, dtype)
    for index, linear in enumerate(model.layers):
        layer = index + 1
        weight = linear.weight.detach()
        with phase("forward passes, SVD of W, stage matmuls"):
            h_in = prefix(model, index, h0)
        with phase("AGOP: vmap(jacrev(f_l)) + J^T J, per layer"):
            agop = agop_vmap_jacrev(model, index, h_in, batch_size)
        agops.append(agop)
        with phase("eigh: AGOP^alpha for NFA, AGOP^1/2"):
            for power in nfa_powers:
                nfa[(layer, power)] = matrix_correlation(weight.T.double() @ weight.double(),
                                                         matrix_power_psd(agop, power))
            eigenvalues, eigenvectors = torch.linalg.eigh(agop)
        with phase("forward passes, SVD of W, stage matmuls"), torch.no_grad():
            agop_half = (eigenvectors * eigenvalues.clamp_min(0).sqrt()).to(h_in.dtype)  # V_a S_a^(1/2)
            _, singular, vt = torch.linalg.svd(weight, full_matrices=False)
            right = h_in @ vt.T @ torch.diag(singular)  # (S V^T h)^T = h V S
            left = linear(h_in)
            stages = {"right": right, "left": left, "": model.act(left), "agop": h_in @ agop_half}
        for stage, features in stages.items():
            results[(layer, stage)] = nc_metrics(features, labels, num_classes, predictions, dtype)
    last = prefix(model, len(model.layers), h0)
    means = torch.stack([last[labels == k].double().mean(0) for k in range(num_classes)])
    nc3 = _nc3(model.classifier.weight.detach(), means)
    return results, nfa, nc3, agops
