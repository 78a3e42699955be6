"""`dnc train`: train a network through the terminal phase (TPT) and beyond, saving scheduled checkpoints.

Resumable: `checkpoints/last.pt` holds model, optimizer and every RNG state after each epoch, so
`dnc train resume=<run_dir>` continues bitwise identically (on CPU) to an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import dnc_cli
from dnc_cli.cli import fail
from dnc_cli.config import (
    CheckpointConfig,
    ModelName,
    OptimizerName,
    Schedule,
    TrainConfig,
    resolve_device,
    to_object,
    to_plain,
    validate_train,
)
from dnc_cli.data import load_dataset, targets
from dnc_cli.errors import UsageError
from dnc_cli.models import build_model
from dnc_cli.runs import CONFIG_FILE, atomic_path, checkpoint_name, ensure_writable_dir, read_json, write_json

log = logging.getLogger("dnc.train")
LOG_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "elapsed_s")
# config keys that may change when resuming a run (everything else must match the saved config)
RESUMABLE_CHANGES = {"resume", "epochs", "epochs_after_tpt", "device", "progress"}

# The run dir is the resumed run's folder, or a fresh timestamped one (see conf/train.yaml).
OmegaConf.register_new_resolver("dnc_run_dir", lambda resume, fresh: resume or fresh, replace=True)


def check(cfg: DictConfig) -> TrainConfig:
    train_cfg = validate_train(to_object(cfg, TrainConfig))
    if train_cfg.model.name == ModelName.deep_rfm:
        from dnc_cli.rfm import rfm_config

        rfm_config(train_cfg).validate()
    if train_cfg.resume is not None and not (Path(train_cfg.resume) / "checkpoints" / "last.pt").exists():
        raise UsageError(f"resume={train_cfg.resume} holds no checkpoints/last.pt to resume from")
    if "hydra" in cfg:
        ensure_writable_dir(cfg.hydra.run.dir, "hydra.run.dir")
        ensure_writable_dir(cfg.hydra.sweep.dir, "hydra.sweep.dir")
    return train_cfg


def checkpoint_schedule(c: CheckpointConfig, epochs: int) -> set[int]:
    """Epochs to checkpoint (the TPT and the final epoch are added while training)."""
    if c.schedule == Schedule.list:
        return set(c.epochs)
    if c.schedule == Schedule.every:
        return set(range(0, epochs + 1, c.every)) | {epochs}
    # log: ~count log-spaced epochs in [1, epochs], plus initialisation
    return {0, epochs} | {round(epochs ** (i / (c.count - 2))) for i in range(c.count - 1)}


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == OptimizerName.sgd:
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def loss_function(name: str):
    # MSE: mean over N x K entries, as the official code; CE: mean over N
    return torch.nn.functional.mse_loss if name == "mse" else torch.nn.functional.cross_entropy


@torch.no_grad()
def evaluate(model, x, labels, target, loss_fn, batch_size) -> tuple[float, float]:
    was_training = model.training
    model.eval()
    loss_sum, correct = torch.zeros((), dtype=torch.float64, device=x.device), 0
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        loss_sum += loss_fn(out, target[i:i + batch_size], reduction="sum").double()
        correct += (out.argmax(1) == labels[i:i + batch_size]).sum()
    model.train(was_training)
    per_sample = loss_sum.item() / len(x) / (target.shape[1] if target.dim() == 2 else 1)
    return per_sample, int(correct) / len(x)


def versions() -> dict:
    sha = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(dnc_cli.__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "dnc": dnc_cli.__version__,
            "git_sha": sha}


def save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def check_resume_config(run_dir: Path, plain: dict) -> None:
    # through the schema, so that a run written by an older dnc compares by its meaning (standardize: true = pixel)
    saved = to_plain(validate_train(to_object(OmegaConf.load(run_dir / CONFIG_FILE), TrainConfig)))

    def diff(a, b, prefix=""):
        for key in sorted(set(a) | set(b)):
            if prefix == "" and key in RESUMABLE_CHANGES:
                continue
            va, vb = a.get(key), b.get(key)
            if isinstance(va, dict) and isinstance(vb, dict):
                yield from diff(va, vb, f"{prefix}{key}.")
            elif va != vb:
                yield f"{prefix}{key}={vb} (the run has {va})"

    changed = list(diff(saved, plain))
    if changed:
        raise UsageError(f"resume={run_dir}: config differs from the run's: {', '.join(changed)}; "
                         f"only {', '.join(sorted(RESUMABLE_CHANGES - {'resume'}))} may change")


def start_run(cfg: TrainConfig, plain: dict, data, run_dir: Path) -> dict:
    """A fresh run's first files (its config and labels; refused if `run_dir` already holds a run); returns the
    initial summary. Shared by networks and Deep RFMs."""
    if (run_dir / "checkpoints" / "last.pt").exists():
        raise UsageError(f"hydra.run.dir={run_dir} already holds a run; continue it with resume={run_dir}")
    with atomic_path(run_dir / CONFIG_FILE) as tmp:
        tmp.write_text(OmegaConf.to_yaml(plain))
    # which samples were relabelled (random labels), and the labels actually trained on
    save_atomic({"train_labels": data.train.labels.cpu(), "relabelled": data.relabelled,
                 "true_train_labels": data.true_train_labels}, run_dir / "labels.pt")
    return {"status": "running", "model": cfg.model.name.value, "dataset": cfg.dataset.name.value,
            "seed": cfg.seed, "tpt_epoch": None, "versions": versions(), "run_dir": str(run_dir),
            "num_classes": data.num_classes, "n_train": len(data.train.labels), "n_test": len(data.test.labels),
            "n_relabelled": int(data.relabelled.sum())}


def truncate_log(path: Path, last_epoch: int) -> None:
    """Drop log rows written after the resume state (an interruption between log append and last.pt)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= last_epoch]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(kept))


def run(cfg: TrainConfig, run_dir: Path) -> dict:
    """Train with `cfg`, writing the run layout into `run_dir`; returns the summary."""
    run_dir = Path(run_dir)
    if cfg.model.name == ModelName.deep_rfm:
        from dnc_cli.rfm import run_deep_rfm

        return run_deep_rfm(cfg, run_dir)
    device = resolve_device(cfg.device)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.seed).to(device)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(device)
    optimizer = make_optimizer(cfg, model)
    loss_fn = loss_function(cfg.loss.value)
    train_t = targets(data.train.labels, data.num_classes, cfg.loss.value)
    test_t = targets(data.test.labels, data.num_classes, cfg.loss.value)
    batch_rng = torch.Generator().manual_seed(cfg.seed)  # batch order, on the CPU on every device
    plain = to_plain(cfg)
    ckpt_dir, log_path, summary_path = run_dir / "checkpoints", run_dir / "train_log.csv", run_dir / "summary.json"
    schedule = checkpoint_schedule(cfg.checkpoints, cfg.epochs)

    def evaluate_both():
        return (*evaluate(model, data.train.x, data.train.labels, train_t, loss_fn, 1024),
                *evaluate(model, data.test.x, data.test.labels, test_t, loss_fn, 1024))

    if cfg.resume is not None:
        check_resume_config(run_dir, plain)
        state = torch.load(ckpt_dir / "last.pt", map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batch_rng.set_state(state["batch_rng"])
        torch.set_rng_state(state["torch_rng"])
        epoch, tpt_epoch, elapsed0 = state["epoch"], state["tpt_epoch"], state["elapsed_s"]
        summary = read_json(summary_path)
        truncate_log(log_path, epoch)
        log.info("resuming %s at epoch %d", run_dir, epoch)
    else:
        summary = start_run(cfg, plain, data, run_dir)
        epoch, tpt_epoch, elapsed0 = 0, None, 0.0
        with atomic_path(log_path) as tmp:
            tmp.write_text(",".join(LOG_COLUMNS) + "\n")

    start = time.perf_counter()

    def record(epoch, metrics, checkpoint: bool):
        nonlocal summary
        row = (epoch, *metrics, optimizer.param_groups[0]["lr"], elapsed0 + time.perf_counter() - start)
        with open(log_path, "a") as f:
            f.write(",".join(f"{v:.8g}" if isinstance(v, float) else str(v) for v in row) + "\n")
            f.flush()
        if checkpoint:
            save_atomic({"model": model.state_dict(), "epoch": epoch, "config": plain, "layers": model.describe(),
                   "metrics": dict(zip(LOG_COLUMNS[1:5], metrics))}, ckpt_dir / checkpoint_name(epoch))
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
               "tpt_epoch": tpt_epoch, "batch_rng": batch_rng.get_state(), "torch_rng": torch.get_rng_state(),
               "elapsed_s": row[-1]}, ckpt_dir / "last.pt")
        summary |= {"epochs_done": epoch, "tpt_epoch": tpt_epoch, "elapsed_s": round(row[-1], 3),
                    "final": dict(zip(LOG_COLUMNS[1:5], metrics))}
        write_json(summary_path, summary)

    if cfg.resume is None:
        record(0, evaluate_both(), checkpoint=0 in schedule)
    from tqdm import tqdm

    bar = tqdm(total=cfg.epochs, initial=epoch, desc="train", unit="epoch", dynamic_ncols=True,
               disable=not (cfg.progress and sys.stderr.isatty()))
    n = len(data.train.labels)
    try:
        while not _finished(cfg, epoch, tpt_epoch):
            epoch += 1
            if cfg.optimizer.reset_each_epoch:
                optimizer = make_optimizer(cfg, model)  # the official code's per-epoch optimizer
            model.train()
            order = torch.randperm(n, generator=batch_rng).to(device)
            for i in range(0, n, cfg.batch_size):
                idx = order[i:i + cfg.batch_size]
                loss = loss_fn(model(data.train.x[idx]), train_t[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            metrics = evaluate_both()
            if not all(math.isfinite(v) for v in metrics):
                summary |= {"status": "failed", "error": f"non-finite loss at epoch {epoch}"}
                write_json(summary_path, summary)
                raise UsageError(f"training diverged: train loss {metrics[0]} at epoch {epoch}; checkpoints up to "
                                 f"epoch {epoch - 1} are kept in {ckpt_dir}; lower optimizer.lr")
            if tpt_epoch is None and metrics[1] == 1.0:
                tpt_epoch = epoch
                log.info("terminal phase of training reached at epoch %d (100%% train accuracy)", epoch)
            last = _finished(cfg, epoch, tpt_epoch)
            record(epoch, metrics, checkpoint=epoch in schedule or epoch == tpt_epoch or last)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics[0]:.3g}", acc=f"{metrics[1]:.3f}", test_acc=f"{metrics[3]:.3f}")
            log.info("epoch %d train_loss %.4g train_acc %.4f test_loss %.4g test_acc %.4f", epoch, *metrics)
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        write_json(summary_path, summary)
        raise
    finally:
        bar.close()
    summary["status"] = "done"
    write_json(summary_path, summary)
    return summary


def _finished(cfg: TrainConfig, epoch: int, tpt_epoch: int | None) -> bool:
    if epoch >= cfg.epochs:
        return True
    return cfg.epochs_after_tpt is not None and tpt_epoch is not None and epoch >= tpt_epoch + cfg.epochs_after_tpt


def _discard_if_empty(run_dir: Path) -> None:
    """A run that failed before writing anything leaves no folder behind (Hydra creates it before we start)."""
    if (run_dir / CONFIG_FILE).exists():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.absolute().parents:
        if parent == Path.cwd() or any(parent.iterdir()):
            break
        parent.rmdir()


def share_cores(launcher) -> int | None:
    """Parallel sweep jobs on one machine (the joblib launcher's n_jobs) split the cores between them: torch's
    OpenMP threads in several processes oversubscribe the cores (measured here: 3 jobs on 2 cores made an MNIST
    epoch 17x slower than with one thread each). An explicit OMP_NUM_THREADS is left alone."""
    n_jobs = launcher.get("n_jobs") if "n_jobs" in launcher else None
    cores = os.cpu_count() or 1
    if not n_jobs or "OMP_NUM_THREADS" in os.environ:
        return None
    n_jobs = cores + 1 + n_jobs if n_jobs < 0 else n_jobs  # joblib: -1 = one job per core
    if n_jobs <= 1:
        return None
    threads = max(1, cores // n_jobs)
    torch.set_num_threads(threads)
    return threads


@hydra.main(version_base="1.3", config_path="pkg://dnc_cli.conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    share_cores(HydraConfig.get().launcher)
    try:
        summary = run(check(cfg), run_dir)
    except UsageError as exc:
        _discard_if_empty(run_dir)
        fail("train", str(exc))
    except KeyboardInterrupt:
        print(f"dnc train: interrupted; continue with: dnc train resume={run_dir}", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"run dir: {run_dir}  (tpt_epoch={summary.get('tpt_epoch')}, status={summary['status']})")
