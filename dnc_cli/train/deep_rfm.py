"""Building a Deep RFM (dnc_cli/models/deep_rfm.py) layer by layer: the `deep_rfm` kind of `dnc train`.

The run layout is a network's: config, labels, summary.json; rfm_log.csv instead of train_log.csv; the single
checkpoint checkpoints/epoch_000000.pt holds every layer's record, and checkpoints/last.pt the layers fitted so
far (written after every layer), from which `dnc train resume=<run_dir>` continues.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from dnc_cli.config import TrainConfig, to_plain
from dnc_cli.data import load_dataset
from dnc_cli.devices import resolve_device
from dnc_cli.errors import reading
from dnc_cli.metrics.collapse import nc_of
from dnc_cli.models.deep_rfm import RFMLayer, fit_deep_rfm, memory_check, validate_deep_rfm
from dnc_cli.runs import (
    CHECKPOINTS_DIR,
    LAST_CHECKPOINT,
    RFM_LOG_FILE,
    SUMMARY_FILE,
    append_line,
    checkpoint_path,
    load_tensors,
    read_json,
    save_atomic,
    truncate_log,
    write_json,
    write_text,
)
from dnc_cli.train.lifecycle import start_run

log = logging.getLogger("dnc.deep_rfm")


def check(cfg: TrainConfig) -> None:
    """What a Deep RFM needs beyond config.validate_train."""
    validate_deep_rfm(cfg.model)


def train(cfg: TrainConfig, run_dir: Path) -> dict:
    """Fit the Deep RFM of `cfg`, writing the run layout into `run_dir`; returns the summary."""
    from tqdm import tqdm

    validate_deep_rfm(cfg.model)
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.seed)
    n, d = len(data.train.labels), data.train.x[0].numel()
    memory_check(n, max(d, cfg.model.width or d), device)
    ckpt, last = checkpoint_path(run_dir, 0), run_dir / CHECKPOINTS_DIR / LAST_CHECKPOINT
    plain, log_path, summary_path = to_plain(cfg), run_dir / RFM_LOG_FILE, run_dir / SUMMARY_FILE
    if cfg.resume is not None:  # continue after the layers in last.pt (written after every layer)
        with reading(last):
            done = [RFMLayer.from_dict(r) for r in load_tensors(last, "cpu", ("rfm_layers",))["rfm_layers"]]
        summary = read_json(summary_path) | {"status": "running"}
        truncate_log(log_path, len(done))
        log.info("resuming %s after layer %d", run_dir, len(done))
    else:
        summary = start_run(cfg, plain, data, run_dir)
        write_text(log_path, "layer,train_acc,test_acc,nc1_trace,elapsed_s\n")
        done = []
    write_json(summary_path, summary)
    fitted = list(done)
    bar = tqdm(total=cfg.model.depth, initial=len(done), desc="deep_rfm", unit="layer",
               disable=not (cfg.progress and sys.stderr.isatty()))
    labels = data.train.labels.to(device)

    def on_layer(layer, record, elapsed, x_layer):
        nc1 = nc_of(x_layer, labels, data.num_classes)["nc1_trace"]
        append_line(log_path, f"{layer},{record.train_acc:.6g},{record.test_acc:.6g},{nc1:.6g},{elapsed:.3f}")
        log.info("layer %d: kernel train_acc %.4f test_acc %.4f, NC1 of X_l %.3g (%.1f s)", layer, record.train_acc,
                 record.test_acc, nc1, elapsed)
        fitted.append(record)
        save_atomic({"rfm_layers": [r.as_dict() for r in fitted]}, last)
        bar.update(1)

    try:
        layers = fit_deep_rfm(data.train.x, data.train.labels, data.test.x, data.test.labels, data.num_classes,
                              cfg.model, cfg.seed, on_layer=on_layer, device=device, done=done)
    except KeyboardInterrupt:
        write_json(summary_path, summary | {"status": "interrupted"})
        raise
    finally:
        bar.close()
    save_atomic({"rfm_layers": [layer.as_dict() for layer in layers], "epoch": 0, "config": plain}, ckpt)
    summary |= {"status": "done", "epochs_done": 0,
                "final": {"train_acc": layers[-1].train_acc, "test_acc": layers[-1].test_acc}}
    write_json(summary_path, summary)
    return summary
