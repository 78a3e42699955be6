"""Every choice of a torch device: the `device=` option, a sweep job's GPU and a parallel analysis worker's GPU.

torch is imported inside the functions: `dnc plot` and `dnc report` import the config (and so this module)
without torch.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from dnc_cli.errors import UsageError

VALID = "valid: auto, cpu, cuda, cuda:N"


def validate_device(device: str) -> None:
    import torch

    if device in ("auto", "cpu"):
        return
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UsageError(f"device={device} but no CUDA device is available; {VALID}")
        return
    raise UsageError(f"device={device} is not a device; {VALID}")


def resolve_device(name: str):
    """`auto` is CUDA when available, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def job_gpu() -> str:
    """`device='${dnc_job_gpu:}'`: job n of a sweep on GPU n mod #GPUs (cpu without CUDA; GPU 0 outside sweeps)."""
    import torch
    from hydra.core.hydra_config import HydraConfig

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        return "cpu"
    job = HydraConfig.get().job if HydraConfig.initialized() else None
    num = job.num if job is not None and not OmegaConf.is_missing(job, "num") else 0
    return f"cuda:{int(num) % count}"


def worker_device(device: str, index: int) -> str:
    """With several GPUs, parallel analysis worker i goes to GPU i mod #GPUs (device auto or cuda)."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return f"cuda:{index % torch.cuda.device_count()}"
    return device
