"""Kernel ridge regression and the closed-form AGOP of its predictor: steps 2 and 3 of a Deep RFM layer
(PAPER.md, "Deep RFM"; the layer loop is dnc_cli/models/deep_rfm.py).

  2. alpha = (K_XX + ridge I)^{-1} Y on +-1 targets, K_ij = k(x_i, x_j), Laplace or Gaussian kernel;
  3. M = (1/N) sum_i sum_c grad f_c(x_i) grad f_c(x_i)^T, f(z) = sum_j alpha_j k(z, x_j), in closed form.

The N x N kernel matrix is the largest object: it is built by row blocks in float32 and solved in float64.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

KERNELS = ("laplace", "gaussian")


# ----------------------------------------------------------------------------------------------------------
# kernels


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64 (the tests' reference precision), else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def squared_distances(x: Tensor, z: Tensor) -> Tensor:
    """||x_i - z_j||^2 for all pairs via ||x||^2 - 2 x.z + ||z||^2: one matmul, no n x m x d tensor.

    The expansion can round to small negatives for (near-)coincident points, hence the clamp.
    """
    sq = (x * x).sum(1, keepdim=True) - 2.0 * (x @ z.T) + (z * z).sum(1)[None, :]
    return sq.clamp_min_(0.0)


def kernel_from_distances(sq_dist: Tensor, kind: str, bandwidth: float) -> Tensor:
    if kind == "laplace":  # k(x, z) = exp(-||x - z||_2 / L), the paper's kernel (L = 2.0)
        return torch.exp(-torch.sqrt(sq_dist) / bandwidth)
    if kind == "gaussian":  # k(x, z) = exp(-||x - z||^2 / (2 L^2)): L is the standard deviation
        return torch.exp(-sq_dist / (2.0 * bandwidth**2))
    raise ValueError(f"unknown kernel {kind!r}; valid: {', '.join(KERNELS)}")


def kernel_matrix(x: Tensor, z: Tensor, kind: str, bandwidth: float, block_size: int = 4096) -> Tensor:
    """K_ij = k(x_i, z_j) (n x m), on x's device, computed by row blocks of x to bound the temporaries.

    float32 (float64 if an input is float64). When z is x (the training kernel K_XX) the diagonal is set
    to exactly k(x, x) = 1: the distance expansion would otherwise leave ~sqrt(eps) noise there.
    """
    dtype = _compute_dtype(x, z)
    same = z is x
    x = x.to(dtype)
    z = x if same else z.to(device=x.device, dtype=dtype)
    out = torch.empty(x.shape[0], z.shape[0], dtype=dtype, device=x.device)
    for start in range(0, x.shape[0], block_size):
        stop = min(start + block_size, x.shape[0])
        out[start:stop] = kernel_from_distances(squared_distances(x[start:stop], z), kind, bandwidth)
    if same:
        out.diagonal().fill_(1.0)
    return out


def kernel_predict(x: Tensor, x_train: Tensor, alpha: Tensor, kind: str, bandwidth: float,
                   block_size: int = 4096) -> Tensor:
    """f(x) = K(x, X_train) alpha by row blocks, products in float64 (for new points x, e.g. the test set).

    Ridge ~1e-3 makes alpha large with heavy cancellation in K alpha, which float32 sums would blur.
    """
    out = torch.empty(x.shape[0], alpha.shape[1], dtype=torch.float64, device=x.device)
    alpha = alpha.to(device=x.device, dtype=torch.float64)
    for start in range(0, x.shape[0], block_size):
        stop = min(start + block_size, x.shape[0])
        out[start:stop] = kernel_matrix(x[start:stop], x_train, kind, bandwidth).double() @ alpha
    return out


def times_float64(kernel: Tensor, alpha: Tensor, block_size: int = 4096) -> Tensor:
    """kernel @ alpha with float64 products, by row blocks (no N x N float64 copy)."""
    alpha = alpha.to(device=kernel.device, dtype=torch.float64)
    return torch.cat([kernel[start:start + block_size].double() @ alpha
                      for start in range(0, kernel.shape[0], block_size)])


def solve_kernel_ridge(kxx: Tensor, targets: Tensor, ridge: float) -> Tensor:
    """alpha = (K + ridge I)^{-1} Y in float64 by Cholesky (N x K, float64).

    If K + ridge I is numerically singular (ridge = 0 with duplicate samples, say), Cholesky fails or
    returns a pivot at rounding level; then warn and return the minimum-norm least-squares solution from an
    eigendecomposition (same answer as lstsq's gelsd, but also works on CUDA, where lstsq assumes full rank).
    """
    n = kxx.shape[0]
    system = kxx.to(torch.float64)  # always a copy here when kxx is float32
    if system is kxx:
        system = system.clone()
    system.diagonal().add_(ridge)
    targets = targets.to(device=system.device, dtype=torch.float64)
    factor, info = torch.linalg.cholesky_ex(system)
    if info.item() == 0:
        # kappa(A) >= (max_i L_ii / min_i L_ii)^2: a pivot under the rank tolerance means a singular system
        pivots = factor.diagonal() ** 2
        tolerance = 10 * n * torch.finfo(torch.float64).eps * pivots.max()
        if pivots.min() > tolerance:
            # two triangular solves: ~10x faster than torch.cholesky_solve on CPU at N = 8000 (measured)
            half = torch.linalg.solve_triangular(factor, targets, upper=False)
            return torch.linalg.solve_triangular(factor.T, half, upper=True)
    del factor
    warnings.warn(f"deep_rfm: kernel matrix + ridge={ridge} is numerically singular (N={n}); using a "
                  f"least-squares (pseudo-inverse) solve instead of Cholesky; a ridge > 0 avoids this",
                  RuntimeWarning, stacklevel=2)
    eigenvalues, eigenvectors = torch.linalg.eigh(system)
    tolerance = n * torch.finfo(torch.float64).eps * eigenvalues.abs().max()
    inverse = torch.where(eigenvalues.abs() > tolerance, 1.0 / eigenvalues, torch.zeros_like(eigenvalues))
    return eigenvectors @ (inverse[:, None] * (eigenvectors.T @ targets))


# ----------------------------------------------------------------------------------------------------------
# AGOP of the kernel predictor (PAPER.md, Deep RFM step 3)


def kernel_agop(x: Tensor, alpha: Tensor, kind: str, bandwidth: float, batch_size: int = 512) -> Tensor:
    """AGOP of f(z) = sum_j alpha_j k(z, x_j): M = (1/N) sum_i sum_c grad f_c(x_i) grad f_c(x_i)^T (d x d).

    Closed-form gradients at the training points:
      Laplace:  grad f_c(x_i) = -(1/L)   sum_j alpha_jc k(x_i, x_j) (x_i - x_j) / ||x_i - x_j||
      Gaussian: grad f_c(x_i) = -(1/L^2) sum_j alpha_jc k(x_i, x_j) (x_i - x_j)
    Terms with x_j = x_i are dropped (the Laplace kernel is not differentiable there; for the Gaussian they
    are zero anyway). With C_ij = alpha_jc k(x_i, x_j) [/ ||x_i - x_j||] the sum is x_i (sum_j C_ij) - C X,
    so a batch of B points costs a B x N kernel block and K matmuls, never a B x N x d tensor.

    Computed in float64 throughout: the two terms of x_i sum_j C_ij - C X cancel, and float32 distances are
    only good to ~sqrt(eps) ~ 3e-4, which matters once classes collapse (within-class distances shrink).
    Measured on digits (Deep RFM, width 512): float32 vs float64 relative error of M^{1/2} grows from 1e-5
    at layer 4 to 3e-4 at layer 10 (NC1 ~ 5e-4); the paper goes to ~20 layers. Costs 2x on CPU, about
    nothing on an H100 (FP64 tensor cores). Not normalised: the caller divides by the max entry.
    """
    x = x.to(torch.float64)
    alpha = alpha.to(device=x.device, dtype=torch.float64)
    n, d = x.shape
    sq_norms = (x * x).sum(1)
    # pairs closer than the rounding floor of the distance expansion are treated as the same point
    eps = torch.finfo(torch.float64).eps
    scale = -1.0 / bandwidth if kind == "laplace" else -1.0 / bandwidth**2
    agop = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        xb = x[start:stop]
        sq_dist = squared_distances(xb, x)
        coincident = sq_dist <= 64 * eps * (sq_norms[start:stop, None] + sq_norms[None, :])
        rows = torch.arange(stop - start, device=x.device)
        coincident[rows, rows + start] = True  # the self term, whatever rounding says
        weights = kernel_from_distances(sq_dist, kind, bandwidth)
        if kind == "laplace":
            weights = weights / torch.sqrt(sq_dist).masked_fill_(coincident, 1.0)
        weights.masked_fill_(coincident, 0.0)
        grads = []
        for c in range(alpha.shape[1]):
            coeffs = weights * alpha[:, c][None, :]  # C (B x N)
            grads.append(scale * (xb * coeffs.sum(1, keepdim=True) - coeffs @ x))
        grads = torch.cat(grads)  # (K*B) x d
        agop += grads.T @ grads
    return agop / n
