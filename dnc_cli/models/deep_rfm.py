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

Steps 2-3 (kernel ridge regression and its AGOP) are dnc_cli/models/kernels.py. The settings are the model group's
(dnc_cli/config.py ModelConfig: depth, width, kernel, bandwidth, ridge, features, rff_gamma, agop_power,
normalize_inputs) and the run's seed.

What a run stores per layer is small (`RFMLayer`: M_l, P_l and two accuracies). The random feature maps
are NOT stored: `random_feature_map` regenerates Phi_l from (seed, layer), so `deep_rfm_representations`
replays the exact transforms on any data (train or test) for `dnc analyze`.

Memory: the N x N kernel matrix dominates (float32, plus a float64 copy and its Cholesky factor for the
solve). `memory_check` refuses sizes that cannot fit before any work starts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dnc_cli.config import ModelConfig
from dnc_cli.errors import UsageError
from dnc_cli.metrics.agop import psd_power
from dnc_cli.models.kernels import (
    KERNELS,
    kernel_agop,
    kernel_matrix,
    kernel_predict,
    solve_kernel_ridge,
    times_float64,
)

FEATURE_MAPS = ("relu", "rff")


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
# settings and random feature maps


def validate_deep_rfm(model: ModelConfig) -> None:
    """The range checks of the model group's Deep RFM keys (the generic ones are config.validate_train's)."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UsageError(message)

    need(model.bandwidth > 0 and math.isfinite(model.bandwidth), f"model.bandwidth={model.bandwidth} must be > 0")
    need(model.ridge >= 0 and math.isfinite(model.ridge), f"model.ridge={model.ridge} must be >= 0")
    need(model.kernel in KERNELS, f"model.kernel={model.kernel} is not a kernel; valid: {', '.join(KERNELS)}")
    need(model.features in FEATURE_MAPS,
         f"model.features={model.features} is not a feature map; valid: {', '.join(FEATURE_MAPS)}")
    need(model.rff_gamma > 0 and math.isfinite(model.rff_gamma), f"model.rff_gamma={model.rff_gamma} must be > 0")
    # 0 is a meaningful ablation (P = I: no AGOP projection); negative powers blow up on the null space
    need(model.agop_power >= 0 and math.isfinite(model.agop_power),
         f"model.agop_power={model.agop_power} must be >= 0")


def random_feature_map(d: int, model: ModelConfig, seed: int, layer: int, device) -> Callable[[Tensor], Tensor]:
    """Phi_l: R^d -> R^width, a pure function of (seed, layer), so it never needs to be stored. model.width=null
    gives as many features as input coordinates (width = d): the official RFF map's, so every layer keeps the
    input dimension.

    Weights are drawn on the CPU from a private generator (identical on every machine and device, and
    independent of the global RNG), then moved to `device`.
      relu: Phi(x) = ReLU(W x), W ~ U(-1/sqrt(d), 1/sqrt(d)) (width x d): nn.Linear's default init
            (kaiming_uniform with a = sqrt(5)), no bias, as the official code.
      rff:  Phi(x) = sqrt(2/D) cos(omega x + b), omega_ij ~ Cauchy(0, gamma), b ~ U(0, 2 pi): random
            Fourier features of the l1-Laplace kernel exp(-gamma ||x - z||_1).
    """
    generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + layer)
    width = model.width or d
    if model.features == "relu":
        bound = 1.0 / math.sqrt(d)
        weight = ((torch.rand(width, d, generator=generator) * 2 - 1) * bound).to(device)
        return lambda x: F.relu(x @ weight.T)
    if model.features == "rff":
        omega = torch.empty(width, d).cauchy_(0.0, model.rff_gamma, generator=generator).to(device)
        phase = (torch.rand(width, generator=generator) * (2 * math.pi)).to(device)
        amplitude = math.sqrt(2.0 / width)
        return lambda x: amplitude * torch.cos(x @ omega.T + phase)
    raise ValueError(f"unknown feature map {model.features!r}; valid: {', '.join(FEATURE_MAPS)}")


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
                 model: ModelConfig, seed: int, on_layer=None, device="cpu",
                 done: list[RFMLayer] = ()) -> list[RFMLayer]:
    """Fit `model.depth` RFM layers on the training set (PAPER.md Deep RFM steps 1-5).

    The test set is transformed alongside, only to report each layer's test accuracy. After each layer's fit
    `on_layer(l, record, elapsed_s, x_l)` is called with the layer's input X_l (progress bar / log line).
    The last layer also fits its predictor and AGOP: its test accuracy is the model's. `done` holds the
    records of layers fitted earlier (a resumed run): they are replayed, not refitted.
    """
    validate_deep_rfm(model)
    device = torch.device(device)
    x_train = x_train.reshape(len(x_train), -1).to(device=device, dtype=torch.float32)
    x_test = x_test.reshape(len(x_test), -1).to(device=device, dtype=torch.float32)
    y_train, y_test = y_train.to(device), y_test.to(device)
    targets = 2.0 * F.one_hot(y_train, num_classes).double() - 1.0  # +-1 targets, as the official code
    layers = list(done)
    for layer in range(1, model.depth + 1):
        started = time.perf_counter()
        if model.normalize_inputs:  # step 1
            x_train, x_test = unit_rows(x_train), unit_rows(x_test)
        if layer <= len(done):
            sqrt_agop = done[layer - 1].sqrt_agop.to(device)
        else:
            sqrt_agop = _fit_layer(x_train, y_train, x_test, y_test, targets, model, layers)
            if on_layer is not None:
                on_layer(layer, layers[-1], time.perf_counter() - started, x_train)
        # step 5: the next layer's input
        if layer < model.depth:
            feature_map = random_feature_map(x_train.shape[1], model, seed, layer, device)
            x_train = _layer_step(x_train, sqrt_agop, feature_map)[1]
            x_test = _layer_step(x_test, sqrt_agop, feature_map)[1]
    return layers


def _fit_layer(x_train, y_train, x_test, y_test, targets, model: ModelConfig, layers: list[RFMLayer]) -> Tensor:
    """Steps 2-4 of one layer; appends its record to `layers` and returns P = M^{agop_power}."""
    # step 2: kernel ridge regression (K_XX freed before the AGOP, which only needs B x N blocks)
    kxx = kernel_matrix(x_train, x_train, model.kernel, model.bandwidth)
    alpha = solve_kernel_ridge(kxx, targets, model.ridge)
    train_acc = _accuracy(times_float64(kxx, alpha), y_train)  # the very K_XX that was solved
    del kxx
    test_acc = _accuracy(kernel_predict(x_test, x_train, alpha, model.kernel, model.bandwidth), y_test)

    # step 3: AGOP, normalised by its max entry (M is PSD, so its max is a positive diagonal entry)
    agop = kernel_agop(x_train, alpha, model.kernel, model.bandwidth)
    agop = agop / agop.max().clamp_min(torch.finfo(agop.dtype).tiny)

    # step 4: P = M^{1/2}; stored in float32 and used from the stored copy, so a replay is exact
    sqrt_agop = psd_power(agop, model.agop_power).float()
    layers.append(RFMLayer(agop=agop.float(), sqrt_agop=sqrt_agop, train_acc=train_acc, test_acc=test_acc))
    return sqrt_agop


def deep_rfm_representations(x: Tensor, layers: list[RFMLayer], model: ModelConfig, seed: int,
                             device="cpu") -> Iterator[tuple[int, dict[str, Tensor]]]:
    """Replay the recorded transforms on any data: yields (l, {"input", "agop", "activation"}), l = 1..depth.

    input = X_l (after unit-norm), agop = X_l P_l^T, activation = Phi_l(X_l P_l^T) = X_{l+1} before its
    normalisation. Phi_l is regenerated from (seed, l); the operations are those of `fit_deep_rfm`.
    """
    device = torch.device(device)
    x = x.reshape(len(x), -1).to(device=device, dtype=torch.float32)
    for layer, record in enumerate(layers, start=1):
        if model.normalize_inputs:
            x = unit_rows(x)
        feature_map = random_feature_map(x.shape[1], model, seed, layer, device)
        projected, activation = _layer_step(x, record.sqrt_agop.to(device=device, dtype=torch.float32),
                                            feature_map)
        yield layer, {"input": x, "agop": projected, "activation": activation}
        x = activation
