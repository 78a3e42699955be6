"""Neural-collapse metrics: NC1-NC4, CDNV and NCC accuracy (the AGOP and the NFA are in dnc_cli/metrics/agop/; the
metrics of class pairs, K x K, in patches in dnc_cli/metrics/class_pairs.py).

PAPER.md defines every formula used here. A representation h_i in R^m of N samples with labels y_i in
[0, K) is analysed in two streaming passes over the data, so nothing of size N x m is ever held:

  pass 1  ClassMeans        per-class sums and counts                       -> class means mu_k
  pass 2  NeuralCollapse    scatter of h_i around mu_{y_i}, its projection
                            onto span(Sigma_B), nearest-class-centre hits   -> nc1, nc1_trace, cdnv, nc2,
                                                                               ncc_acc, nc4, ...

Both accumulators follow the torchmetrics pattern (`update(batch)` then `compute()`), accumulate in
float64 whatever the input dtype, keep their state on one device, and never form an m x m matrix: at
m = 4096 (Deep RFM's random features) an m x m Sigma_W plus its pseudo-inverse would dominate the run.
Their state is a set of sums (`sum_states()`), so data-parallel ranks each accumulate a shard and `sync()` adds
the ranks' states (torchmetrics' dist_reduce_fx="sum"; dnc_cli/distributed.py): ClassMeans.sync() before
compute(), so that pass 2 of every rank measures scatter around the same, global class means, and
NeuralCollapse.sync() before compute().

Conventions (PAPER.md, "Notation"):
- Classes without samples are dropped everywhere: K below is the number of non-empty classes.
- The global mean mu_G is, by default, the unweighted mean of the class means (official code, Papyan);
  `global_mean="weighted"` gives the sample-weighted mean (Rangamani, Zhu). They differ only for
  imbalanced classes.
- Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T; `official_scaling=True` divides by K*N as the
  official code does, which makes nc1 and nc1_trace K times smaller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dnc_cli.distributed import all_reduce_sum
from dnc_cli.metrics.class_pairs import CLASS_PATCH, cdnv, nc2, nc2_and_nc2_gram, nc2_gram, nc3, thin_svd

__all__ = ["GLOBAL_MEANS", "ClassMeans", "ClassMeansResult", "NeuralCollapse", "cdnv", "nc2", "nc2_gram", "nc3",
           "nc_of"]

GLOBAL_MEANS = ("unweighted", "weighted")
FLOAT64_EPS = torch.finfo(torch.float64).eps
# updates work through a batch in row chunks of ~8 MB of float64: the temporaries stay small and are reused by
# the allocator (a fresh B x m float64 array per batch costs page faults that dominate at m ~ 10^4-10^5)
CHUNK_ELEMENTS = 1 << 20


def _row_chunks(num_features: int, num_rows: int):
    rows = max(1, CHUNK_ELEMENTS // max(num_features, 1))
    return (slice(start, start + rows) for start in range(0, num_rows, rows))


# ----------------------------------------------------------------------------------------------------------
# pass 1: class means


@dataclass
class ClassMeansResult:
    means: Tensor  # (K, m) float64; rows of empty classes are zeros
    counts: Tensor  # (K,) int64

    @property
    def present(self) -> Tensor:
        """Boolean mask (K,) of the classes that have at least one sample."""
        return self.counts > 0

    def global_mean(self, mode: str = "unweighted") -> Tensor:
        """mu_G (m,): mean of the non-empty class means ("unweighted") or of all samples ("weighted")."""
        if mode == "unweighted":
            return self.means[self.present].mean(0)
        if mode == "weighted":
            counts = self.counts.to(torch.float64)
            return (counts[:, None] * self.means).sum(0) / counts.sum()
        raise ValueError(f"unknown global_mean {mode!r}; valid: {', '.join(GLOBAL_MEANS)}")

    def centred_means(self, mode: str = "unweighted") -> Tensor:
        """M~ (K_present, m): the non-empty classes' means minus mu_G, in class order."""
        return self.means[self.present] - self.global_mean(mode)

    def transformed(self, linear: Tensor) -> ClassMeansResult:
        """Class means of the features `h @ linear.T` (linear: (m_out, m)), without another pass.

        A mean commutes with a linear map, so these are `means @ linear.T` (empty rows stay zero). This gives
        the means of W h or AGOP^{1/2} h from the means of h (PAPER.md, "SVD-decomposed per-layer NC1").
        """
        linear = linear.to(device=self.means.device, dtype=torch.float64)
        return ClassMeansResult(means=self.means @ linear.T, counts=self.counts.clone())


class ClassMeans:
    """Pass 1 of a representation's statistics: per-class sums and counts (O(K*m) memory)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.sums: Tensor | None = None  # (K, m) float64, allocated on the first batch's device
        self.counts: Tensor | None = None  # (K,) int64

    def update(self, features: Tensor, labels: Tensor) -> None:
        """features (B, m) of any float dtype, labels (B,) integers in [0, K)."""
        _check_batch(features, labels)
        if self.sums is None:
            self.sums = torch.zeros(self.num_classes, features.shape[1], dtype=torch.float64,
                                    device=features.device)
            self.counts = torch.zeros(self.num_classes, dtype=torch.int64, device=features.device)
        labels = labels.to(device=self.sums.device, dtype=torch.int64)
        for rows in _row_chunks(features.shape[1], features.shape[0]):
            self.sums.index_add_(0, labels[rows], features[rows].to(device=self.sums.device, dtype=torch.float64))
        self.counts += torch.bincount(labels, minlength=self.num_classes)

    def sum_states(self) -> list[Tensor]:
        """The state, all sums: class sums (float64) and counts (int64)."""
        if self.sums is None:
            raise ValueError("ClassMeans.sum_states() called before any update()")
        return [self.sums, self.counts]

    def sync(self) -> None:
        """Add every rank's sums and counts (no-op in one process): then compute() gives the global class means,
        classes absent from this rank's shard included."""
        all_reduce_sum(self.sum_states())

    def compute(self) -> ClassMeansResult:
        if self.sums is None:
            raise ValueError("ClassMeans.compute() called before any update()")
        means = self.sums / self.counts.clamp_min(1)[:, None].to(torch.float64)  # empty classes: 0 / 1 = 0
        return ClassMeansResult(means=means, counts=self.counts.clone())


# ----------------------------------------------------------------------------------------------------------
# pass 2: NC1, CDNV, NCC accuracy, NC4 (and NC2, which needs only the means)


class NonFiniteFeatures(ValueError):
    """Class means with NaN or Inf: features that are not finite (or overflow float64 when summed). No metric of them
    is a number, and the SVD of the class means fails."""


class NeuralCollapse:
    """Pass 2: given the class means, accumulate what NC1, CDNV, NC4 and NCC accuracy need.

    NC1 without an m x m matrix (PAPER.md, NC1). Sigma_B = (1/K) M~^T M~ has rank r <= K-1. With the thin
    SVD M~ = U S V^T, its non-zero eigenpairs are lambda_j = s_j^2 / K with eigenvectors q_j = the right
    singular vectors v_j, so Sigma_B^+ = Q diag(1/lambda) Q^T and

        tr(Sigma_W Sigma_B^+) = sum_j (1/lambda_j) q_j^T Sigma_W q_j
                              = sum_j (1/lambda_j) (1/N) sum_i (q_j^T (h_i - mu_{y_i}))^2,

    i.e. only the diagonal of the r x r second moment of the projected residuals is needed: one (B x m) @
    (m x r) matmul per batch. The SVD of the K x m matrix M~ is used rather than eigh of the Gram M~M~^T/K:
    same eigenpairs, but rounding errors are not squared, so exactly-zero directions come out at ~eps^2
    lambda_max instead of ~eps lambda_max, far below the pseudo-inverse cut-off.

    The passes must see the same samples: compute() raises if pass 2's per-class counts differ from pass 1's
    (a shuffled loader with drop_last, say, would otherwise measure scatter around the wrong means).

    Degenerate inputs give no NaN in ordinary cases (m < K-1, a one-sample class, exact collapse all give
    finite values). Only when all class means coincide (Sigma_B = 0) are nc1 and nc1_trace inf (nan if also
    Sigma_W = 0, see `_ratio`), and nc2 / nc2_gram nan (the directions M are 0/0).
    """

    def __init__(self, class_means: ClassMeansResult, global_mean: str = "unweighted",
                 official_scaling: bool = False):
        present = class_means.present
        num_present = int(present.sum())
        if num_present < 2:
            raise ValueError(f"neural-collapse metrics need at least 2 non-empty classes, got {num_present}")
        if not bool(torch.isfinite(class_means.means[present]).all()):
            raise NonFiniteFeatures("the features are not finite (NaN or Inf, or so large that their sums overflow "
                                    "float64), so no metric of them is a number")
        self.official_scaling = official_scaling
        self.expected_counts = class_means.counts.clone()
        self.device = class_means.means.device
        self.num_classes = class_means.means.shape[0]
        self.present_classes = torch.nonzero(present).flatten()  # maps NCC argmin over present -> label
        self.global_mean = class_means.global_mean(global_mean)
        # every class's mean relative to mu_G (rows of empty classes are never used: their count is 0)
        self.centred_means_all = class_means.means - self.global_mean
        self.centred_means = self.centred_means_all[present]  # M~, (K, m)
        self.centred_sq_norms = self.centred_means.square().sum(1)
        self.class_means = class_means.means

        # Sigma_B's non-zero eigenpairs from the thin SVD of M~ (see the class docstring)
        singular_values, right_vectors_t = thin_svd(self.centred_means)
        eigenvalues = singular_values.square() / num_present
        # Sigma_B^+ cut-off: eigenvalues <= lambda_max * max(m, K) * eps count as zero. For m >= K this is
        # torch.linalg.pinv's default rtol on the m x m Sigma_B (max(m, m) * eps), so the tests can compare
        # with pinv; the centred means are linearly dependent (sum_k w_k M~_k = 0), so at least one zero
        # eigenvalue is always cut.
        cut_off = eigenvalues.max() * max(self.centred_means.shape) * FLOAT64_EPS
        kept = eigenvalues > cut_off
        self.between_eigenvalues = eigenvalues[kept]  # (r,)
        self.between_basis = right_vectors_t[kept].T.contiguous()  # Q, (m, r), orthonormal columns

        # running sums (tensors on self.device: no host sync per batch)
        self.scatter_per_class = torch.zeros(self.num_classes, dtype=torch.float64, device=self.device)
        self.counts = torch.zeros(self.num_classes, dtype=torch.int64, device=self.device)
        self.projected_scatter = torch.zeros(len(self.between_eigenvalues), dtype=torch.float64,
                                             device=self.device)
        self.ncc_correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.nc4_mismatches = torch.zeros((), dtype=torch.int64, device=self.device)
        self.num_predicted = torch.zeros((), dtype=torch.int64, device=self.device)

    def update(self, features: Tensor, labels: Tensor, predictions: Tensor | None = None) -> None:
        """features (B, m), labels (B,); predictions (B,) = the network's argmax, needed only for nc4."""
        _check_batch(features, labels)
        labels = labels.to(device=self.device, dtype=torch.int64)
        self.counts += torch.bincount(labels, minlength=self.num_classes)
        for rows in _row_chunks(features.shape[1], features.shape[0]):
            y = labels[rows]
            # within-class residuals, exactly: ||h_i - mu_{y_i}||^2 per class (no E[h^2] - mu^2 cancellation)
            residuals = features[rows].to(device=self.device, dtype=torch.float64, copy=True)
            residuals -= self.class_means[y]
            self.scatter_per_class.index_add_(0, y, torch.linalg.vector_norm(residuals, dim=1).square())
            # diagonal of Q^T (sum_i r_i r_i^T) Q, for tr(Sigma_W Sigma_B^+)
            self.projected_scatter += (residuals @ self.between_basis).square().sum(0)
            nearest = self.present_classes[self._nearest_centre(residuals + self.centred_means_all[y])]
            self.ncc_correct += (nearest == y).sum()
            if predictions is not None:
                self.nc4_mismatches += (predictions[rows].to(self.device) != nearest).sum()
                self.num_predicted += nearest.shape[0]

    def _nearest_centre(self, centred: Tensor) -> Tensor:
        """argmin_k ||h - mu_k||^2 = argmin_k (||mu~_k||^2 - 2 (h - mu_G).mu~_k) for the rows h - mu_G (||h - mu_G||^2
        is the same for every k, so it is left out), over patches of CLASS_PATCH classes: rows x patch distances
        at a time, never rows x K (K = 32,000 classes: README, "Measure your own model")."""
        best_value = best_index = None
        for start in range(0, self.centred_means.shape[0], CLASS_PATCH):
            patch = slice(start, start + CLASS_PATCH)
            distances = self.centred_sq_norms[patch] - 2.0 * (centred @ self.centred_means[patch].T)
            value, index = distances.min(1)
            if best_value is None:
                best_value, best_index = value, index
            else:  # strictly smaller only: ties go to the lower class, as one argmin over all K does
                better = value < best_value
                best_value = torch.where(better, value, best_value)
                best_index = torch.where(better, index + start, best_index)
        return best_index

    def sum_states(self) -> list[Tensor]:
        """The running sums: per-class scatter and projected scatter (float64), counts and NCC/NC4 tallies (int64)."""
        return [self.scatter_per_class, self.counts, self.projected_scatter, self.ncc_correct, self.nc4_mismatches,
                self.num_predicted]

    def sync(self) -> None:
        """Add every rank's running sums (no-op in one process); the class means it was built from must be the
        synchronised ones, the same on every rank."""
        all_reduce_sum(self.sum_states())

    def compute(self) -> dict[str, float]:
        if not torch.equal(self.counts, self.expected_counts.to(self.device)):
            raise ValueError(f"pass 2 saw per-class counts {self.counts.tolist()} but the class means came "
                             f"from counts {self.expected_counts.tolist()}: both passes must see the same "
                             f"data")
        num_present = self.centred_means.shape[0]
        num_samples = int(self.counts.sum())
        # Sigma_W's normaliser: N (Papyan), or K*N (official code) -- PAPER.md, NC1
        scale = num_samples * num_present if self.official_scaling else num_samples

        trace_within = float(self.scatter_per_class.sum()) / scale
        trace_between = float(self.centred_sq_norms.sum()) / num_present
        trace_total = trace_within + trace_between
        # (1/K) tr(Sigma_W Sigma_B^+) = (1/K) sum_j (1/lambda_j) (1/scale) sum_i (q_j^T r_i)^2
        nc1 = float((self.projected_scatter / self.between_eigenvalues).sum()) / scale / num_present
        if len(self.between_eigenvalues) == 0:  # all class means equal: Sigma_B = 0
            nc1 = _ratio(trace_within, 0.0)

        present = self.present_classes
        variances = self.scatter_per_class[present] / self.counts[present].to(torch.float64)  # Var_k
        results = {
            "nc1": nc1,
            "nc1_trace": _ratio(trace_within, trace_between),
            "tr_sw_over_st": _ratio(trace_within, trace_total),
            "tr_sb_over_st": _ratio(trace_between, trace_total),
            "cdnv": cdnv(variances, self.centred_means),
            **nc2_and_nc2_gram(self.centred_means),
            "ncc_acc": int(self.ncc_correct) / num_samples,
        }
        if int(self.num_predicted) > 0:
            results["nc4"] = int(self.nc4_mismatches) / int(self.num_predicted)
        return results


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, with x / 0 = inf for x > 0 and 0 / 0 = nan.

    0 / 0 arises when every feature is the same point (a dead ReLU layer, say): that is not collapse onto
    separated class means, so it is reported as nan rather than as a perfect 0.
    """
    if denominator > 0:
        return numerator / denominator
    return math.inf if numerator > 0 else math.nan


def _check_batch(features: Tensor, labels: Tensor) -> None:
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"expected features (B, m) and labels (B,), got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")


# ----------------------------------------------------------------------------------------------------------
# both passes over features held in memory


def nc_of(features: Tensor, labels: Tensor, num_classes: int, global_mean: str = "unweighted",
          official_scaling: bool = False, batch_size: int = 4096) -> dict[str, float]:
    """ClassMeans then NeuralCollapse over a feature matrix already in memory (Deep RFM's representations), by
    `batch_size` rows; the metrics of `NeuralCollapse.compute` (no nc4: there are no predictions)."""
    means = ClassMeans(num_classes)
    for i in range(0, len(features), batch_size):
        means.update(features[i:i + batch_size], labels[i:i + batch_size])
    collapse = NeuralCollapse(means.compute(), global_mean=global_mean, official_scaling=official_scaling)
    for i in range(0, len(features), batch_size):
        collapse.update(features[i:i + batch_size], labels[i:i + batch_size])
    return collapse.compute()
