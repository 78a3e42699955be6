"""Deep Recursive Feature Machine (Deep RFM): kernel ridge regression + AGOP projection, layer after layer.

PAPER.md, "Deep RFM". For l = 1..depth, on the training set X_l (N x d_l):
  1. normalise every row to unit l2 norm                                   -> representation `input`
  2. kernel ridge regression on +-1 targets: alpha = (K_XX + ridge I)^{-1} Y
  3. AGOP of the kernel predictor f(z) = sum_j alpha_j k(z, x_j) at the training points, in closed
     form, then M <- M / max_ij M_ij
  4. P = M^{agop_power} (eigh, negatives clamped; 1/2 in the paper)        -> representation `agop` = X_l P^T
  5. random feature map Phi_l                                              -> representation `activation`
     X_{l+1} = Phi_l(X_l P^T)
The finding to reproduce: NC1/NC2 fall by orders of magnitude over the layers, and the fall happens at
step 4 (the AGOP projection), not at the random feature map.

What a run stores per layer is small (`RFMLayer`: M_l, P_l and two accuracies). The random feature maps
are NOT stored: `random_feature_map` regenerates Phi_l from (seed, layer), so `deep_rfm_representations`
replays the exact transforms on any data (train or test) for `dnc analyze`.

Memory: the N x N kernel matrix dominates (float32, plus a float64 copy and its Cholesky factor for the
solve). `memory_check` refuses sizes that cannot fit before any work starts.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dnc_cli.errors import UsageError
from dnc_cli.metrics import psd_power

KERNELS = ("laplace", "gaussian")
FEATURE_MAPS = ("relu", "rff")


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


def _times_float64(kernel: Tensor, alpha: Tensor, block_size: int = 4096) -> Tensor:
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


# ----------------------------------------------------------------------------------------------------------
# memory guard


def memory_check(n: int, d: int, device) -> None:
    """Refuse an n_train whose N x N kernel cannot fit, with a one-line UsageError, before any work.

    Peak during the solve: the float32 kernel (4 B/entry) + its float64 copy (8) + the float64 Cholesky
    factor (8), plus a few N x d float32 feature matrices (d = the largest feature dimension).
    """
    device = torch.device(device)
    needed = 20 * n * n + 4 * 4 * n * d
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
    else:
        available = _cpu_available_bytes()
        if available is None:  # not Linux: nothing to compare with
            return
    if needed > available:
        gib = 2**30
        raise UsageError(f"deep_rfm: n_train={n} needs ~{needed / gib:.1f} GiB for the kernel matrix, only "
                         f"{available / gib:.1f} GiB available; lower dataset.n_train")


def _cpu_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------------------------------------
# config and random feature maps


@dataclass
class RFMConfig:
    depth: int = 10  # number of RFM layers (paper: ~20)
    kernel: str = "laplace"  # laplace | gaussian
    bandwidth: float = 2.0  # L in exp(-||x-z||/L) (gaussian: exp(-||x-z||^2 / (2 L^2)))
    ridge: float = 1e-3  # the official code's effective ridge; 0 = ridgeless (the intent)
    features: str = "relu"  # relu: ReLU(W x), nn.Linear init | rff: random Fourier features (l1-Laplace)
    width: int = 4096  # random features per layer (paper: 4096)
    rff_gamma: float = 0.05  # Cauchy scale of the rff frequencies (paper: 0.05 MNIST, 0.1 CIFAR/SVHN)
    agop_power: float = 0.5  # P = M^agop_power (paper: 1/2)
    normalize_inputs: bool = True  # step 1: unit-norm rows at every layer
    seed: int = 0  # the random feature maps derive from (seed, layer)

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UsageError(message)

        need(self.depth >= 1, f"model.depth={self.depth} must be >= 1")
        need(self.width >= 1, f"model.width={self.width} must be >= 1")
        need(self.bandwidth > 0 and math.isfinite(self.bandwidth),
             f"model.bandwidth={self.bandwidth} must be > 0")
        need(self.ridge >= 0 and math.isfinite(self.ridge), f"model.ridge={self.ridge} must be >= 0")
        need(self.kernel in KERNELS,
             f"model.kernel={self.kernel} is not a kernel; valid: {', '.join(KERNELS)}")
        need(self.features in FEATURE_MAPS,
             f"model.features={self.features} is not a feature map; valid: {', '.join(FEATURE_MAPS)}")
        need(self.rff_gamma > 0 and math.isfinite(self.rff_gamma),
             f"model.rff_gamma={self.rff_gamma} must be > 0")
        # 0 is a meaningful ablation (P = I: no AGOP projection); negative powers blow up on the null space
        need(self.agop_power >= 0 and math.isfinite(self.agop_power),
             f"model.agop_power={self.agop_power} must be >= 0")


def random_feature_map(d: int, cfg: RFMConfig, layer: int, device) -> Callable[[Tensor], Tensor]:
    """Phi_l: R^d -> R^width, a pure function of (cfg.seed, layer), so it never needs to be stored.

    Weights are drawn on the CPU from a private generator (identical on every machine and device, and
    independent of the global RNG), then moved to `device`.
      relu: Phi(x) = ReLU(W x), W ~ U(-1/sqrt(d), 1/sqrt(d)) (width x d): nn.Linear's default init
            (kaiming_uniform with a = sqrt(5)), no bias, as the official code.
      rff:  Phi(x) = sqrt(2/D) cos(omega x + b), omega_ij ~ Cauchy(0, gamma), b ~ U(0, 2 pi): random
            Fourier features of the l1-Laplace kernel exp(-gamma ||x - z||_1).
    """
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed * 1_000_003 + layer)
    if cfg.features == "relu":
        bound = 1.0 / math.sqrt(d)
        weight = ((torch.rand(cfg.width, d, generator=generator) * 2 - 1) * bound).to(device)
        return lambda x: F.relu(x @ weight.T)
    if cfg.features == "rff":
        omega = torch.empty(cfg.width, d).cauchy_(0.0, cfg.rff_gamma, generator=generator).to(device)
        phase = (torch.rand(cfg.width, generator=generator) * (2 * math.pi)).to(device)
        amplitude = math.sqrt(2.0 / cfg.width)
        return lambda x: amplitude * torch.cos(x @ omega.T + phase)
    raise ValueError(f"unknown feature map {cfg.features!r}; valid: {', '.join(FEATURE_MAPS)}")


# ----------------------------------------------------------------------------------------------------------
# Deep RFM


@dataclass
class RFMLayer:
    """What a run records for layer l. `as_dict()` holds only tensors and floats (torch.load weights_only)."""

    agop: Tensor  # M_l / max_ij M_l (d_l x d_l, float32)
    sqrt_agop: Tensor  # P_l = M_l^{agop_power} (float32): the projection every replay uses
    train_acc: float  # accuracy of layer l's kernel predictor argmax K(., X_l) alpha_l
    test_acc: float

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> RFMLayer:
        return cls(**record)


def unit_rows(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def _layer_step(x: Tensor, sqrt_agop: Tensor,
                feature_map: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Steps 4-5 on X_l: (X_l P^T, Phi(X_l P^T)). Shared by fitting and replay so both compute the same."""
    projected = x @ sqrt_agop.T
    return projected, feature_map(projected)


def _accuracy(scores: Tensor, labels: Tensor) -> float:
    return (scores.argmax(1) == labels.to(scores.device)).double().mean().item()


def fit_deep_rfm(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, num_classes: int,
                 cfg: RFMConfig, on_layer=None, device="cpu", done: list[RFMLayer] = ()) -> list[RFMLayer]:
    """Fit `cfg.depth` RFM layers on the training set (PAPER.md Deep RFM steps 1-5).

    The test set is transformed alongside, only to report each layer's test accuracy. After each layer's fit
    `on_layer(l, record, elapsed_s, x_l)` is called with the layer's input X_l (progress bar / log line).
    The last layer also fits its predictor and AGOP: its test accuracy is the model's. `done` holds the
    records of layers fitted earlier (a resumed run): they are replayed, not refitted.
    """
    cfg.validate()
    device = torch.device(device)
    x_train = x_train.reshape(len(x_train), -1).to(device=device, dtype=torch.float32)
    x_test = x_test.reshape(len(x_test), -1).to(device=device, dtype=torch.float32)
    y_train, y_test = y_train.to(device), y_test.to(device)
    targets = 2.0 * F.one_hot(y_train, num_classes).double() - 1.0  # +-1 targets, as the official code
    layers = list(done)
    for layer in range(1, cfg.depth + 1):
        started = time.perf_counter()
        if cfg.normalize_inputs:  # step 1
            x_train, x_test = unit_rows(x_train), unit_rows(x_test)
        if layer <= len(done):
            sqrt_agop = done[layer - 1].sqrt_agop.to(device)
        else:
            sqrt_agop = _fit_layer(x_train, y_train, x_test, y_test, targets, cfg, layers)
            if on_layer is not None:
                on_layer(layer, layers[-1], time.perf_counter() - started, x_train)
        # step 5: the next layer's input
        if layer < cfg.depth:
            feature_map = random_feature_map(x_train.shape[1], cfg, layer, device)
            x_train = _layer_step(x_train, sqrt_agop, feature_map)[1]
            x_test = _layer_step(x_test, sqrt_agop, feature_map)[1]
    return layers


def _fit_layer(x_train, y_train, x_test, y_test, targets, cfg: RFMConfig, layers: list[RFMLayer]) -> Tensor:
    """Steps 2-4 of one layer; appends its record to `layers` and returns P = M^{agop_power}."""
    # step 2: kernel ridge regression (K_XX freed before the AGOP, which only needs B x N blocks)
    kxx = kernel_matrix(x_train, x_train, cfg.kernel, cfg.bandwidth)
    alpha = solve_kernel_ridge(kxx, targets, cfg.ridge)
    train_acc = _accuracy(_times_float64(kxx, alpha), y_train)  # the very K_XX that was solved
    del kxx
    test_acc = _accuracy(kernel_predict(x_test, x_train, alpha, cfg.kernel, cfg.bandwidth), y_test)

    # step 3: AGOP, normalised by its max entry (M is PSD, so its max is a positive diagonal entry)
    agop = kernel_agop(x_train, alpha, cfg.kernel, cfg.bandwidth)
    agop = agop / agop.max().clamp_min(torch.finfo(agop.dtype).tiny)

    # step 4: P = M^{1/2}; stored in float32 and used from the stored copy, so a replay is exact
    sqrt_agop = psd_power(agop, cfg.agop_power).float()
    layers.append(RFMLayer(agop=agop.float(), sqrt_agop=sqrt_agop, train_acc=train_acc, test_acc=test_acc))
    return sqrt_agop


def deep_rfm_representations(x: Tensor, layers: list[RFMLayer], cfg: RFMConfig,
                             device="cpu") -> Iterator[tuple[int, dict[str, Tensor]]]:
    """Replay the recorded transforms on any data: yields (l, {"input", "agop", "activation"}), l = 1..depth.

    input = X_l (after unit-norm), agop = X_l P_l^T, activation = Phi_l(X_l P_l^T) = X_{l+1} before its
    normalisation. Phi_l is regenerated from (cfg.seed, l); the operations are those of `fit_deep_rfm`.
    """
    device = torch.device(device)
    x = x.reshape(len(x), -1).to(device=device, dtype=torch.float32)
    for layer, record in enumerate(layers, start=1):
        if cfg.normalize_inputs:
            x = unit_rows(x)
        feature_map = random_feature_map(x.shape[1], cfg, layer, device)
        projected, activation = _layer_step(x, record.sqrt_agop.to(device=device, dtype=torch.float32),
                                            feature_map)
        yield layer, {"input": x, "agop": projected, "activation": activation}
        x = activation


# ----------------------------------------------------------------------------------------------------------
# `dnc train model=deep_rfm` and `dnc analyze` on its runs: the same run layout as networks. The single
# checkpoint checkpoints/epoch_000000.pt holds every layer's record; analysis rows have layer = RFM layer and
# stage in {input (X_l), agop (M_l^1/2 X_l), activation (Phi(M_l^1/2 X_l))}.


def rfm_config(cfg) -> RFMConfig:
    """The Deep RFM settings of a TrainConfig (model.* keys, the run's seed)."""
    m = cfg.model
    return RFMConfig(depth=m.depth, kernel=m.kernel, bandwidth=m.bandwidth, ridge=m.ridge, features=m.features,
                     width=m.width, rff_gamma=m.rff_gamma, agop_power=m.agop_power,
                     normalize_inputs=m.normalize_inputs, seed=cfg.seed)


def _nc_of(features: Tensor, labels: Tensor, num_classes: int, acfg=None, batch_size: int = 4096) -> dict:
    from dnc_cli.metrics import ClassMeans, NeuralCollapse

    means = ClassMeans(num_classes)
    for i in range(0, len(features), batch_size):
        means.update(features[i:i + batch_size], labels[i:i + batch_size])
    options = {} if acfg is None else {"global_mean": acfg.nc1.global_mean.value,
                                       "official_scaling": acfg.nc1.official_scaling}
    collapse = NeuralCollapse(means.compute(), **options)
    for i in range(0, len(features), batch_size):
        collapse.update(features[i:i + batch_size], labels[i:i + batch_size])
    return collapse.compute()


def run_deep_rfm(cfg, run_dir) -> dict:
    import logging
    import sys

    from tqdm import tqdm

    from dnc_cli.config import resolve_device, to_plain
    from dnc_cli.data import load_dataset
    from dnc_cli.runs import checkpoint_name, read_json, write_json
    from dnc_cli.train import check_resume_config, save_atomic, start_run, truncate_log

    log = logging.getLogger("dnc.deep_rfm")
    rcfg = rfm_config(cfg)
    rcfg.validate()
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.seed)
    n, d = len(data.train.labels), data.train.x[0].numel()
    memory_check(n, max(d, rcfg.width), device)
    ckpt, last = run_dir / "checkpoints" / checkpoint_name(0), run_dir / "checkpoints" / "last.pt"
    plain, log_path = to_plain(cfg), run_dir / "rfm_log.csv"
    if cfg.resume is not None:  # continue after the layers in last.pt (written after every layer)
        check_resume_config(run_dir, plain)
        done = [RFMLayer.from_dict(r) for r in torch.load(last, weights_only=True)["rfm_layers"]]
        summary = read_json(run_dir / "summary.json") | {"status": "running"}
        truncate_log(log_path, len(done))
        log.info("resuming %s after layer %d", run_dir, len(done))
    else:
        summary = start_run(cfg, plain, data, run_dir)
        log_path.write_text("layer,train_acc,test_acc,nc1_trace,elapsed_s\n")
        done = []
    write_json(run_dir / "summary.json", summary)
    fitted = list(done)
    bar = tqdm(total=rcfg.depth, initial=len(done), desc="deep_rfm", unit="layer",
               disable=not (cfg.progress and sys.stderr.isatty()))
    labels = data.train.labels.to(device)

    def on_layer(layer, record, elapsed, x_layer):
        nc1 = _nc_of(x_layer, labels, data.num_classes)["nc1_trace"]
        with open(log_path, "a") as f:
            f.write(f"{layer},{record.train_acc:.6g},{record.test_acc:.6g},{nc1:.6g},{elapsed:.3f}\n")
        log.info("layer %d: kernel train_acc %.4f test_acc %.4f, NC1 of X_l %.3g (%.1f s)", layer, record.train_acc,
                 record.test_acc, nc1, elapsed)
        fitted.append(record)
        save_atomic({"rfm_layers": [r.as_dict() for r in fitted]}, last)
        bar.update(1)

    try:
        layers = fit_deep_rfm(data.train.x, data.train.labels, data.test.x, data.test.labels, data.num_classes,
                              rcfg, on_layer=on_layer, device=device, done=done)
    except KeyboardInterrupt:
        write_json(run_dir / "summary.json", summary | {"status": "interrupted"})
        raise
    finally:
        bar.close()
    save_atomic({"rfm_layers": [layer.as_dict() for layer in layers], "epoch": 0, "config": plain}, ckpt)
    summary |= {"status": "done", "epochs_done": 0,
                "final": {"train_acc": layers[-1].train_acc, "test_acc": layers[-1].test_acc}}
    write_json(run_dir / "summary.json", summary)
    return summary


def analyze_deep_rfm(run_dir, cfg, acfg, device) -> list[str]:
    import logging

    import numpy as np
    import pandas as pd

    from dnc_cli.analyze import COLUMNS, SETTINGS_FILE, check_settings, markdown_table, save_table
    from dnc_cli.data import load_dataset
    from dnc_cli.runs import atomic_path, checkpoint_name, write_json

    out_dir = run_dir / "analysis"
    settings = check_settings(out_dir, acfg, network=False)
    if acfg.precision.value != "float32":
        logging.getLogger("dnc.analyze").warning("%s: precision=%s applies to networks; a Deep RFM is analysed in "
                                                 "float32", run_dir, acfg.precision.value)
    if (out_dir / "metrics.csv").exists() and not acfg.force:
        return []
    path = run_dir / "checkpoints" / checkpoint_name(0)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        layers = [RFMLayer.from_dict(record) for record in state["rfm_layers"]]
    except Exception as exc:
        return [f"{path}: unreadable Deep RFM checkpoint ({type(exc).__name__}); skipped"]
    rcfg = rfm_config(cfg)
    data = load_dataset(cfg.dataset, cfg.seed)
    if (run_dir / "labels.pt").exists():
        data.train.labels = torch.load(run_dir / "labels.pt", weights_only=True)["train_labels"]
    rows, gram = [], {}
    for split in acfg.splits:
        x, labels = getattr(data, split).x, getattr(data, split).labels.to(device)
        sample = torch.cat([(labels == k).nonzero().squeeze(1)[:acfg.gram_samples_per_class]
                            for k in range(data.num_classes)])
        for layer, reps in deep_rfm_representations(x, layers, rcfg, device):
            for stage, features in reps.items():
                rows += [(0, split, layer, stage, name, value)
                         for name, value in _nc_of(features, labels, data.num_classes, acfg).items()]
            record = layers[layer - 1]
            rows.append((0, split, layer, "", "kernel_acc", record.train_acc if split == "train" else record.test_acc))
            if split == "train":
                gram[f"layer_{layer}"] = reps["input"][sample].cpu().numpy()
        if split == "train":
            gram["labels"] = labels[sample].cpu().numpy()
    df = save_table(out_dir / "metrics.csv", [dict(zip(COLUMNS, row)) for row in rows])
    write_json(out_dir / SETTINGS_FILE, settings)
    if gram:
        with atomic_path(out_dir / "gram_epoch_000000_train.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **gram)
    split = "train" if "train" in acfg.splits else acfg.splits[0]
    train = df[(df.split == split) & df.metric.isin(["nc1_trace", "nc2"]) & (df.stage != "")]
    table = train.pivot_table(index="layer", columns=["metric", "stage"], values="value")
    table.columns = [f"{metric} ({stage})" for metric, stage in table.columns]
    accuracy = df[df.metric == "kernel_acc"].pivot_table(index="layer", columns="split", values="value")
    table = pd.concat([table, accuracy.add_prefix("kernel_acc ")], axis=1)
    with atomic_path(out_dir / "nc_table.md") as tmp:
        tmp.write_text(f"# Deep RFM collapse by layer ({split} split)\n\n"
                       f"{markdown_table(table, 'layer')}\n")
    return []
