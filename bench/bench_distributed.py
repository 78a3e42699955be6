"""`make bench` (part 5): `dnc analyze` data-parallel under torchrun (README, "Scaling out").

1. measured: one checkpoint of bench_analyze's setup (a 5 x 512 MLP, 8,000 MNIST-shaped mixture samples, train split,
   families nc + svd + nfa) analysed by `analyze_checkpoint` in P = 1 process with 1 and with 2 threads, and in P = 2
   processes of 1 thread each (`torchrun --standalone`, gloo): wall time (min of the repeats, between barriers), the
   time inside the all-reduces, the bytes reduced, and the largest relative difference from the P = 1 table.
2. on paper: the paper's ResNet-18 + MLP head (conf/experiment/paper_resnet.yaml) on CIFAR-10 (50,000 + 10,000
   images). torch's FlopCounterMode counts the GEMM and convolution FLOPs of `analyze_checkpoint` on a few random
   32 x 32 images at three sizes, which splits them into FLOPs per train sample, per test sample and per checkpoint
   (the part every rank repeats); the all-reduced state is recorded from the same analysis. From these, the
   all-reduce volume per checkpoint and the speed-up expected on 8 GPUs for the stated rates.

No targets: the exit status is 0 unless a run fails. `--quick`: small sizes (a smoke run of ~30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import machine, now

BENCH = Path(__file__).resolve().parent
FULL = dict(n=8000, depth=5, width=512, classes=10, repeats=3, batch=1000)
QUICK = dict(n=1000, depth=3, width=128, classes=10, repeats=2, batch=500)
CIFAR = dict(train=50_000, test=10_000, classes=10, checkpoints=51)  # paper_resnet: every 10 epochs of 500
# stated rates for the on-paper estimate: the float32 GEMM/convolution throughput a data-centre GPU reaches on these
# small 8x8 convolutions and 512-wide GEMMs, the NVLink all-reduce bus bandwidth and the latency of one collective;
# and the time of the work every rank repeats per checkpoint besides its GEMMs: 5 eighs and 5 SVDs at 512 and ~50
# SVDs of the K x m centred means (cuSOLVER: milliseconds to tens of milliseconds each, latency-bound), the checkpoint
# load. Not measurable without a GPU, so the estimate is given for a low and a high value.
GPU_FLOPS = (10e12, 30e12)
BUS_BYTES_PER_S = 100e9
COLLECTIVE_LATENCY_S = 50e-6
REPLICATED_S = (0.25, 1.0)


# ---------------------------------------------------------------------------------------------------- 1. measured
def mlp_and_data(size):
    sys.path.insert(0, str(BENCH))
    import bench_analyze
    from common import mixture

    bench_analyze.load()
    from dnc_cli.data import Data, Split

    x, labels = mixture(size["n"], size["classes"], seed=0)
    model = bench_analyze.trained_mlp(x, labels, size["classes"], size["depth"], size["width"], seed=0)
    data = Data(Split(x, labels), Split(x[:size["classes"]], labels[:size["classes"]]), size["classes"],
                torch.zeros(len(x), dtype=torch.bool), labels.clone())
    return model, data


class Collectives:
    """Wraps dnc_cli.distributed.all_reduce_sum: its calls, the bytes it reduces and the time it takes."""

    def __init__(self):
        from dnc_cli import distributed

        self.module, self.original = distributed, distributed.all_reduce_sum
        self.calls, self.bytes, self.seconds = 0, 0, 0.0
        distributed.all_reduce_sum = self

    def __call__(self, tensors):
        started = now()
        self.original(tensors)
        self.seconds += now() - started
        self.calls += len({t.dtype for t in tensors})
        self.bytes += sum(t.numel() * t.element_size() for t in tensors)


def worker(size, out: Path) -> None:
    """One rank (or the one process): time analyze_checkpoint on its shard; rank 0 writes the result."""
    from dnc_cli import distributed
    from dnc_cli.analyze.network import analyze_checkpoint
    from dnc_cli.config import AnalyzeConfig

    model, data = mlp_and_data(size)
    acfg = AnalyzeConfig(splits=["train"], families=["nc", "svd", "nfa"], batch_size=size["batch"], progress=False)
    with distributed.process_group(600.0, torch.device("cpu")) as device:
        collectives = Collectives()
        times, rows = [], None
        for _ in range(size["repeats"]):
            barrier()
            started = now()
            rows = analyze_checkpoint(model, data, acfg, device)
            barrier()
            times.append(now() - started)
        if distributed.is_writer():
            repeats = size["repeats"]
            out.write_text(json.dumps({"times": times, "collective_s": collectives.seconds / repeats,
                                       "collectives": collectives.calls // repeats,
                                       "bytes": collectives.bytes // repeats, "threads": torch.get_num_threads(),
                                       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                       "rows": [[*row[:4], row[4]] for row in rows]}))


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def measured(size, quick: bool) -> list[dict]:
    """P=1 (1 thread), P=1 (2 threads), P=2 (1 thread each), each in fresh processes."""
    results = []
    for label, processes, threads in (("P=1, 1 thread", 1, 1), ("P=1, 2 threads", 1, 2),
                                      ("P=2, 1 thread each", 2, 1)):
        out = BENCH / f".bench_distributed_{processes}_{threads}.json"
        command = [sys.executable, str(BENCH / "bench_distributed.py"), "--worker", str(out)]
        if processes > 1:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                       *command[1:]]
        env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK")}
        started = now()
        result = subprocess.run(command + (["--quick"] if quick else []), capture_output=True, text=True,
                                env={**env, "OMP_NUM_THREADS": str(threads)})
        if result.returncode != 0:
            raise SystemExit(f"{label} failed:\n{result.stderr[-3000:]}")
        record = json.loads(out.read_text()) | {"label": label, "processes": processes, "wall_s": now() - started}
        out.unlink()
        results.append(record)
    return results


def largest_difference(rows_a, rows_b) -> float:
    a = {tuple(row[:4]): row[4] for row in rows_a}
    b = {tuple(row[:4]): row[4] for row in rows_b}
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-300) for k in a if a[k] == a[k])


# ---------------------------------------------------------------------------------------------------- 2. on paper
def paper_resnet_counts() -> dict:
    """FLOPs per train sample, per test sample and per checkpoint, and the all-reduced bytes, of the analysis of the
    paper's ResNet-18 + MLP head on CIFAR-shaped images (FlopCounterMode at three sizes), and the size of a
    checkpoint."""
    from torch.utils.flop_counter import FlopCounterMode

    from dnc_cli.analyze.network import analyze_checkpoint
    from dnc_cli.config import AnalyzeConfig, ModelConfig, ModelName
    from dnc_cli.data import Data, Split
    from dnc_cli.models.networks import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(name=ModelName.resnet18_mlp, depth=5, width=512, init_gain=0.25,
                                    first_layer_default_init=True, small_input_stem=False), (3, 32, 32), 10).eval()
    # batches of 20: the AGOP sums' shift is the first batch's forward, so it stays 20 images at every size (one
    # batch per checkpoint, not a cost per image)
    acfg = AnalyzeConfig(batch_size=20, progress=False)

    def data(n_train: int, n_test: int):
        g = torch.Generator().manual_seed(n_train * 100 + n_test)
        split = lambda n: Split(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10)  # noqa: E731
        return Data(split(n_train), split(n_test), 10, torch.zeros(n_train, dtype=torch.bool), torch.arange(n_train))

    def count(n_train: int, n_test: int) -> tuple[int, Collectives]:
        collectives = Collectives()
        with FlopCounterMode(display=False) as flops:
            analyze_checkpoint(model, data(n_train, n_test), acfg, torch.device("cpu"))
        collectives.module.all_reduce_sum = collectives.original
        return flops.get_total_flops(), collectives

    base, collectives = count(20, 20)
    per_train = (count(40, 20)[0] - base) / 20
    per_test = (count(20, 40)[0] - base) / 20
    parameters = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {"per_train": per_train, "per_test": per_test, "per_checkpoint": base - 20 * (per_train + per_test),
            "bytes": collectives.bytes, "collectives": collectives.calls, "checkpoint_bytes": parameters}


def paper_estimate(counts: dict, gpus: int = 8) -> list[dict]:
    """Per checkpoint on 1 and on `gpus` GPUs: the sharded FLOPs divide by the GPUs, the per-checkpoint FLOPs and the
    replicated time do not, and the all-reduce is added (ring: each rank sends and receives 2 (P-1)/P of the buffer;
    one more collective for the checkpoint agreement)."""
    sharded_flops = CIFAR["train"] * counts["per_train"] + CIFAR["test"] * counts["per_test"]
    comm = (2 * (gpus - 1) / gpus * counts["bytes"] / BUS_BYTES_PER_S
            + (counts["collectives"] + 1) * COLLECTIVE_LATENCY_S)
    rows = []
    for replicated in REPLICATED_S:
        for rate in GPU_FLOPS:
            fixed = replicated + counts["per_checkpoint"] / rate
            one, many = fixed + sharded_flops / rate, fixed + sharded_flops / rate / gpus + comm
            rows.append({"rate": rate, "replicated": replicated, "one": one, "many": many, "comm": comm,
                         "speedup": one / many})
    return rows


# ---------------------------------------------------------------------------------------------------- report
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    if args.worker:
        worker(size, args.worker)
        return 0
    started = now()
    print(f"# bench_distributed{' (quick)' if args.quick else ''}\nmachine: {machine()}")
    results = measured(size, args.quick)
    print(f"\n## 1. measured: analyze_checkpoint, MLP depth {size['depth']} width {size['width']}, N={size['n']}, "
          f"train split, nc+svd+nfa; min of {size['repeats']} runs, between barriers")
    print(f"{'processes':<22}{'seconds':>9}{'vs P=1,1t':>11}{'in all-reduce':>15}{'all-reduced':>13}"
          f"{'max rel diff':>14}{'peak RSS':>11}   runs")
    reference = results[0]
    for r in results:
        t, t1 = min(r["times"]), min(reference["times"])
        print(f"{r['label']:<22}{t:>9.2f}{t1 / t:>10.2f}x{r['collective_s']:>13.3f} s"
              f"{r['bytes'] / 1e6:>10.2f} MB{largest_difference(reference['rows'], r['rows']):>14.1e}"
              f"{r['peak_rss_mb']:>8.0f} MB   "
              + " ".join(f"{v:.2f}" for v in r["times"]))
    two = results[2]
    print(f"P=2: {two['collectives']} collectives per checkpoint (one per dtype and sync point), "
          f"{two['bytes'] / 1e6:.2f} MB reduced per rank")

    counts = paper_resnet_counts()
    print(f"\n## 2. on paper: ResNet-18 + 5 x 512 MLP head (paper_resnet) on CIFAR-10, {CIFAR['train']:,} train + "
          f"{CIFAR['test']:,} test images, families nc + svd + nfa, both splits")
    print(f"FLOPs (GEMM + convolution, FlopCounterMode): {counts['per_train'] / 1e9:.3f} GFLOP per train image, "
          f"{counts['per_test'] / 1e9:.3f} per test image, {counts['per_checkpoint'] / 1e9:.2f} per checkpoint "
          f"(repeated by every rank); per checkpoint in all "
          f"{(CIFAR['train'] * counts['per_train'] + CIFAR['test'] * counts['per_test']) / 1e12:.1f} TFLOP")
    print(f"all-reduce per checkpoint: {counts['bytes'] / 1e6:.1f} MB in {counts['collectives']} collectives "
          f"(+1 agreement); {CIFAR['checkpoints']} checkpoints: {CIFAR['checkpoints'] * counts['bytes'] / 1e9:.2f} GB")
    print(f"each rank reads the checkpoint: {counts['checkpoint_bytes'] / 1e6:.0f} MB of float32 parameters")
    print(f"assumed: {BUS_BYTES_PER_S / 1e9:.0f} GB/s all-reduce bus bandwidth, {COLLECTIVE_LATENCY_S * 1e6:.0f} us "
          "per collective")
    print(f"{'float32 rate':<15}{'replicated':>11}{'1 GPU s/ckpt':>14}{'8 GPUs s/ckpt':>15}{'all-reduce':>12}"
          f"{'speed-up':>10}")
    for row in paper_estimate(counts):
        print(f"{row['rate'] / 1e12:>5.0f} TFLOP/s{row['replicated']:>10.2f} s{row['one']:>14.2f}{row['many']:>15.2f}"
              f"{row['comm'] * 1e3:>9.1f} ms{row['speedup']:>9.1f}x")
    print(f"\nwall time {now() - started:.0f} s; {time.strftime('%Y-%m-%d %H:%M')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
