"""`make gpu-check`: what only a CUDA machine can show, in one script of a few minutes (issue #22, item 6).

Steps, each timed; a step that fails is reported and the others still run:
1. the CUDA tests (`pytest -m cuda`: the tests that skip without a CUDA device);
2. one epoch of `experiment=paper_mlp` on the GPU, on the bundled digits (no download), and on real MNIST when
   DNC_MNIST_ROOT names a folder holding MNIST/raw/ (DNC_MNIST_N_TRAIN training images, default 8000);
3. `dnc analyze` of that run's epoch-1 checkpoint on the GPU;
4. `dnc measure`'s cost at 1,000 classes: torchvision resnet18(num_classes=1000), random weights, random 32x32
   images, layers=[layer4, fc], families=[nc] against every family (`measure()` in this process);
5. the AGOPs' float64 cost: `LayerAGOPs` of the paper's 5 x 512 MLP on 8,000 MNIST-shaped samples in float32,
   in dnc's default (float32 gradients, float64 Gram) and in float64 (consumer GPUs run float64 at 1/32-1/64 of
   float32; BENCHMARKS.md section 6).

It prints a markdown block for BENCHMARKS.md (section "GPU check") and writes it to --out, or to $DNC_GPU_CHECK_OUT, or
to $OUT/gpu_check.md when OUT is set. Exit status: 0 when every step passed, 1 when one failed; without a CUDA
device it prints one line saying so and exits 0 (nothing to check). `--cpu-dry-run` runs every step at toy sizes on
the CPU (the CUDA tests then skip): how the tests check this script.

It installs nothing and needs no network: the project (`pip install --no-deps -e .`), hydra-core, omegaconf and
torchvision must be importable, and any torch >= 2 will do (it does not read the version pin). Under 5 minutes on
one H200 (the budget it is sized for: 10,000 images in step 4, 8,000 samples in step 5).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZES = {  # per mode: steps 2-3's model (the preset's own on the GPU), step 4's images, classes and batch, step 5's
    # samples, depth and width
    "gpu": dict(train=[], images=10_000, classes=1000, batch=500, agop_samples=8000, depth=5, width=512,
                agop_batch=1000),
    "cpu-dry-run": dict(train=["model.depth=2", "model.width=32"], images=48, classes=20, batch=24, agop_samples=200,
                        depth=2, width=32, agop_batch=100),
}
STEP_TIMEOUT_S = 240  # a subprocess step that takes longer is stopped and reported as failed


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    result: str


def timed_step(name: str, function) -> Step:
    start = time.perf_counter()
    try:
        ok, result = function()
    except Exception as exc:  # a failed step is a row of the report, not the end of the check
        ok, result = False, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return Step(name, ok, time.perf_counter() - start, result)


def run_command(args: list[str], cwd: Path = REPO) -> tuple[bool, str]:
    """A subprocess with the check's Python; (exit status 0, its last output line)."""
    try:
        done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                              timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"failed: no answer within {STEP_TIMEOUT_S} s"
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    return done.returncode == 0, (last if done.returncode == 0 else f"failed (exit {done.returncode}): {last}")


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- the steps
def cuda_tests() -> tuple[bool, str]:
    # addopts emptied: pyproject's -q plus this -q would drop the summary line ("2 passed in 9.1s") the report shows
    return run_command(["-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests"])


def train_one_epoch(run_dir: Path, device: str, overrides: list[str]) -> tuple[bool, str]:
    return run_command(["-m", "dnc_cli", "train", "experiment=paper_mlp", *overrides, "epochs=1", f"device={device}",
                        "progress=false", "checkpoints.schedule=list", "checkpoints.epochs=[0,1]",
                        f"hydra.run.dir={run_dir}"])


def analyze_checkpoint(run_dir: Path, device: str) -> tuple[bool, str]:
    return run_command(["-m", "dnc_cli", "analyze", f"run_dir={run_dir}", f"device={device}", "progress=false",
                        "epochs=[1]"])


def measure_seconds(device, size: dict, families) -> tuple[float, int]:
    """Seconds of one `measure()` of resnet18(num_classes=K) on random 32 x 32 images, layers [layer4, fc]; rows."""
    import torch
    import torchvision

    from dnc_cli.measure import measure

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=size["classes"])
    x = torch.randn(size["images"], 3, 32, 32)
    y = torch.arange(size["images"]) % size["classes"]
    synchronize(device)
    start = time.perf_counter()
    table = measure(model, (x, y), size["classes"], layers=["layer4", "fc"], families=families, device=device,
                    batch_size=size["batch"], progress=False)
    synchronize(device)
    return time.perf_counter() - start, len(table)


def measure_families(device, size: dict) -> tuple[bool, str]:
    from dnc_cli.config import FAMILIES

    measure_seconds(device, dict(size, images=2 * size["batch"]), ["nc"])  # warm-up: cuDNN, allocator
    nc_only, nc_rows = measure_seconds(device, size, ["nc"])
    every, every_rows = measure_seconds(device, size, list(FAMILIES))
    return True, (f"families=[nc] {nc_only:.1f} s ({nc_rows} rows); every family ({', '.join(FAMILIES)}) "
                  f"{every:.1f} s ({every_rows} rows): {every / nc_only:.1f}x")


def agop_seconds(device, size: dict, model_dtype, gram_dtype) -> float:
    """Seconds of LayerAGOPs (update over every batch, then compute) of the paper's MLP: forward and backward in
    `model_dtype`, the Gram's products in `gram_dtype`."""
    import torch

    from dnc_cli.config import ModelConfig
    from dnc_cli.metrics.agop import LayerAGOPs
    from dnc_cli.models.networks import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=size["depth"], width=size["width"]), (1, 28, 28), 10)
    model = model.to(device, model_dtype).eval()
    x = torch.randn(size["agop_samples"], 1, 28, 28, device=device, dtype=model_dtype)
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        agops = LayerAGOPs(model, dtype=gram_dtype)
        for first in range(0, len(x), size["agop_batch"]):
            agops.update(model.embed(x[first:first + size["agop_batch"]]))
        agops.compute()
    synchronize(device)
    return time.perf_counter() - start


def agop_precision(device, size: dict) -> tuple[bool, str]:
    import torch

    f32, f64 = torch.float32, torch.float64
    agop_seconds(device, dict(size, agop_samples=size["agop_batch"]), f32, f32)  # warm-up
    ways = {"float32": (f32, f32), "dnc's default (float32 gradients, float64 Gram)": (f32, f64),
            "float64": (f64, f64)}
    seconds = {way: min(agop_seconds(device, size, *dtypes) for _ in range(2)) for way, dtypes in ways.items()}
    floor = seconds["float32"]
    return True, "; ".join(f"{way} {value:.3f} s ({value / floor:.1f}x)" for way, value in seconds.items())


# ---------------------------------------------------------------------------------------------------- the report
def machine_line(device) -> str:
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
        where = f"{name} ({memory:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        where = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), dry run at toy sizes"
    return f"{where}; torch {torch.__version__}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}"


def report(steps: list[Step], device, size: dict, mode: str) -> str:
    lines = ["### Run of the GPU check", "",
             f"{machine_line(device)}; mode {mode}: step 4 on {size['images']:,} images, K = {size['classes']:,}; "
             f"step 5 on {size['agop_samples']:,} samples, MLP {size['depth']} x {size['width']}.", "",
             "| step | passed | seconds | result |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {'yes' if s.ok else '**no**'} | {s.seconds:.1f} | {s.result.replace('|', '/')} |"
              for s in steps]
    return "\n".join(lines) + "\n"


def output_path(argument: str | None) -> Path | None:
    if argument:
        return Path(argument)
    if os.environ.get("DNC_GPU_CHECK_OUT"):
        return Path(os.environ["DNC_GPU_CHECK_OUT"])
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.md"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="every step at toy sizes on the CPU")
    parser.add_argument("--out", help="also write the markdown block here (default: $DNC_GPU_CHECK_OUT, "
                                      "else $OUT/gpu_check.md when OUT is set)")
    args = parser.parse_args(argv)
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is false), nothing checked; "
              "--cpu-dry-run runs the same steps on the CPU at toy sizes")
        return 0
    mode = "cpu-dry-run" if args.cpu_dry_run else "gpu"
    device, size = torch.device("cpu" if args.cpu_dry_run else "cuda"), SIZES[mode]
    steps = [timed_step("CUDA tests (`pytest -m cuda`)", cuda_tests)]
    with tempfile.TemporaryDirectory(prefix="dnc_gpu_check_") as folder:
        runs = {"digits": ["dataset=digits", "dataset.n_train=null"]}
        if os.environ.get("DNC_MNIST_ROOT"):
            runs["mnist"] = ["dataset=mnist", f"dataset.root={os.environ['DNC_MNIST_ROOT']}",
                             f"dataset.n_train={os.environ.get('DNC_MNIST_N_TRAIN', '8000')}"]
        for name, dataset in runs.items():
            run_dir = Path(folder) / name
            steps.append(timed_step(f"train `experiment=paper_mlp dataset={name}`, 1 epoch",
                                    lambda run_dir=run_dir, dataset=dataset: train_one_epoch(
                                        run_dir, device.type, dataset + size["train"])))
            steps.append(timed_step(f"`dnc analyze` of its epoch-1 checkpoint ({name})",
                                    lambda run_dir=run_dir: analyze_checkpoint(run_dir, device.type)))
    steps.append(timed_step(f"`measure()` resnet18, K={size['classes']}, layers=[layer4, fc]",
                            lambda: measure_families(device, size)))
    steps.append(timed_step(f"LayerAGOPs float32, default and float64, MLP {size['depth']} x {size['width']}",
                            lambda: agop_precision(device, size)))
    text = report(steps, device, size, mode)
    print(text)
    path = output_path(args.out)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"written to {path}")
    return 0 if all(step.ok for step in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
