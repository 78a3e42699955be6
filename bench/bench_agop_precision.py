"""`make bench` (part 3): what the AGOPs' precision costs a default (float32) analysis, and what it buys.

Float32 Gram products round an AGOP's small eigenvalues away (issue #14), and the `agop` stage's nc1 (the Σ_B^†
form) weighs exactly those. Since #14 the Grams are float64; since #22 (item 7) the head's forward and backward
run in the model's own dtype (float32 gradients, cast to float64 before the products) instead of on a float64
copy of the head. Three ways to get the AGOPs of a float32 network:

    mixed (dnc)    float32 forward and backward, float64 products and sums
    float64 head   a float64 copy of the head: everything in float64 (dnc from #14 to #22)
    float32        float32 products, float64 sums (dnc before #14): the float32 floor

1. cost: one `analyze_checkpoint` (families nc + svd + nfa, both splits) of the paper's 5-layer width-512 MLP on
   8,000 MNIST-shaped samples, float32, with each way, and `precision=float64` (everything in float64).
2. accuracy: every row of ill-conditioned checkpoints (trained here: the default digits MLP after 3 epochs, and with
   `--mnist-root` issue #14's MNIST case), float32 analysis with each way against the float64 analysis.

Exit status 1 when the default (mixed) is off by more than 1e-3 relative in a row an AGOP enters. `--quick`:
smaller sizes.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
import tempfile
from pathlib import Path

import torch
from common import finish, machine, mixture, now, rel, runs, timed

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_analyze  # noqa: E402  (the trained MLP of part 1)

FULL = dict(n=8000, depth=5, width=512, classes=10, repeats=3)
QUICK = dict(n=1000, depth=3, width=128, classes=10, repeats=1)
TARGET_AGREEMENT = 1e-3
MIXED, FLOAT32 = "dnc: mixed (float32 gradients, float64 Gram)", "float32 Gram products (before #14)"


def agop_ways():
    """name -> LayerAGOPs factory: the three ways of the docstring."""
    from dnc_cli.metrics.agop import LayerAGOPs

    class Float64Head(LayerAGOPs):  # #14's way: the head copied to float64, inputs cast to it
        def __init__(self, model, **kwargs):
            super().__init__(copy.deepcopy(model, memo={id(model.backbone): None}).double(), **kwargs)

        def _mean_gradients(self, h0):
            return super()._mean_gradients(h0.double())

        def update(self, h0):
            return super().update(h0.double())

    return {MIXED: LayerAGOPs, "float64 head (#14 to #22)": Float64Head,
            FLOAT32: functools.partial(LayerAGOPs, dtype=torch.float32)}


def analysis_seconds(size) -> dict[str, list[float]]:
    from dnc_cli.analyze import network
    from dnc_cli.config import AnalyzeConfig
    from dnc_cli.data import Data, Split
    from dnc_cli.metrics.agop import LayerAGOPs

    bench_analyze.load()
    x, labels = mixture(size["n"] + size["n"] // 4, size["classes"], seed=0)
    model = bench_analyze.trained_mlp(x[: size["n"]], labels[: size["n"]], size["classes"], size["depth"],
                                      size["width"], seed=0)
    split = [Split(x[: size["n"]], labels[: size["n"]]), Split(x[size["n"]:], labels[size["n"]:])]
    data = Data(*split, size["classes"], torch.zeros(size["n"], dtype=torch.bool), labels[: size["n"]])
    cpu, acfg = torch.device("cpu"), AnalyzeConfig(batch_size=1000, progress=False)
    sides = {way: (model.float(), data.to(cpu, torch.float32), agops) for way, agops in agop_ways().items()}
    sides["precision=float64 (everything)"] = (copy.deepcopy(model).double(), data.to(cpu, torch.float64), LayerAGOPs)
    times = {side: [] for side in sides}
    for _ in range(size["repeats"]):
        for side, (net, side_data, agops) in sides.items():
            network.LayerAGOPs = agops
            times[side].append(timed(network.analyze_checkpoint, net, side_data, acfg, cpu)[0])
    network.LayerAGOPs = LayerAGOPs
    return times


CASES = {  # name -> the `dnc train` overrides of an ill-conditioned checkpoint and its epoch
    "the default digits MLP after 3 epochs": (["epochs=3"], 3),
    "width 128 on 1,000 MNIST digits, epoch 10 (issue #14's case)": (
        ["dataset=mnist", "dataset.n_train=1000", "model.width=128", "epochs=10"], 10)}


def way_errors(overrides: list[str], epoch: int) -> dict[str, dict[str, float]]:
    """Trains the case, analyses its checkpoint (both splits, nc + svd + nfa) with each way in float32 and once in
    float64: per way the max relative error against float64 of the agop-stage nc1, of every row that an AGOP
    enters (agop stage, NFA), and of every row."""
    from hydra import compose, initialize_config_module

    from dnc_cli.analyze import network
    from dnc_cli.config import AnalyzeConfig
    from dnc_cli.data import load_dataset
    from dnc_cli.metrics.agop import LayerAGOPs
    from dnc_cli.models.networks import build_model
    from dnc_cli.train.command import check, run

    with initialize_config_module("dnc_cli.conf", version_base="1.3"):
        cfg = check(compose("train", ["progress=false", "checkpoints.schedule=list", f"checkpoints.epochs=[{epoch}]",
                                      *overrides]))
    with tempfile.TemporaryDirectory() as folder:
        run(cfg, Path(folder))
        state = torch.load(Path(folder) / f"checkpoints/epoch_{epoch:06d}.pt", weights_only=True)["model"]
    data = load_dataset(cfg.dataset, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes).eval()
    model.load_state_dict(state)
    cpu, acfg = torch.device("cpu"), AnalyzeConfig(families=["nc", "svd", "nfa"], progress=False)

    def analysed(net, dtype, agops):
        network.LayerAGOPs = agops
        rows = network.analyze_checkpoint(net, data.to(cpu, dtype), acfg, cpu)
        network.LayerAGOPs = LayerAGOPs
        return {(split, layer, stage, metric): value for split, layer, stage, metric, value in rows}

    reference = analysed(model.double(), torch.float64, LayerAGOPs)
    errors = {}
    for way, agops in agop_ways().items():
        got = analysed(model.float(), torch.float32, agops)
        assert got.keys() == reference.keys(), f"{way}: other rows than float64's"
        error = {key: rel(got[key], reference[key]) for key in reference}
        errors[way] = {"agop nc1": max(e for key, e in error.items() if key[2:] == ("agop", "nc1")),
                       "agop or nfa rows": max(e for key, e in error.items()
                                               if key[2] == "agop" or key[3].startswith("nfa")),
                       "every row": max(error.values())}
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mnist-root", help="also issue #14's MNIST case: a folder holding MNIST/raw/")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    started = now()
    torch.manual_seed(0)
    print(machine())
    times = analysis_seconds(size)
    base = min(times[FLOAT32])
    print(f"\n## 5. AGOP precision: analyze_checkpoint, MLP depth {size['depth']} width {size['width']}, "
          f"N={size['n']} (+{size['n'] // 4} test), families nc+svd+nfa")
    print(f"{'side':<52}{'seconds':>8}{'x/base':>8}   runs")
    for side, values in times.items():
        print(f"{side:<52}{min(values):>8.2f}{min(values) / base:>7.2f}x   {runs(values)}")
    misses = []
    for case, (overrides, epoch) in CASES.items():
        if "dataset=mnist" in overrides:
            if not args.mnist_root:
                print(f"\n{case}: skipped (--mnist-root names a folder holding MNIST/raw/)")
                continue
            overrides = [*overrides, f"dataset.root={args.mnist_root}"]
        errors = way_errors(overrides, epoch)
        print(f"\n{case}: max relative error against the float64 analysis (both splits, every layer)")
        print(f"  {'way':<52}" + "".join(f"{column:>18}" for column in errors[MIXED]))
        for way, error in errors.items():
            print(f"  {way:<52}" + "".join(f"{value:>18.2e}" for value in error.values()))
        worst = errors[MIXED]["agop or nfa rows"]
        if worst > TARGET_AGREEMENT:
            misses.append(f"{case}: the AGOP rows off by {worst:.2e} > {TARGET_AGREEMENT:g}")
    return finish(misses, started, "AGOP precision: target met", enforced=not args.quick)


if __name__ == "__main__":
    sys.exit(main())
