"""The collapse geometry that the field measured after Papyan et al.: GNC2, UNC3, equinorm, effective ranks.

README, "dnc measure", family `geometry`, gives the formulas; rhubarbwu/neural-collapse measures the same quantities
(its `kernels.py` and `measure.py`), and its patch size is the idea behind the tiling below. With the centred class
means mu~_k = mu_k - mu_G (PAPER.md, Notation; collapse.ClassMeansResult.centred_means) of the K non-empty classes:

  equinorm      std(||mu~_k||) / mean(||mu~_k||)                        Papyan, Han, Donoho 2020, Fig. 2
  gnc2          mean over pairs k < k' of log(1 / ||u_k - u_k'||),       Liu et al. 2023 (arXiv 2303.06484): the
                u_k = mu~_k / ||mu~_k||                                  logarithmic energy of the directions
  unc3          std(cos_k) / mean(cos_k), cos_k = cos(w_k, mu~_k)         Wu & Papyan 2024 (arXiv 2405.17767), w_k the
                                                                         classifier's row k
  erank_within  exp(H(p)), p = the eigenvalues of Sigma_W / their sum    Roy & Vetterli 2007, of Sigma_W
  erank_total   the same of Sigma_T = Sigma_W + Sigma_B                  (PAPER.md, Notation)

std is the sample standard deviation (ddof 1, torch.std's and rhubarbwu's). Closed forms: means of equal norm give
equinorm 0; a self-dual classifier (w_k proportional to mu~_k) gives unc3 0; K <= m + 1 directions on the sphere
have gnc2 >= -(1/2) log(2K / (K - 1)), with equality exactly for a simplex ETF (`gnc2_simplex_etf`: the mean
squared distance of K unit vectors is at most 2K/(K-1), and -(1/2) log is convex and decreasing, so Jensen's
inequality bounds the mean); Sigma = c I_m gives an effective rank of m.

Memory. gnc2 is the only pairwise quantity: K(K-1)/2 pairs, taken in tiles of `patch_size` x `patch_size` classes,
so beyond the K x m class means that exist already it holds at most 2 tiles of means (2·P·m) and a few P x P
arrays (P = PATCH_SIZE = 1,024: 16 MB of P x P float64, plus 16 MB per 1,000 features): K = 32,000 classes never
form a K x K matrix. The effective ranks need the spectrum of an m x m matrix: `WithinScatter` sums it in float64
for m <= ERANK_MAX_FEATURES (4,096: 128 MB, one eigvalsh); wider representations get no erank rows (a flattened
conv map; `pool=avg` makes it m = channels).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dnc_cli.distributed import all_reduce_sum
from dnc_cli.metrics.collapse import CHUNK_ELEMENTS, ClassMeansResult

# the metric names this module writes to the table (README, family `geometry`)
GEOMETRY_METRICS = ("equinorm", "gnc2", "unc3", "erank_within", "erank_total")
PATCH_SIZE = 1024  # classes per side of a gnc2 tile
ERANK_MAX_FEATURES = 4096  # widest representation whose m x m covariance is summed for the effective ranks
# pairs of directions closer than this squared distance get it from their difference, not from 2 - 2 u.u': the
# Gram form's absolute error (~m·eps) would be a large relative error of a small distance, and log(1/d) needs it
# relative (at 1e-4 the Gram form is still good to ~m·1e-12)
CLOSE_SQ_DISTANCE = 1e-4


def coefficient_of_variation(values: Tensor) -> float:
    """std / mean with the sample standard deviation (ddof 1), in float64."""
    values = values.to(torch.float64)
    return float(values.std() / values.mean())


def equinorm(centred_means: Tensor) -> float:
    """Coefficient of variation of the centred class-mean norms ||mu_k - mu_G|| (0 for equal norms)."""
    return coefficient_of_variation(torch.linalg.vector_norm(centred_means.to(torch.float64), dim=1))


def gnc2(centred_means: Tensor, patch_size: int = PATCH_SIZE) -> float:
    """Mean logarithmic energy of the directions u_k = mu~_k / ||mu~_k||: the mean over pairs k < k' of
    log(1 / ||u_k - u_k'||), tiled over pairs of classes (module docstring). +inf when two directions coincide."""
    means = centred_means.to(torch.float64)
    num_classes = means.shape[0]
    if num_classes < 2:
        raise ValueError(f"gnc2 needs at least 2 classes, got {num_classes}")
    inverse_norms = 1.0 / torch.linalg.vector_norm(means, dim=1)
    total = torch.zeros((), dtype=torch.float64, device=means.device)
    starts = range(0, num_classes, patch_size)
    for first in starts:
        rows = means[first:first + patch_size] * inverse_norms[first:first + patch_size, None]
        for second in starts:
            if second < first:
                continue
            cols = rows if second == first else means[second:second + patch_size] * \
                inverse_norms[second:second + patch_size, None]
            sq_distances = (2.0 - 2.0 * (rows @ cols.T)).clamp_min_(0.0)
            if second == first:  # a diagonal tile: its pairs k < k' only
                keep = torch.ones_like(sq_distances, dtype=torch.bool).triu_(1)
            else:
                keep = torch.ones_like(sq_distances, dtype=torch.bool)
            close = torch.nonzero(keep & (sq_distances < CLOSE_SQ_DISTANCE))
            for part in close.split(max(1, CHUNK_ELEMENTS // max(means.shape[1], 1))):  # ~8 MB of differences
                sq_distances[part[:, 0], part[:, 1]] = (rows[part[:, 0]] - cols[part[:, 1]]).square().sum(1)
            total += -0.5 * torch.log(sq_distances[keep]).sum()
    return float(total) / (num_classes * (num_classes - 1) / 2)


def gnc2_simplex_etf(num_classes: int) -> float:
    """gnc2 of a simplex ETF of K directions, its minimum over K <= m + 1 unit vectors: every pair is at squared
    distance 2 + 2/(K-1) = 2K/(K-1)."""
    return -0.5 * math.log(2.0 * num_classes / (num_classes - 1))


def unc3(classifier_weight: Tensor, class_means: ClassMeansResult, global_mean: str = "unweighted") -> float:
    """Uniform duality: the coefficient of variation over the non-empty classes of cos(w_k, mu_k - mu_G), w_k row k
    of the classifier A (K x m) that reads the representation (0 when A is self-dual up to per-class scales)."""
    present = class_means.present
    if classifier_weight.shape != class_means.means.shape:
        raise ValueError(f"classifier weight {tuple(classifier_weight.shape)} does not match the class means "
                         f"{tuple(class_means.means.shape)}")
    if int(present.sum()) < 2:
        raise ValueError(f"unc3 needs at least 2 non-empty classes, got {int(present.sum())}")
    weight = classifier_weight.to(device=class_means.means.device, dtype=torch.float64)[present]
    centred = class_means.centred_means(global_mean)
    cosines = torch.nn.functional.cosine_similarity(weight, centred, dim=1, eps=0.0)
    return coefficient_of_variation(cosines)


def effective_rank(eigenvalues: Tensor) -> float:
    """Roy & Vetterli's effective rank of a PSD matrix from its eigenvalues: exp(-sum_i p_i log p_i),
    p = lambda / sum(lambda), 0 log 0 = 0; rounding's negative eigenvalues count as 0. nan for the zero matrix."""
    values = eigenvalues.to(torch.float64).clamp_min(0.0)
    total = values.sum()
    if not total > 0:
        return math.nan
    p = values / total
    entropy = -torch.special.xlogy(p, p).sum()
    return float(torch.exp(entropy))


class WithinScatter:
    """Sweep 2's m x m within-class scatter S = sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T in float64, for the
    effective ranks (m <= ERANK_MAX_FEATURES). A sum, so data-parallel ranks add it (`sync`)."""

    def __init__(self, class_means: ClassMeansResult):
        if class_means.means.shape[1] > ERANK_MAX_FEATURES:
            raise ValueError(f"the effective ranks need an m x m matrix; m = {class_means.means.shape[1]} > "
                             f"{ERANK_MAX_FEATURES}")
        self.class_means = class_means
        width = class_means.means.shape[1]
        self.scatter = torch.zeros(width, width, dtype=torch.float64, device=class_means.means.device)
        self.count = torch.zeros((), dtype=torch.int64, device=class_means.means.device)

    def update(self, features: Tensor, labels: Tensor) -> None:
        labels = labels.to(device=self.scatter.device, dtype=torch.int64)
        step = max(1, CHUNK_ELEMENTS // max(features.shape[1], 1))  # ~8 MB of float64 residuals at a time
        for start in range(0, features.shape[0], step):
            rows = slice(start, start + step)
            residuals = features[rows].to(device=self.scatter.device, dtype=torch.float64, copy=True)
            residuals -= self.class_means.means[labels[rows]]
            self.scatter.addmm_(residuals.T, residuals)
        self.count += labels.shape[0]

    def sum_states(self) -> list[Tensor]:
        return [self.scatter, self.count]

    def sync(self) -> None:
        all_reduce_sum(self.sum_states())

    def compute(self, global_mean: str = "unweighted", official_scaling: bool = False) -> dict[str, float]:
        """erank_within of Sigma_W = S / N (S / (K N) with the official scaling, as NC1's) and erank_total of
        Sigma_W + Sigma_B, Sigma_B = M~^T M~ / K (PAPER.md, Notation)."""
        centred = self.class_means.centred_means(global_mean)
        num_present = centred.shape[0]
        scale = int(self.count) * (num_present if official_scaling else 1)
        within = self.scatter / scale
        total = within + centred.T @ centred / num_present
        return {"erank_within": effective_rank(torch.linalg.eigvalsh(within)),
                "erank_total": effective_rank(torch.linalg.eigvalsh(total))}


def geometry_of_means(centred_means: Tensor, patch_size: int = PATCH_SIZE) -> dict[str, float]:
    """The metrics of the class means alone: equinorm and gnc2."""
    return {"equinorm": equinorm(centred_means), "gnc2": gnc2(centred_means, patch_size)}
