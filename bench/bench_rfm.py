"""`make bench` (part 2): Deep RFM's closed-form AGOP against autograd, and the time of one Deep RFM layer.

1. agop: `dnc_cli.models.kernels.kernel_agop` (closed-form gradients of the kernel predictor
   f(z) = sum_j alpha_j k(z, x_j) at the training points, float64) against autograd: per-sample Jacobians of f by
   torch.func.vmap(jacrev(f)) in batches, float64, with the same self term left out (for x_i, the sum runs over
   j != i, as the closed form does: the Laplace kernel is not differentiable at z = x_i). Both AGOPs are
   (1/N) sum_i J_i^T J_i. Data: N = 2,000 MNIST-shaped Gaussian-mixture samples (d = 784), unit rows as in Deep RFM
   step 1, alpha from the kernel ridge solve (ridge 1e-3), K = 10. Prints both times, the ratio and the maximum
   relative difference (enforced <= 1e-8).
2. layer: one Deep RFM layer at N = 8,000 (2,000 test), d = 784 -> width 1,024 (ReLU random features), Laplace
   kernel: `dnc_cli.models.deep_rfm.fit_deep_rfm` with depth = 2, its parts timed by wrapping the functions it calls
   (kernel matrix, Cholesky solve, accuracies, closed-form AGOP, eigh for M^1/2, feature map). Layer 1 works on
   d = 784 and maps to the 1,024 random features; layer 2 works on d = 1,024 (and, being the last, maps nothing).

Timings are the minimum of back-to-back repeats in this process (the cores are shared). `--quick`: small sizes.
Exit status 1 when the two AGOPs differ by more than 1e-8 (relative to the largest entry).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import torch
import torch.nn.functional as F
from common import finish, machine, mixture, now, runs, timed

from dnc_cli.config import ModelConfig, ModelName
from dnc_cli.models import deep_rfm as rfm

FULL = dict(n_agop=2000, repeats=3, n_train=8000, n_test=2000, width=1024, batch=250)
QUICK = dict(n_agop=500, repeats=2, n_train=1000, n_test=250, width=256, batch=250)
AGREE = 1e-8
KERNELS = ("laplace", "gaussian")


# ------------------------------------------------------------------------------------------- 1. AGOP
def autograd_agop(x, alpha, kind: str, bandwidth: float, batch_size: int):
    """AGOP of f(z) = sum_{j != i} alpha_j k(z, x_j) at each training point x_i, by vmap(jacrev(f)) over batches of
    points: a (B, K, d) Jacobian per batch, then J^T J summed. float64. The excluded point's distance is replaced by
    1 before the square root (and its kernel value by 0), so no NaN flows back from sqrt at 0."""
    x = x.to(torch.float64)
    alpha = alpha.to(torch.float64)
    n, d = x.shape
    sq_norms = (x * x).sum(1)
    index = torch.arange(n)

    def f(z, i):
        sq = (z * z).sum() - 2.0 * (x @ z) + sq_norms  # ||z - x_j||^2, (N,)
        others = index != i
        sq = torch.where(others, sq, torch.ones_like(sq))
        if kind == "laplace":
            k = torch.exp(-torch.sqrt(sq) / bandwidth)
        else:
            k = torch.exp(-sq / (2.0 * bandwidth**2))
        return torch.where(others, k, torch.zeros_like(k)) @ alpha  # (K,)

    jacobians = torch.func.vmap(torch.func.jacrev(f), in_dims=(0, 0))
    agop = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, batch_size):
        grads = jacobians(x[start:start + batch_size], index[start:start + batch_size]).reshape(-1, d)
        agop += grads.T @ grads
    return agop / n


def kernel_problem(n: int, num_classes: int, kind: str, bandwidth: float, ridge: float, seed: int):
    """Deep RFM's first layer inputs: unit rows of MNIST-shaped data and alpha = (K_XX + ridge I)^-1 Y."""
    x, labels = mixture(n, num_classes, seed)
    x = rfm.unit_rows(x.reshape(n, -1))
    targets = 2.0 * F.one_hot(labels, num_classes).double() - 1.0
    alpha = rfm.solve_kernel_ridge(rfm.kernel_matrix(x, x, kind, bandwidth), targets, ridge)
    return x, alpha


def bench_agop(size, seed: int):
    cfg = ModelConfig(name=ModelName.deep_rfm)
    out = {}
    for kind in KERNELS:
        x, alpha = kernel_problem(size["n_agop"], 10, kind, cfg.bandwidth, cfg.ridge, seed)
        times = defaultdict(list)
        repeats = size["repeats"] if kind == cfg.kernel else 1
        for _ in range(repeats):
            seconds, closed = timed(rfm.kernel_agop, x, alpha, kind, cfg.bandwidth)
            times["closed form"].append(seconds)
            seconds, auto = timed(autograd_agop, x, alpha, kind, cfg.bandwidth, size["batch"])
            times["autograd"].append(seconds)
        diff = float((closed - auto).abs().max() / auto.abs().max())
        frobenius = float(torch.linalg.matrix_norm(closed - auto) / torch.linalg.matrix_norm(auto))
        out[kind] = dict(times=dict(times), max_rel=diff, frobenius_rel=frobenius, shape=tuple(x.shape))
    return out


# ------------------------------------------------------------------------------------------- 2. one layer
class PartTimer:
    """Wall time of fit_deep_rfm's parts, by wrapping rfm's module functions (restored on exit). Only the outermost
    wrapped call is timed (kernel_predict's own kernel blocks count as kernel_predict). The parts of layer l's fit
    (steps 1-4) are credited to layer l; its feature map (step 5), which runs after the layer's on_layer call, too."""

    PARTS = {"unit_rows": "unit-norm rows", "kernel_matrix": "kernel K_XX (float32)",
             "solve_kernel_ridge": "Cholesky solve (float64)", "times_float64": "train accuracy (K_XX alpha)",
             "kernel_predict": "test predictions (kernel blocks)", "kernel_agop": "closed-form AGOP (float64)",
             "psd_power": "eigh -> M^1/2 (psd_power)", "random_feature_map": "step 5: draw Phi_l",
             "_layer_step": "step 5: X P^T and Phi_l (train + test)"}

    def __init__(self):
        self.seconds = defaultdict(lambda: defaultdict(float))
        self.completed, self.depth, self.saved, self.elapsed = 0, 0, [], {}

    def on_layer(self, layer, record, elapsed, x_layer):
        self.completed = layer
        self.elapsed[layer] = elapsed

    def wrap(self, name, label):
        original = getattr(rfm, name)

        def wrapper(*args, **kwargs):
            if self.depth:
                return original(*args, **kwargs)
            step5 = label.startswith("step 5")
            layer = self.completed if step5 else self.completed + 1
            self.depth += 1
            start = now()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[layer][label] += now() - start
                self.depth -= 1

        self.saved.append((name, original))
        setattr(rfm, name, wrapper)

    def __enter__(self):
        for name, label in self.PARTS.items():
            self.wrap(name, label)
        return self

    def __exit__(self, *exc):
        for name, original in reversed(self.saved):
            setattr(rfm, name, original)


def bench_layer(size, seed: int):
    num_classes = 10
    x, labels = mixture(size["n_train"] + size["n_test"], num_classes, seed)
    x_train, y_train = x[:size["n_train"]], labels[:size["n_train"]]
    x_test, y_test = x[size["n_train"]:], labels[size["n_train"]:]
    cfg = ModelConfig(name=ModelName.deep_rfm, depth=2, width=size["width"])
    with PartTimer() as timer:
        seconds, layers = timed(rfm.fit_deep_rfm, x_train, y_train, x_test, y_test, num_classes, cfg, seed,
                                on_layer=timer.on_layer)
    return dict(total=seconds, parts={k: dict(v) for k, v in timer.seconds.items()}, elapsed=timer.elapsed,
                accuracy=[(r.train_acc, r.test_acc) for r in layers], cfg=cfg)


# ------------------------------------------------------------------------------------------- report
def report_agop(size, r, misses):
    cfg = ModelConfig(name=ModelName.deep_rfm)
    print(f"\n## 1. AGOP of the kernel predictor: closed form (dnc_cli.models.kernels.kernel_agop) vs autograd "
          f"(vmap(jacrev(f)), batches of {size['batch']}), float64, K=10, bandwidth {cfg.bandwidth:g}, ridge "
          f"{cfg.ridge:g}")
    print(f"{'kernel':<10}{'N x d':<12}{'closed form':>12}{'autograd':>10}{'ratio':>8}{'max rel diff':>14}"
          f"{'rel Frobenius':>15}   runs (closed / autograd)")
    for kind, k in r.items():
        t = {name: min(v) for name, v in k["times"].items()}
        shape = f"{k['shape'][0]}x{k['shape'][1]}"
        print(f"{kind:<10}{shape:<12}{t['closed form']:>11.2f}s{t['autograd']:>9.2f}s"
              f"{t['autograd'] / t['closed form']:>7.2f}x{k['max_rel']:>14.1e}{k['frobenius_rel']:>15.1e}   "
              f"{runs(k['times']['closed form'])} / {runs(k['times']['autograd'])}")
        if not k["max_rel"] <= AGREE:
            misses.append(f"agop ({kind}): closed form and autograd differ by {k['max_rel']:.1e} > {AGREE:g}")


def report_layer(size, r):
    cfg = r["cfg"]
    print(f"\n## 2. Deep RFM layers: fit_deep_rfm depth 2, N={size['n_train']} (test {size['n_test']}), d=784 -> "
          f"width {cfg.width} ({cfg.features} features), {cfg.kernel} kernel, one run")
    labels = list(dict.fromkeys(label for parts in r["parts"].values() for label in parts))
    for layer in sorted(r["parts"]):
        parts = r["parts"][layer]
        total = sum(parts.values())
        d = 784 if layer == 1 else cfg.width
        fit = f"fit_deep_rfm's own timer {r['elapsed'][layer]:.1f} s" if layer in r["elapsed"] else ""
        print(f"layer {layer} (d = {d}): {total:.1f} s ({fit}, steps 1-4)")
        for label in labels:
            if label in parts:
                print(f"  {label:<42}{parts[label]:>7.2f} s {100 * parts[label] / total:>5.1f}%")
    print(f"total {r['total']:.1f} s for 2 layers; kernel accuracies (train, test) per layer: " +
          ", ".join(f"({a:.3f}, {b:.3f})" for a, b in r["accuracy"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds")
    parser.add_argument("--only", choices=["agop", "layer"], action="append")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    only = set(args.only or ["agop", "layer"])
    print(f"# dnc Deep RFM bench ({'quick' if args.quick else 'full'}): {machine()}")
    misses, wall = [], now()
    if "agop" in only:
        report_agop(size, bench_agop(size, args.seed), misses)
    if "layer" in only:
        report_layer(size, bench_layer(size, args.seed))
    return finish(misses, wall, "closed form and autograd agree")


if __name__ == "__main__":
    sys.exit(main())
