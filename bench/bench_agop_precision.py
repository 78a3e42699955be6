"""`make bench` (part 3): what computing the AGOPs in float64 costs a default (float32) analysis, and what it buys.

Since issue #14, `LayerAGOPs` runs the analysed head on a float64 copy, whatever the analysis precision: float32
gradients round an AGOP's small eigenvalues away, and the `agop` stage's nc1 (the Σ_B^† form) weighs exactly those.

1. cost: one `analyze_checkpoint` (families nc + svd + nfa, both splits) of the paper's 5-layer width-512 MLP on
   8,000 MNIST-shaped samples, float32, with the AGOPs in float64 (dnc) against the same analysis with the AGOPs
   in float32 (the baseline: dnc before #14) and against `precision=float64` (everything in float64).
2. accuracy: the `agop`-stage nc1 of every layer of the default digits MLP after 3 epochs (an ill-conditioned
   checkpoint, trained here), float32 analysis with float64 / float32 AGOPs against the float64 analysis.

Exit status 1 when the float64-AGOP analysis is off by more than 1e-3 relative. `--quick`: smaller sizes.
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
    sides = {"dnc: float32, AGOPs in float64": (model.float(), data.to(cpu, torch.float32), LayerAGOPs),
             "baseline: float32, AGOPs in float32 (before #14)": (
                 model.float(), data.to(cpu, torch.float32), functools.partial(LayerAGOPs, dtype=torch.float32)),
             "precision=float64 (everything)": (
                 copy.deepcopy(model).double(), data.to(cpu, torch.float64), LayerAGOPs)}
    times = {side: [] for side in sides}
    for _ in range(size["repeats"]):
        for side, (net, side_data, agops) in sides.items():
            network.LayerAGOPs = agops
            times[side].append(timed(network.analyze_checkpoint, net, side_data, acfg, cpu)[0])
    network.LayerAGOPs = LayerAGOPs
    return times


def agop_stage_errors() -> dict[str, float]:
    """Max relative error over layers of the agop-stage nc1 (test split) against the float64 analysis."""
    from hydra import compose, initialize_config_module

    from dnc_cli.analyze import network
    from dnc_cli.config import AnalyzeConfig
    from dnc_cli.data import load_dataset
    from dnc_cli.metrics.agop import LayerAGOPs
    from dnc_cli.models.networks import build_model
    from dnc_cli.train.command import check, run

    with initialize_config_module("dnc_cli.conf", version_base="1.3"):
        cfg = check(compose("train", ["progress=false", "epochs=3", "checkpoints.schedule=list",
                                      "checkpoints.epochs=[3]"]))
    with tempfile.TemporaryDirectory() as folder:
        run(cfg, Path(folder))
        state = torch.load(Path(folder) / "checkpoints/epoch_000003.pt", weights_only=True)["model"]
    data = load_dataset(cfg.dataset, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes).eval()
    model.load_state_dict(state)
    cpu, acfg = torch.device("cpu"), AnalyzeConfig(splits=["test"], families=["svd"])

    def agop_nc1(net, dtype, agops):
        network.LayerAGOPs = agops
        rows = network.analyze_checkpoint(net, data.to(cpu, dtype), acfg, cpu)
        network.LayerAGOPs = LayerAGOPs
        return {layer: value for _, layer, stage, metric, value in rows if (stage, metric) == ("agop", "nc1")}

    reference = agop_nc1(model.double(), torch.float64, LayerAGOPs)
    sides = {"dnc: AGOPs in float64": LayerAGOPs,
             "baseline: AGOPs in float32": functools.partial(LayerAGOPs, dtype=torch.float32)}
    return {side: max(rel(value, reference[layer]) for layer, value in agop_nc1(model.float(), torch.float32,
                                                                                agops).items())
            for side, agops in sides.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    started = now()
    torch.manual_seed(0)
    print(machine())
    times = analysis_seconds(size)
    base = min(times["baseline: float32, AGOPs in float32 (before #14)"])
    print(f"\n## 5. AGOP precision: analyze_checkpoint, MLP depth {size['depth']} width {size['width']}, "
          f"N={size['n']} (+{size['n'] // 4} test), families nc+svd+nfa")
    print(f"{'side':<50}{'seconds':>8}{'x/base':>8}   runs")
    for side, values in times.items():
        print(f"{side:<50}{min(values):>8.2f}{min(values) / base:>7.2f}x   {runs(values)}")
    errors = agop_stage_errors()
    print("\nagop-stage nc1 of the digits MLP after 3 epochs (test split), max relative error over layers against "
          "the float64 analysis:")
    for side, error in errors.items():
        print(f"  {side:<30}{error:.2e}")
    misses = [] if errors["dnc: AGOPs in float64"] <= TARGET_AGREEMENT else [
        f"agop-stage nc1 off by {errors['dnc: AGOPs in float64']:.2e} > {TARGET_AGREEMENT:g}"]
    return finish(misses, started, "AGOP precision: target met", enforced=not args.quick)


if __name__ == "__main__":
    sys.exit(main())
