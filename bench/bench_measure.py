"""`make bench` (part 3): `measure()` on a torchvision ResNet-18, against its floors and against the naive way.

Model and data: torchvision resnet18 (random weights, eval, float32, K = 10) on N = 2,000 synthetic 3 x 32 x 32
images (a Gaussian mixture: a fixed random image per class plus unit noise), batches of 250, train split only.
Layers: the four residual stages layer1..layer4, *flattened* (m = 4,096, 2,048, 1,024, 512 with torchvision's
stride-2 stem and max-pool on 32 x 32 inputs), and the head `fc` (Linear 512 -> 10): NC1-NC4, NCC and CDNV of the
five outputs, the SVD stages (input/right/left/agop) and NFA of fc (and, on the measure_all side, the geometry
family).

Sides:
* forward:           one plain forward pass over the data (no_grad): the floor of the NC-only families;
* forward+K backward: one forward pass with autograd and K = 10 backward passes to fc's input, the gradients'
                     Grams summed in float64: the floor of NFA;
* measure:           `dnc_cli.measure(...)` with the families the naive side computes, nc + svd + nfa (two sweeps,
                     the AGOP in sweep 1);
* measure_all:       the same with every family: geometry adds the effective ranks' m x m scatters and eigvalsh;
* naive:             forward hooks collect every representation of the whole split in memory, then per
                     representation the full m x m Σ_W and Σ_B (float64), pinv(Σ_B) (hermitian, i.e. eigh) and
                     tr(Σ_W Σ_B^†), NC2, NCC / NC4 from cdist; fc's AGOP from per-sample vmap(jacrev) Jacobians;
* measure 64k:       the memory bound: `measure` of a Conv2d(1 -> 16, 3x3) map on 64 x 64 images, flattened to
                     m = 65,536, N = 10,000, K = 10, the batches regenerated from a seed (BENCHMARKS.md's NC1 bound:
                     peak RSS under 4 GB).

Times: forward, forward+K backward and measure run in one subprocess, interleaved round by round (7 rounds; the
minimum of each), because the machine's load drifts; the naive side runs twice (the minimum), the 64k side once.
Peak RSS (VmHWM): every side once more alone in a fresh subprocess. The NC numbers of measure and naive are
compared (max relative difference). Exit status 1 when the 64k side misses the 4 GB bound or the two sides disagree
by more than 1e-5. `--quick`: small sizes, a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

FULL = dict(n=2000, batch=250, repeats=7, naive_repeats=2, n64k=10000, batch64k=500)
QUICK = dict(n=200, batch=100, repeats=1, naive_repeats=1, n64k=1000, batch64k=250)
CLASSES = 10
LAYERS = ["layer1", "layer2", "layer3", "layer4", "fc"]
TARGETS = dict(rss_64k_gb=4.0, agree=1e-5)


# ---------------------------------------------------------------------------------------------------- helpers
def peak_rss_gb() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 2**20


def rss_gb() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 2**20


def make_data(n: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    means = torch.randn(CLASSES, 3, 32, 32, generator=g)
    y = torch.arange(n) % CLASSES
    x = means[y] + torch.randn(n, 3, 32, 32, generator=g)
    return x, y


def make_model():
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=CLASSES).eval()


def batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def best_of(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), times, out


# ---------------------------------------------------------------------------------------------------- sides
def forward_run(model, x, y, sizes):
    import torch

    def run():
        with torch.no_grad():
            for xb, _ in batches(x, y, sizes["batch"]):
                model(xb)

    return run


def backward_run(model, x, y, sizes):
    import torch

    def run():
        gram = torch.zeros(512, 512, dtype=torch.float64)
        captured = {}
        handle = model.fc.register_forward_pre_hook(lambda m, a: captured.__setitem__("h", a[0]))
        try:
            for xb, _ in batches(x, y, sizes["batch"]):
                out = model(xb)  # autograd on: the parameters require grad
                h = captured["h"]
                for c in range(CLASSES):
                    (g,) = torch.autograd.grad(out[:, c].sum(), h, retain_graph=c < CLASSES - 1)
                    gram += (g.T @ g).double()
        finally:
            handle.remove()
        return gram

    return run


def measure_run(families):
    """`families`: None for every family."""
    def make(model, x, y, sizes):
        from dnc_cli.config import FAMILIES
        from dnc_cli.measure import run_measure

        def run():
            return run_measure(model, (x, y), CLASSES, layers=LAYERS, families=families or FAMILIES,
                               batch_size=sizes["batch"], progress=False)

        return run

    return make


# measure: the naive side's metric set (nc, svd, nfa); measure_all: every family, the effective ranks' m x m
# eigvalsh included (metrics/geometry.py)
RUNS = {"forward": forward_run, "backward": backward_run, "measure": measure_run(["nc", "svd", "nfa"]),
        "measure_all": measure_run(None)}


def side_timing(sizes):
    """forward, forward+K backward and measure, interleaved round by round (the machine's load drifts): the minimum
    of each over the rounds."""
    model, (x, y) = make_model(), make_data(sizes["n"])
    runs = {name: make(model, x, y, sizes) for name, make in RUNS.items()}
    times = {name: [] for name in runs}
    measured = None
    for _ in range(sizes["repeats"]):
        for name, run in runs.items():
            start = time.perf_counter()
            out = run()
            times[name].append(time.perf_counter() - start)
            measured = out if name == "measure" else measured
    numbers = {f"{r.layer}|{r.stage}|{r.metric}": r.value for r in measured.table.itertuples()}
    return (min(times["measure"]), times["measure"]), {
        "times": times, "numbers": numbers, "features": {i.module: i.features for i in measured.layers}}


def side_once(name):
    """One run of a side, alone in its process: its peak RSS."""

    def side(sizes):
        model, (x, y) = make_model(), make_data(sizes["n"])
        before = rss_gb()
        return best_of(RUNS[name](model, x, y, sizes), 1)[:2], {"rss_before_gb": before}

    return side


def naive_nc(h, labels, predictions):
    """PAPER.md's formulas with full m x m matrices (float64)."""
    import torch

    h = h.double()
    n = len(h)
    means = torch.stack([h[labels == k].mean(0) for k in range(CLASSES)])
    centred = means - means.mean(0)
    within = h - means[labels]
    sigma_w = within.T @ within / n
    sigma_b = centred.T @ centred / CLASSES
    pinv = torch.linalg.pinv(sigma_b, hermitian=True)
    unit = centred / centred.norm(dim=1, keepdim=True)
    gram = unit @ unit.T
    etf = (torch.eye(CLASSES, dtype=torch.float64) - 1 / CLASSES) / (CLASSES - 1) ** 0.5
    nearest = torch.cdist(h, means).argmin(1)
    return {"nc1": float(torch.trace(sigma_w @ pinv)) / CLASSES,
            "nc1_trace": float(torch.trace(sigma_w) / torch.trace(sigma_b)),
            "nc2": float(torch.linalg.norm(gram / torch.linalg.norm(gram) - etf)),
            "ncc_acc": float((nearest == labels).double().mean()),
            "nc4": float((nearest != predictions).double().mean())}


def side_naive(sizes):
    import torch

    model, (x, y) = make_model(), make_data(sizes["n"])

    def run():
        stored = {name: [] for name in LAYERS}
        fc_inputs, logits = [], []
        modules = dict(model.named_modules())
        handles = [modules[name].register_forward_hook(lambda m, a, o, name=name: stored[name].append(o.flatten(1)))
                   for name in LAYERS]
        handles.append(model.fc.register_forward_pre_hook(lambda m, a: fc_inputs.append(a[0])))
        with torch.no_grad():
            for xb, _ in batches(x, y, sizes["batch"]):
                logits.append(model(xb))
        for handle in handles:
            handle.remove()
        predictions = torch.cat(logits).argmax(1)
        h = torch.cat(fc_inputs)
        weight = model.fc.weight.detach()
        # fc's AGOP from per-sample Jacobians of the head (K x 512 each)
        jac = torch.func.vmap(torch.func.jacrev(model.fc))(h)
        agop = torch.einsum("nkd,nke->de", jac.double(), jac.double()) / len(h)
        values, vectors = torch.linalg.eigh(agop)
        root = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
        _, s, vh = torch.linalg.svd(weight, full_matrices=False)
        representations = {f"{i}|": torch.cat(stored[name]) for i, name in enumerate(LAYERS, start=1)}
        representations |= {"5|input": h, "5|right": h @ (s[:, None] * vh).T, "5|agop": h.double() @ root}
        numbers = {}
        for key, features in representations.items():
            numbers |= {f"{key}|{metric}": value for metric, value in naive_nc(features, y, predictions).items()}
        wtw = (weight.T @ weight).double().flatten()
        for power, target in ((0.5, root), (1, agop)):
            numbers[f"5||nfa_corr_{power:g}"] = float(torch.corrcoef(torch.stack([wtw, target.flatten()]))[0, 1])
        return numbers

    before = rss_gb()
    best, times, numbers = best_of(run, sizes["naive_repeats"])
    return (best, times), {"numbers": numbers, "rss_before_gb": before}


def side_measure_64k(sizes):
    """m = 65,536: Conv2d(1 -> 16) on 64 x 64 images, flattened; batches regenerated from a seed."""
    import torch
    from torch import nn

    from dnc_cli.measure import run_measure

    class Regenerated:
        def __init__(self, n, size):
            self.n, self.size = n, size
            self.means = torch.randn(CLASSES, 1, 64, 64, generator=torch.Generator().manual_seed(1))

        def __len__(self):
            return -(-self.n // self.size)

        def __iter__(self):
            for start in range(0, self.n, self.size):
                g = torch.Generator().manual_seed(100 + start)
                y = torch.arange(start, min(start + self.size, self.n)) % CLASSES
                yield self.means[y] + torch.randn(len(y), 1, 64, 64, generator=g), y

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, CLASSES)).eval()
    before = rss_gb()
    start = time.perf_counter()
    measured = run_measure(model, Regenerated(sizes["n64k"], sizes["batch64k"]), CLASSES, layers=["0", "4"],
                           progress=False)
    elapsed = time.perf_counter() - start
    width = {i.module: i.features for i in measured.layers}["0"]
    return (elapsed, [elapsed]), {"m": width, "rss_before_gb": before}


SIDES = {"timing": side_timing, "forward": side_once("forward"), "backward": side_once("backward"),
         "measure": side_once("measure"), "naive": side_naive, "measure64k": side_measure_64k}


def child(side: str, quick: bool) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    sizes = QUICK if quick else FULL
    (best, times), extra = SIDES[side](sizes)
    print(json.dumps({"side": side, "best_s": best, "times": times, "peak_rss_gb": peak_rss_gb(), **extra}))



def run_side(side: str, quick: bool) -> dict:
    command = [sys.executable, __file__, "--child", side] + (["--quick"] if quick else [])
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"side {side} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> str:
    model = "?"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    return (f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", choices=list(SIDES))
    parser.add_argument("--only", choices=list(SIDES), action="append")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.quick)
        return 0
    sizes = QUICK if args.quick else FULL
    print(f"machine: {machine()}")
    print(f"ResNet-18 (torchvision, random weights), N = {sizes['n']} images 3x32x32, K = {CLASSES}, layers "
          f"{', '.join(LAYERS)} (stages flattened); batches of {sizes['batch']}")
    results = {}
    for side in args.only or list(SIDES):
        results[side] = run_side(side, args.quick)
        r = results[side]
        if side == "timing":
            for name, times in r["times"].items():
                print(f"  time  {name:<10} {min(times):8.2f} s  (rounds: {' '.join(f'{t:.2f}' for t in times)})",
                      flush=True)
        else:
            print(f"  alone {side:<10} {r['best_s']:8.2f} s  peak RSS {r['peak_rss_gb']:.2f} GB, "
                  f"{r['peak_rss_gb'] - r['rss_before_gb']:.2f} GB above the RSS before the run (torch, model, data: "
                  f"{r['rss_before_gb']:.2f} GB)", flush=True)
    status = 0
    if "timing" in results:
        best = {name: min(times) for name, times in results["timing"]["times"].items()}
        print(f"measure / forward: {best['measure'] / best['forward']:.2f}x   measure / (forward + K backward): "
              f"{best['measure'] / best['backward']:.2f}x   every family (geometry too) / measure: "
              f"{best['measure_all'] / best['measure']:.2f}x   (interleaved minima)")
        rss = {side: results[side]["peak_rss_gb"] for side in ("forward", "backward", "measure", "naive")
               if side in results}
        above = {side: results[side]["peak_rss_gb"] - results[side]["rss_before_gb"] for side in rss}
        if "measure" in rss:
            print("peak RSS measure / " + ", ".join(f"{side}: {rss['measure'] / value:.2f}x" for side, value in
                                                     rss.items() if side != "measure")
                  + ";  above the RSS before the run, measure / " + ", ".join(
                      f"{side}: {above['measure'] / value:.2f}x" for side, value in above.items() if side != "measure"))
        if "naive" in results:
            n = results["naive"]
            print(f"naive / measure: time {n['best_s'] / best['measure']:.1f}x, peak RSS "
                  f"{n['peak_rss_gb'] / rss.get('measure', float('nan')):.2f}x")
            ours, theirs = results["timing"]["numbers"], n["numbers"]
            worst = {}
            for key, value in theirs.items():
                if key not in ours:
                    continue
                metric = key.rsplit("|", 1)[1]
                diff = abs(ours[key] - value) / max(abs(value), 1e-300)
                worst[metric] = max(worst.get(metric, 0.0), diff)
            print("agreement measure vs naive (max relative difference): "
                  + ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items())))
            compared = [v for k, v in worst.items() if k in ("nc1", "nc1_trace", "nc2")]
            if compared and max(compared) > TARGETS["agree"]:
                print(f"MISSED: measure and naive differ by more than {TARGETS['agree']:g}")
                status = 1
        print(f"features per layer: {results['timing']['features']}")
    if "measure64k" in results:
        r = results["measure64k"]
        print(f"m = {r['m']}, N = {sizes['n64k']}: {r['best_s']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB "
              f"({r['rss_before_gb']:.2f} GB before measuring: torch, the model)")
        if r["peak_rss_gb"] > TARGETS["rss_64k_gb"]:
            print(f"MISSED: peak RSS above {TARGETS['rss_64k_gb']} GB")
            status = 1
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
