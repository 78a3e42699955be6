"""Training a network (the layer protocol of dnc_cli/models/networks.py) through the terminal phase (TPT) and beyond,
saving the schedule's checkpoints: the `network` kind of `dnc train`.

Resumable: `checkpoints/last.pt` holds model, optimizer and every RNG state after each epoch, so
`dnc train resume=<run_dir>` continues bitwise identically (on CPU) to an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

import torch

from dnc_cli.config import CheckpointConfig, OptimizerName, Schedule, TrainConfig, to_plain
from dnc_cli.data import load_dataset, targets
from dnc_cli.devices import resolve_device
from dnc_cli.errors import UsageError, reading
from dnc_cli.models.networks import build_model
from dnc_cli.runs import (
    CHECKPOINTS_DIR,
    LAST_CHECKPOINT,
    SUMMARY_FILE,
    TRAIN_LOG_FILE,
    append_line,
    atomic_path,
    checkpoint_name,
    load_tensors,
    read_json,
    save_atomic,
    truncate_log,
    write_json,
)
from dnc_cli.train.lifecycle import start_run

log = logging.getLogger("dnc.train")
LOG_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "elapsed_s")


def check(cfg: TrainConfig) -> None:
    """What a network needs beyond config.validate_train."""
    if cfg.model.width is None:
        raise UsageError("model.width=null (as many features as inputs) is for model=deep_rfm; "
                         f"model={cfg.model.name.value} needs a width")


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

# checkpoints/last.pt: what resuming needs
RESUME_STATE = ("model", "optimizer", "epoch", "tpt_epoch", "batch_rng", "torch_rng", "elapsed_s")


def train(cfg: TrainConfig, run_dir: Path) -> dict:
    """Train with `cfg`, writing the run layout into `run_dir`; returns the summary."""
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
    ckpt_dir, log_path, summary_path = run_dir / CHECKPOINTS_DIR, run_dir / TRAIN_LOG_FILE, run_dir / SUMMARY_FILE
    schedule = checkpoint_schedule(cfg.checkpoints, cfg.epochs)

    def evaluate_both():
        return (*evaluate(model, data.train.x, data.train.labels, train_t, loss_fn, 1024),
                *evaluate(model, data.test.x, data.test.labels, test_t, loss_fn, 1024))

    if cfg.resume is not None:
        last = ckpt_dir / LAST_CHECKPOINT
        state = load_tensors(last, device, RESUME_STATE)
        with reading(last):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            batch_rng.set_state(state["batch_rng"])
            torch.set_rng_state(state["torch_rng"])
            epoch, tpt_epoch, elapsed0 = int(state["epoch"]), state["tpt_epoch"], float(state["elapsed_s"])
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
        append_line(log_path, ",".join(f"{v:.8g}" if isinstance(v, float) else str(v) for v in row))
        if checkpoint:
            save_atomic({"model": model.state_dict(), "epoch": epoch, "config": plain, "layers": model.describe(),
                   "metrics": dict(zip(LOG_COLUMNS[1:5], metrics))}, ckpt_dir / checkpoint_name(epoch))
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "tpt_epoch": tpt_epoch, "batch_rng": batch_rng.get_state(), "torch_rng": torch.get_rng_state(),
                     "elapsed_s": row[-1]}, ckpt_dir / LAST_CHECKPOINT)  # the keys of RESUME_STATE
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
