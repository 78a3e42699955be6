"""What the bench scripts share: timing, the MNIST-shaped data they run on, and the machine line of a report."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import torch


def now():
    return time.perf_counter()


def timed(fn, *args, **kwargs):
    start = now()
    out = fn(*args, **kwargs)
    return now() - start, out


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def runs(values):
    return " ".join(f"{v:.2f}" for v in values)


def mixture(n: int, num_classes: int, seed: int):
    """MNIST-shaped (N, 1, 28, 28) Gaussian mixture: class means plus isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, 784, generator=g)
    labels = torch.randperm(n, generator=g) % num_classes
    x = 0.6 * means[labels] + torch.randn(n, 784, generator=g)
    return x.reshape(n, 1, 28, 28), labels


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def machine():
    model = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load avg (1/5/15 min) {load_average()}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}")


def finish(misses: list[str], started: float, passed: str, enforced: bool = True) -> int:
    """The end of a bench report: wall time, the missed targets on stderr (or only listed, when not enforced) and
    the exit status."""
    print(f"\nwall time {now() - started:.0f} s; load avg (1/5/15 min) at the end {load_average()}")
    if not enforced:
        for miss in misses:
            print(f"(quick run, not enforced) {miss}")
        return 0
    for miss in misses:
        print(f"TARGET MISSED: {miss}", file=sys.stderr)
    print(passed if not misses else f"{len(misses)} target(s) missed (see stderr)")
    return 1 if misses else 0
