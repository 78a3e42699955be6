"""The official analysis algorithm, re-implemented (not copied) as the baseline for `bench/bench_analyze.py`.

What the authors' script (`nc_nn.py` of dmbeaglehole/neural_collapse_rfm) does for one checkpoint, and so what
this module does, in the script's precision (float32 features, Sigma matrices, AGOPs and eighs):

* for every layer l (phase A, run at each measurement during training):
  - h_{l-1} = `get_fmap(net, l)(train_X)`: the input run through the first l-1 layers, recomputed from the
    input for every layer (so O(L^2) layer forwards per checkpoint);
  - the AGOP of the sub-network f_l: h_{l-1} -> logits with `vmap(jacrev(f_l))` on all N samples at once,
    a (N, K, d) Jacobian, then one float32 grad^T grad; AGOP^(1/2) by `matrix_sqrt` (eigh, negatives set to 0,
    V diag(S^1/2) V^T); NFA = Pearson correlation of W^T W with the AGOP and with AGOP^(1/2);
  - h_l = `get_fmap(net, l + 1)(train_X)`, again from the input, and `get_class_variance(h_l)`;
* for every layer l (phase B, the SVD figures): h_{l-1} from the input once more, the full SVD of W_l, and
  `get_class_variance` of h_{l-1}, of `right` = h S^T V^T... as h V S^T, of `left`, and of the AGOP stage
  h V_a S_a^(1/2) with a second eigh of the AGOP: 4 calls per layer, 5 with phase A, 25 for 5 layers;
* `get_class_variance(H, Y)`: groups the samples with a per-sample Python loop (`argmax` of each one-hot label,
  append to that class's list, then stack), and builds SigmaB, SigmaW and SigmaT as full m x m matrices, one
  (X_c - mu)^T (X_c - mu) product per class for SigmaW and for SigmaT.

Where this module differs from the script (documented in BENCHMARKS.md):

* dnc's definitions, so that the metrics can be compared: Sigma_W and Sigma_T are divided by N (the script:
  K*N), phase B uses h_{l-1} after its ReLU (the script's `get_fully_linear_fmap` drops the last ReLU: the same
  cost), and the `left` stage is W h_{l-1} (the script's is ReLU(W h_{l-1}), which is h_l: the same cost);
* the metrics dnc reports beyond the script's traces and NC2 are computed the way Papyan's NC code does, once per
  distinct representation (21 for 5 layers): NC1 = tr(Sigma_W Sigma_B^+)/K with Sigma_B in float64 (np.cov),
  Sigma_B^+ = U diag(1/s) U^T from `scipy.sparse.linalg.svds(Sigma_B, k=K-1)` and the m x m x m product
  Sigma_W @ Sigma_B^+ (here in Sigma_W's dtype, float32; numpy would upcast it to float64); CDNV; NCC accuracy
  and NC4 from `cdist` distances to the class means; NC3 of the last layer.
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
def one_hot_pm1(labels: Tensor, num_classes: int) -> Tensor:
    """The script's labels: one-hot rows shifted to -1 / +1."""
    return 2.0 * torch.nn.functional.one_hot(labels, num_classes).float() - 1.0


def class_variance(features: Tensor, onehot: Tensor, num_classes: int):
    """The script's `get_class_variance`, in the features' dtype: a per-sample loop groups the rows by the argmax
    of their label; Sigma_B, Sigma_W, Sigma_T are full m x m matrices (Sigma_W and Sigma_T: one product per class).

    Returns (sigma_b, sigma_w, sigma_t, class means (K, m), counts (K,), per-class traces of (X_c - mu_c)^T
    (X_c - mu_c) (K,) float64). Sigma_W and Sigma_T are divided by N (dnc's default; the script divides by K*N).
    """
    with phase("get_class_variance: per-sample grouping loop + stack"):
        embeddings = [[] for _ in range(num_classes)]
        for x, y in zip(features, onehot):
            embeddings[torch.argmax(y)].append(x)
        embeddings = [torch.stack(rows) for rows in embeddings]
    with phase("get_class_variance: means, Sigma_B, Sigma_W, Sigma_T (m x m)"):
        return _class_variance(embeddings, num_classes)


def _class_variance(embeddings, num_classes):
    counts = torch.tensor([len(rows) for rows in embeddings])
    means = torch.stack([rows.mean(dim=0) for rows in embeddings])
    mu_g = means.mean(dim=0, keepdim=True)
    sigma_b = (means - mu_g).T @ (means - mu_g) / num_classes
    sigma_w = sigma_t = 0.0
    scatter = []
    for c in range(num_classes):
        within = embeddings[c] - means[c].unsqueeze(0)
        sigma_wc = within.T @ within
        sigma_w += sigma_wc
        scatter.append(float(torch.trace(sigma_wc)))
        total = embeddings[c] - mu_g
        sigma_t += total.T @ total
    num_samples = int(counts.sum())
    sigma_w /= num_samples
    sigma_t /= num_samples
    return sigma_b, sigma_w, sigma_t, means, counts, torch.tensor(scatter, dtype=torch.float64)


def between_pinv(means: Tensor, num_classes: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Papyan's route: Sigma_B in float64 (m x m), its top K-1 singular pairs by svds, and the m x m
    Sigma_B^+ = U diag(1/s) U^T. Singular values below s_max * m * eps (pinv's default cut-off) are dropped.
    Returns (pinv (m, m) float64, U, s)."""
    centred = means.double() - means.double().mean(0)
    sigma_b = centred.T @ centred / num_classes
    width = sigma_b.shape[0]
    if _svds is not None:
        import numpy as np

        u, s, _ = _svds(sigma_b.numpy(), k=num_classes - 1, random_state=np.random.default_rng(seed))
        u, s = torch.from_numpy(u.copy()), torch.from_numpy(s.copy())
    else:
        s, u = torch.linalg.eigh(sigma_b)
        s, u = s[-(num_classes - 1):], u[:, -(num_classes - 1):]
    keep = s > s.max() * width * EPS64
    u, s = u[:, keep], s[keep]
    return u @ torch.diag(1.0 / s) @ u.T, u, s


def papyan_nc1(sigma_w: Tensor, inv_sb: Tensor, num_classes: int) -> float:
    """tr(Sigma_W Sigma_B^+) / K with the m x m x m product, in Sigma_W's dtype."""
    return float(torch.trace(sigma_w @ inv_sb.to(sigma_w.dtype))) / num_classes


def nc2_from_means(means: Tensor) -> float:
    """The script's `get_NC2_from_means`: mean squared difference of the normalised centred means' Gram from
    the simplex ETF's (dnc's nc2_gram)."""
    centred = means - means.mean(0)
    directions = centred / centred.norm(dim=1, keepdim=True)
    k = len(directions)
    simplex = (1 + 1 / (k - 1)) * torch.eye(k, dtype=directions.dtype) - 1 / (k - 1)
    return float((directions @ directions.T - simplex).square().mean())


def _etf_unit(num_classes: int) -> Tensor:
    return (torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes) / math.sqrt(num_classes - 1)


def _nc2(centred: Tensor) -> float:
    directions = centred / centred.norm(dim=1, keepdim=True)
    gram = directions @ directions.T
    return float((gram / gram.norm() - _etf_unit(len(gram))).norm())


def _nc3(weight: Tensor, means: Tensor) -> float:
    product = weight.to(torch.float64) @ (means - means.mean(0)).T
    return float((product / product.norm() - _etf_unit(len(product))).norm())


def nc_metrics(features: Tensor, onehot: Tensor, labels: Tensor, num_classes: int,
               predictions: Tensor | None = None, extras: bool = True) -> dict[str, float]:
    """One `get_class_variance` call and the metrics of one representation. extras=False: only what the script
    reports (the traces and NC2 from the means); extras=True adds Papyan's NC1, CDNV, NCC accuracy and NC4."""
    _, sigma_w, sigma_t, means, counts, scatter = class_variance(features, onehot, num_classes)
    means64 = means.double()
    centred = means64 - means64.mean(0)
    tr_w, tr_t = float(torch.trace(sigma_w)), float(torch.trace(sigma_t))
    tr_b = float(centred.square().sum()) / num_classes
    out = {"nc1_trace": tr_w / tr_b, "tr_sw_over_st": tr_w / tr_t, "tr_sb_over_st": tr_b / tr_t,
           "nc2_gram": nc2_from_means(means64)}
    if not extras:
        return out
    with phase("Papyan NC1: svds(Sigma_B, K-1), Sigma_W @ Sigma_B^+ (m^3)"):
        inv_sb, _, _ = between_pinv(means, num_classes)
        out["nc1"] = papyan_nc1(sigma_w, inv_sb, num_classes)
    variances = scatter / counts.to(torch.float64)
    pairs = [(a, b) for a in range(num_classes) for b in range(a + 1, num_classes)]
    out["cdnv"] = sum(float((variances[a] + variances[b]) / (2 * (means64[a] - means64[b]).square().sum()))
                      for a, b in pairs) / len(pairs)
    out["nc2"] = _nc2(centred)
    with phase("NCC / NC4 (cdist to the class means)"):
        nearest = torch.cdist(features, means).argmin(1)
    out["ncc_acc"] = float((nearest == labels).double().mean())
    if predictions is not None:
        out["nc4"] = float((nearest != predictions).double().mean())
    return out


def mat_cov(a: Tensor, b: Tensor) -> float:
    """The script's NFA correlation: Pearson correlation of the two matrices' entries (float32 there)."""
    a, b = a.flatten().to(torch.float64), b.flatten().to(torch.float64)
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / a.norm() / b.norm())


def matrix_sqrt(matrix: Tensor) -> Tensor:
    """The script's `matrix_sqrt`: eigh, negatives set to 0, V diag(S^1/2) V^T."""
    values, vectors = torch.linalg.eigh(matrix)
    values = values.clamp_min(0)
    return vectors @ torch.diag(values ** 0.5) @ vectors.T


# ------------------------------------------------------------------------------------------------ the network
def fmap(model, layer: int, h0: Tensor) -> Tensor:
    """`get_fmap(net, layer)(train_X)`: the input run through the first `layer` Linear+ReLU layers."""
    h = h0
    with torch.no_grad():
        for linear in model.layers[:layer]:
            h = model.act(linear(h))
    return h


def submodel(model, layer: int):
    """`get_submodel(net, layer)`: f_l, h_{l-1} -> logits (layer is 0-based here)."""
    def f(h):
        for linear in model.layers[layer:]:
            h = model.act(linear(h))
        return model.classifier(h)
    return f


def measure_agop(model, layer: int, h_in: Tensor) -> Tensor:
    """The script's `measure_agop`: vmap(jacrev(f_l)) on all N samples at once -> (N, K, d), then one grad^T grad
    in the features' dtype. Not divided by N (the script does not; every metric of it is scale-invariant)."""
    f = submodel(model, layer)

    def single(x):
        return f(x.unsqueeze(0)).squeeze(0)

    grads = torch.func.vmap(torch.func.jacrev(single))(h_in).detach()
    grads = grads.reshape(-1, h_in.shape[1])
    return grads.T @ grads


def analyze_official(model, x: Tensor, labels: Tensor, num_classes: int, nfa_powers=(0.5, 1.0)):
    """Everything `dnc analyze` reports on the train split (families nc, svd, nfa), the script's way.

    Returns ({(layer, stage): metrics}, {(layer, power): nfa correlation}, nc3, [AGOP_l / N]). Keys follow dnc's
    table: (0, "") is h_0, (l, "") is h_l, and (l, "right" / "left" / "agop") are layer l's SVD stages.
    Phase times accumulate in TIMINGS."""
    if set(nfa_powers) != {0.5, 1.0}:
        raise ValueError("the script computes NFA with the AGOP and its square root only")
    model.eval()
    onehot = one_hot_pm1(labels, num_classes)
    with torch.no_grad():
        h0 = model.embed(x).detach()
        predictions = model(x).argmax(1)
    results, nfa, agops = {}, {}, []

    def stats(key, features):
        metrics = nc_metrics(features, onehot, labels, num_classes, predictions, extras=key not in results)
        results[key] = results.get(key, metrics)

    # phase A: per layer, the AGOP and NFA of layer l, then the statistics of h_l
    for index, linear in enumerate(model.layers):
        layer = index + 1
        with phase("forward passes from the input (get_fmap)"):
            h_in = fmap(model, index, h0)
        with phase("AGOP: vmap(jacrev(f_l)) on all N + grad^T grad"), torch.no_grad():
            agop = measure_agop(model, index, h_in)
        agops.append(agop)
        with phase("eigh: matrix_sqrt (phase A) and V_a S_a^1/2 (phase B)"):
            sqrt_agop = matrix_sqrt(agop)
        with phase("NFA correlations"):
            weight = linear.weight.detach()
            nfm = weight.T @ weight
            nfa[(layer, 1.0)] = mat_cov(agop, nfm)
            nfa[(layer, 0.5)] = mat_cov(sqrt_agop, nfm)
        with phase("forward passes from the input (get_fmap)"):
            h_out = fmap(model, index + 1, h0)
        stats((layer, ""), h_out)

    # phase B: per layer, the SVD-decomposed representations
    for index, linear in enumerate(model.layers):
        layer = index + 1
        weight = linear.weight.detach()
        with phase("forward passes from the input (get_fmap)"):
            h_in = fmap(model, index, h0)
        stats((index, ""), h_in)
        with phase("SVD of W and the stage matmuls"), torch.no_grad():
            _, singular, vt = torch.linalg.svd(weight)  # full_matrices, as the script
            s_mat = torch.zeros(weight.shape, dtype=weight.dtype)
            s_mat[:len(singular), :len(singular)] = torch.diag(singular)
            right = h_in @ vt.T @ s_mat.T
            left = linear(h_in)
        stats((layer, "right"), right)
        stats((layer, "left"), left)
        with phase("eigh: matrix_sqrt (phase A) and V_a S_a^1/2 (phase B)"):
            values, vectors = torch.linalg.eigh(agops[index])
        with phase("SVD of W and the stage matmuls"):
            agop_stage = h_in @ vectors @ torch.diag(values.clamp_min(0) ** 0.5)
        stats((layer, "agop"), agop_stage)
    last = fmap(model, len(model.layers), h0)
    means = torch.stack([last[labels == k].double().mean(0) for k in range(num_classes)])
    nc3 = _nc3(model.classifier.weight.detach(), means)
    return results, nfa, nc3, [a.double() / len(x) for a in agops]
