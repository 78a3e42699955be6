"""`dnc measure` at many classes (issue #22; BENCHMARKS.md section 8): a torchvision ResNet-18 with 1,000 classes,
every family against families=[nc]; what the sketched AGOP does to the quantities built on it at K = 1,000 outputs;
the NC metrics of a 32,000-class embeddings file in bounded memory.

    .venv/bin/python bench/bench_measure_scale.py            # default size, a few minutes on 2 shared cores
    .venv/bin/python bench/bench_measure_scale.py --full     # the issue's size: 10,000 images, 32,000 classes
    DNC_BENCH_FULL=1 make bench                              # the same inside make bench
    .venv/bin/python bench/bench_measure_scale.py --quick    # a smoke run

Each part runs in a fresh process (its peak RSS is its own: VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, machine, now  # noqa: E402

TARGETS = dict(time_ratio=3.0, rss_gb=4.0)
SIZES = {  # part -> size name -> parameters
    "quick": dict(images=200, mlp_samples=300, probes=[16, 128], classes=2_000, dim=64),
    "default": dict(images=2_000, mlp_samples=1_000, probes=[16, 64, 128, 256], classes=8_000, dim=256),
    "full": dict(images=10_000, mlp_samples=2_000, probes=[16, 64, 128, 256], classes=32_000, dim=512),
}


def peak_rss_gb() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 2**20


# ---------------------------------------------------------------------------------------------------- parts
def part_resnet(size: dict) -> dict:
    """ResNet-18 (random weights, 1,000 classes), N random 32x32 images, layers=[layer4, fc]: families=[nc] and
    every family, each timed once, interleaved twice; the minimum of each."""
    import torch
    import torchvision

    from dnc_cli.config import FAMILIES
    from dnc_cli.measure import run_measure

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).eval()
    n = size["images"]
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n) % 1000
    times = {"nc": [], "all": []}
    methods = {}
    for _ in range(2):
        for name, families in (("nc", ["nc"]), ("all", list(FAMILIES))):
            start = now()
            measured = run_measure(model, (x, y), 1000, layers=["layer4", "fc"], families=families, batch_size=250,
                                   progress=False)
            times[name].append(now() - start)
            methods = {info.module: info.agop_method for info in measured.layers}
    return {"images": n, "nc_s": min(times["nc"]), "all_s": min(times["all"]), "times": times,
            "methods": methods, "rows": len(measured.table)}


def part_sketch(size: dict) -> dict:
    """A 784-512-512-512-1000 MLP (random weights; 10 classes of data, 1,000 outputs), the AGOP of its middle
    Linear sketched with s probes against the exact 1,000 VJPs: the AGOP, AGOP^½, the NFA correlations and the
    agop-stage nc1 (train split), and the time of each."""
    import torch
    from torch import nn

    from dnc_cli.measure import run_measure
    from dnc_cli.metrics.agop import psd_power

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512),
                          nn.ReLU(), nn.Linear(512, 1000)).eval()
    n = size["mlp_samples"]
    g = torch.Generator().manual_seed(2)
    y = torch.arange(n) % 10
    x = 0.6 * torch.randn(10, 784, generator=g)[y] + torch.randn(n, 784, generator=g)

    def run(probes):
        start = now()
        measured = run_measure(model, (x, y), 10, layers=["2"], families=["svd", "nfa"], batch_size=500,
                               progress=False, agop_probes=probes)
        rows = {(r.stage, r.metric): r.value for r in measured.table.itertuples()}
        return now() - start, measured.agops["2"], rows

    exact_s, exact, exact_rows = run("exact")
    exact_root = psd_power(exact, 0.5)
    results = []
    for probes in size["probes"]:
        seconds, agop, rows = run(probes)
        results.append({
            "probes": probes, "seconds": seconds,
            "agop_rel": float((agop - exact).norm() / exact.norm()),
            "root_rel": float((psd_power(agop, 0.5) - exact_root).norm() / exact_root.norm()),
            "nfa_1_abs": abs(rows[("", "nfa_corr_1")] - exact_rows[("", "nfa_corr_1")]),
            "nfa_half_abs": abs(rows[("", "nfa_corr_0.5")] - exact_rows[("", "nfa_corr_0.5")]),
            "agop_nc1_rel": abs(rows[("agop", "nc1")] / exact_rows[("agop", "nc1")] - 1),
            "agop_nc1_trace_rel": abs(rows[("agop", "nc1_trace")] / exact_rows[("agop", "nc1_trace")] - 1),
        })
    return {"samples": n, "exact_s": exact_s, "exact_nfa_1": exact_rows[("", "nfa_corr_1")],
            "exact_agop_nc1": exact_rows[("agop", "nc1")], "sketches": results}


def part_embeddings(size: dict) -> dict:
    """An embeddings file of K classes, 2 samples per class, m features and a classifier: measure_embeddings
    (every NC metric of the train split, nc3 included), time and peak RSS."""
    import numpy as np
    import torch

    from dnc_cli.measure.features import load_embeddings, measure_embeddings

    k, m = size["classes"], size["dim"]
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(k, m, generator=g)
    labels = torch.arange(2 * k) % k
    features = centres[labels] + 0.5 * torch.randn(2 * k, m, generator=g)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "embeddings.npz"
        np.savez(path, features=features.numpy(), labels=labels.numpy(),
                 classifier=(centres + 0.1 * torch.randn(k, m, generator=g)).numpy())
        del centres, features
        before = peak_rss_gb()
        start = now()
        measured = measure_embeddings(load_embeddings(path), gram_samples_per_class=30)
        seconds = now() - start
    values = {r.metric: r.value for r in measured.table.itertuples()}
    return {"classes": k, "samples": 2 * k, "dim": m, "seconds": seconds, "rss_before_gb": before,
            "metrics": {key: values[key] for key in ("nc1", "nc2", "nc3", "cdnv", "ncc_acc")}}


PARTS = {"resnet": part_resnet, "sketch": part_sketch, "embeddings": part_embeddings}


def child(part: str, size_name: str) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    result = PARTS[part](SIZES[size_name])
    print(json.dumps({"part": part, "peak_rss_gb": peak_rss_gb(), **result}))


def run_part(part: str, size_name: str) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", part, "--size", size_name], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"part {part} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true", help="the issue's size (also DNC_BENCH_FULL=1)")
    parser.add_argument("--only", choices=list(PARTS), action="append")
    parser.add_argument("--child", choices=list(PARTS))
    parser.add_argument("--size", choices=list(SIZES), default="default")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.size)
        return 0
    size = "quick" if args.quick else "full" if args.full or os.environ.get("DNC_BENCH_FULL") == "1" else "default"
    started = now()
    print(f"bench_measure_scale ({size}): {machine()}")
    misses = []
    for part in args.only or list(PARTS):
        result = run_part(part, size)
        print(json.dumps(result))
        if result["peak_rss_gb"] > TARGETS["rss_gb"]:
            misses.append(f"{part}: peak RSS {result['peak_rss_gb']:.2f} GB > {TARGETS['rss_gb']} GB")
        if part == "resnet":
            ratio = result["all_s"] / result["nc_s"]
            print(f"resnet18, K = 1000, {result['images']} images, layers=[layer4, fc]: families=[nc] "
                  f"{result['nc_s']:.1f} s, every family {result['all_s']:.1f} s: {ratio:.2f}x (target <= "
                  f"{TARGETS['time_ratio']}x); AGOP ways {result['methods']}; peak RSS {result['peak_rss_gb']:.2f} GB")
            if ratio > TARGETS["time_ratio"]:
                misses.append(f"resnet: every family {ratio:.2f}x families=[nc] > {TARGETS['time_ratio']}x")
        elif part == "sketch":
            print(f"sketch, middle Linear of a 5-layer MLP, 1000 outputs, {result['samples']} samples: exact "
                  f"{result['exact_s']:.1f} s (nfa_corr_1 {result['exact_nfa_1']:.4f}, agop nc1 "
                  f"{result['exact_agop_nc1']:.4g})")
            for s in result["sketches"]:
                print(f"  s = {s['probes']:4d}: {s['seconds']:.1f} s; AGOP {s['agop_rel']:.2e}, AGOP^1/2 "
                      f"{s['root_rel']:.2e} (rel. Frobenius); NFA a=1 {s['nfa_1_abs']:.1e}, a=1/2 "
                      f"{s['nfa_half_abs']:.1e} (abs); agop-stage nc1 {s['agop_nc1_rel']:.2e}, nc1_trace "
                      f"{s['agop_nc1_trace_rel']:.2e} (rel)")
        else:
            print(f"embeddings, K = {result['classes']}, N = {result['samples']}, m = {result['dim']}: "
                  f"{result['seconds']:.1f} s, peak RSS {result['peak_rss_gb']:.2f} GB "
                  f"({result['rss_before_gb']:.2f} GB before measuring)")
    return finish(misses, started, "all targets met", enforced=size != "quick")


if __name__ == "__main__":
    sys.exit(main())
