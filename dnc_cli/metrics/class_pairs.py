"""The metrics of the class means alone (PAPER.md, "The four neural-collapse metrics"): CDNV, NC2 (both forms) and
NC3, whose definitions run over the K x K pairs of classes, computed in patches of CLASS_PATCH rows so that no
K x K matrix is formed (as rhubarbwu/neural-collapse does with its patch size): at K = 32,000 a K x K float64
matrix is 8.2 GB, a patch of 256 rows 66 MB. The result is the same sum over the same pairs; only the order of the
additions differs. Also `thin_svd`, Σ_B's eigenpairs from the K x m centred means without a K x m U.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# classes per patch of a K x K computation (and of NeuralCollapse's N x K nearest-centre distances): a 256 x 32,000
# float64 patch is 66 MB, and at K <= 256 one patch is the whole matrix
CLASS_PATCH = 256
# pairs whose squared distance ||a - b||^2 is below (||a||^2 + ||b||^2) / CANCELLATION_RATIO are recomputed from
# the direct differences: the expansion ||a||^2 + ||b||^2 - 2 a.b then loses more than ~12 of float64's 16 digits
CANCELLATION_RATIO = 1e4


def _patches(num_rows: int):
    return (slice(start, min(start + CLASS_PATCH, num_rows)) for start in range(0, num_rows, CLASS_PATCH))


def thin_svd(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """(singular values, Vᵀ) of a K x m matrix (float64). With K > m, from R of its QR (R = Qᵀ matrix has the same
    singular values and right vectors, and no K x m U is formed: a fifth of the memory at K = 32,000)."""
    matrix = matrix.to(torch.float64)
    if matrix.shape[0] > matrix.shape[1]:
        matrix = torch.linalg.qr(matrix, mode="r").R
    _, singular_values, right_vectors_t = torch.linalg.svd(matrix, full_matrices=False)
    return singular_values, right_vectors_t


def product_norm(a: Tensor, b: Tensor) -> float:
    """||a bᵀ||_F for a, b (K x m) float64, without the K x K product when K > m: with a = Q_a R_a and
    b = Q_b R_b (thin QR), ||a bᵀ||_F = ||R_a R_bᵀ||_F (orthonormal columns keep the Frobenius norm)."""
    if a.shape[0] > a.shape[1]:
        a, b = torch.linalg.qr(a, mode="r").R, torch.linalg.qr(b, mode="r").R
        return float(torch.linalg.matrix_norm(a @ b.T))
    return math.sqrt(sum(float((a[rows] @ b.T).square().sum()) for rows in _patches(a.shape[0])))


def _etf_target(rows: slice, num_classes: int, device, scale: float, off_diagonal: float) -> Tensor:
    """Rows `rows` of scale·I_K + off_diagonal·11ᵀ."""
    target = torch.full((rows.stop - rows.start, num_classes), off_diagonal, dtype=torch.float64, device=device)
    target[:, rows].diagonal().add_(scale)
    return target


def _normalised_rows(centred_means: Tensor) -> Tensor:
    centred_means = centred_means.to(torch.float64)
    return centred_means / centred_means.norm(dim=1, keepdim=True)


def cdnv(variances: Tensor, centred_means: Tensor) -> float:
    """Class-distance normalised variance (Galanti et al.): mean over class pairs k < k' of
    (Var_k + Var_k') / (2 ||mu_k - mu_k'||^2), Var_k = (1/n_k) sum_{i in k} ||h_i - mu_k||^2.

    Squared distances from one GEMM per patch, ||a||^2 + ||b||^2 - 2 a.b; the pairs where that expansion cancels
    (close means, CANCELLATION_RATIO) are recomputed from the direct differences, so close means keep their
    precision."""
    means = centred_means.to(torch.float64)
    variances = variances.to(torch.float64)
    num_classes = means.shape[0]
    sq_norms = means.square().sum(1)
    total = 0.0
    for rows in _patches(num_classes):
        columns = slice(rows.start, num_classes)  # pairs k < k' only: the columns from the patch's first row on
        sq_distances = sq_norms[rows, None] + sq_norms[None, columns] - 2.0 * (means[rows] @ means[columns].T)
        pair = torch.arange(rows.start, rows.stop, device=means.device)[:, None] < \
            torch.arange(columns.start, num_classes, device=means.device)[None, :]
        close = pair & (sq_distances * CANCELLATION_RATIO < sq_norms[rows, None] + sq_norms[None, columns])
        first, second = torch.nonzero(close, as_tuple=True)
        for chunk in range(0, len(first), 4096):  # direct differences, a few thousand pairs at a time
            k, k2 = first[chunk:chunk + 4096] + rows.start, second[chunk:chunk + 4096] + columns.start
            sq_distances[k - rows.start, k2 - columns.start] = (means[k] - means[k2]).square().sum(1)
        ratios = (variances[rows, None] + variances[None, columns]) / (2.0 * sq_distances)
        total += float(ratios[pair].sum())
    return total / (num_classes * (num_classes - 1) / 2)


def nc2_and_nc2_gram(centred_means: Tensor) -> dict[str, float]:
    """NC2, slides eq. 15: || M M^T / ||M M^T||_F - (I_K - 11^T/K) / sqrt(K-1) ||_F, and as the official code
    reports it, mean_{jk} (M M^T - Sigma_ETF)^2_{jk} with Sigma_ETF = (1 + 1/(K-1)) I - 11^T/(K-1);
    M = rows (mu_k - mu_G) / ||mu_k - mu_G||. Both 0 iff the class means form a simplex ETF. One pass over patches
    of M M^T."""
    directions = _normalised_rows(centred_means)
    num_classes = directions.shape[0]
    gram_norm = product_norm(directions, directions)
    nc2_sum = gram_sum = 0.0
    for rows in _patches(num_classes):
        gram = directions[rows] @ directions.T
        target = _etf_target(rows, num_classes, gram.device, 1.0 / math.sqrt(num_classes - 1),
                             -1.0 / num_classes / math.sqrt(num_classes - 1))
        nc2_sum += float((gram / gram_norm - target).square().sum())
        etf = _etf_target(rows, num_classes, gram.device, 1.0 + 1.0 / (num_classes - 1), -1.0 / (num_classes - 1))
        gram_sum += float((gram - etf).square().sum())
    return {"nc2": math.sqrt(nc2_sum), "nc2_gram": gram_sum / num_classes ** 2}


def nc2(centred_means: Tensor) -> float:
    return nc2_and_nc2_gram(centred_means)["nc2"]


def nc2_gram(centred_means: Tensor) -> float:
    return nc2_and_nc2_gram(centred_means)["nc2_gram"]


def nc3(classifier_weight: Tensor, class_means, global_mean: str = "unweighted") -> float:
    """NC3 (self-duality), slides eq. 17: || A M~^T / ||A M~^T||_F - (I_K - 11^T/K) / sqrt(K-1) ||_F, in patches.

    A (K x m) is the classifier that follows the layer, M~ the centred class means (a ClassMeansResult's); rows of
    A for empty classes are dropped together with those classes.
    """
    present = class_means.present
    if int(present.sum()) < 2:
        raise ValueError(f"nc3 needs at least 2 non-empty classes, got {int(present.sum())}")
    if classifier_weight.shape != class_means.means.shape:
        raise ValueError(f"classifier weight {tuple(classifier_weight.shape)} does not match the class means "
                         f"{tuple(class_means.means.shape)}")
    weight = classifier_weight.to(device=class_means.means.device, dtype=torch.float64)[present]
    centred = class_means.centred_means(global_mean)
    num_classes = weight.shape[0]
    norm = product_norm(weight, centred)
    total = 0.0
    for rows in _patches(num_classes):
        target = _etf_target(rows, num_classes, weight.device, 1.0 / math.sqrt(num_classes - 1),
                             -1.0 / num_classes / math.sqrt(num_classes - 1))
        total += float((weight[rows] @ centred.T / norm - target).square().sum())
    return math.sqrt(total)
