"""Matrix powers of PSD matrices and the Neural Feature Ansatz correlation (PAPER.md, "AGOP and the NFA"):

    NFA_l = corr(W_lᵀ W_l, AGOP_l^α)

`psd_power` forms AGOP^α (α = 1/2 also projects the `agop` stage of the SVD-decomposed NC1, and each Deep RFM
layer's features: dnc_cli/models/deep_rfm.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def psd_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """eigh of a symmetric matrix in float64, symmetrised first (eigh reads one triangle only)."""
    matrix = matrix.to(torch.float64)
    return torch.linalg.eigh((matrix + matrix.T) / 2)


def psd_power(matrix: Tensor, alpha: float, eigh: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """matrix^alpha (float64) for a symmetric PSD matrix, via eigh. Eigenvalues at or below the rounding floor
    m·ε·λ_max (the cut-off of torch.linalg.pinv and of Σ_B^† in collapse.py) are set by the order of the float64
    additions that accumulated the matrix, not by the data, and their α-th power for α < 1 magnifies that noise
    (λ = 1e-18 λ_max gives 1e-9 at α = ½): they count as 0, so that AGOP^α does not depend on the batch size or on
    how the samples were split over processes. alpha >= 0 (0 gives the identity). `eigh`: the matrix's
    `psd_eigh`, when several powers of one matrix are needed (one decomposition serves them all)."""
    if alpha < 0:
        raise ValueError(f"psd_power needs alpha >= 0, got {alpha}")
    eigenvalues, eigenvectors = psd_eigh(matrix) if eigh is None else eigh
    floor = eigenvalues.abs().max() * len(eigenvalues) * torch.finfo(torch.float64).eps
    kept = torch.where(eigenvalues > floor, eigenvalues, 0.0)
    return (eigenvectors * kept ** alpha) @ eigenvectors.T


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two matrices' entries: subtract each one's mean entry, then cosine."""
    a = a.flatten().to(torch.float64)
    b = b.flatten().to(device=a.device, dtype=torch.float64)
    a = a - a.mean()
    b = b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def nfa_correlation(weight: Tensor, agop_power: Tensor) -> float:
    """NFA: Pearson correlation of W^T W with AGOP^alpha, given as `agop_power` = psd_power(AGOP, alpha) (formed
    once per power: the SVD stage `agop` needs AGOP^1/2 too). weight (m_out, m_in), agop_power (m_in, m_in)."""
    weight = weight.to(torch.float64)
    return pearson(weight.T @ weight, agop_power)
