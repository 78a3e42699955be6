"""Small synthetic analysis tables and run folders for the `dnc plot` tests (no training, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

EPOCHS = [0, 10, 20, 50]


N_LAYERS = 3


N_CLASSES = 4


TPT_EPOCH = 20


SVD_STAGES = ["input", "right", "left", "activation", "agop"]


LAYER_METRICS = ["nc1", "nc1_trace", "tr_sw_over_st", "tr_sb_over_st", "cdnv", "nc2", "nc2_gram", "nc4",
                 "ncc_acc"]


STAGE_METRICS = ["nc1", "nc1_trace", "nc2"]


def collapse(epoch: int, layer: int, drop: float = 1.0) -> float:
    """A plausible NC value: falls with training and with depth."""
    return float(np.exp(-(0.5 + epoch / 20) * (layer + 1) / 2) * drop)


def synthetic_metrics() -> pd.DataFrame:
    rows = []
    for epoch in EPOCHS:
        for split in ("train", "test"):
            test_gap = 1.0 if split == "train" else 1.5
            for layer in range(N_LAYERS + 1):
                for metric in LAYER_METRICS:
                    value = collapse(epoch, layer) * test_gap
                    if metric == "tr_sb_over_st":
                        value = 1 / (1 + value)
                    if metric == "tr_sw_over_st":
                        value = value / (1 + value)
                    if metric == "nc4":
                        collapsed = epoch >= TPT_EPOCH and split == "train"
                        value = 0.0 if collapsed else 0.05 / (layer + 1) / test_gap
                    rows.append((epoch, split, layer, "", metric, value))
                if layer >= 1:
                    for stage, drop in zip(SVD_STAGES, [1.0, 0.3, 0.3, 0.25, 0.2], strict=True):
                        value = collapse(epoch, layer - 1, drop)
                        for metric in STAGE_METRICS:
                            rows.append((epoch, split, layer, stage, metric, value))
            rows.append((epoch, split, N_LAYERS, "", "nc3", collapse(epoch, N_LAYERS) * test_gap))
        for layer in range(1, N_LAYERS + 1):
            for alpha, offset in (("0.5", 0.0), ("1", -0.1)):
                correlation = 0.4 + 0.1 * layer + 0.3 * epoch / 50 + offset
                rows.append((epoch, "train", layer, "", f"nfa_corr_{alpha}", correlation))
    metrics = pd.DataFrame(rows, columns=["epoch", "split", "layer", "stage", "metric", "value"])
    metrics["seed"] = 0  # an extra column the plots must ignore
    metrics.loc[3, "value"] = np.nan  # and a NaN they must survive
    return metrics


def synthetic_train_log() -> pd.DataFrame:
    epochs = np.arange(0, 51, 5)
    return pd.DataFrame({
        "epoch": epochs,
        "train_loss": 0.5 * np.exp(-epochs / 10), "train_acc": np.minimum(1.0, 0.2 + epochs / 25),
        "test_loss": 0.6 * np.exp(-epochs / 30), "test_acc": np.minimum(0.8, 0.2 + epochs / 40),
        "lr": 5e-5, "elapsed_s": epochs * 1.5,
    })


def synthetic_gram(n_layers: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(N_CLASSES), 30)
    class_means = rng.normal(size=(N_CLASSES, 16))
    arrays = {"labels": labels}
    for layer in range(n_layers + 1):
        noise = 2.0 / (layer + 1)
        arrays[f"layer_{layer}"] = class_means[labels] + noise * rng.normal(size=(len(labels), 16))
    return arrays


def write_run(run_dir: Path, metrics: pd.DataFrame, summary: dict, train_log: pd.DataFrame | None,
              gram_layers: int, gram_epoch: int) -> Path:
    (run_dir / "analysis").mkdir(parents=True)
    (run_dir / "config_resolved.yaml").write_text("model: {}\n")
    metrics.to_csv(run_dir / "analysis" / "metrics.csv", index=False)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if train_log is not None:
        train_log.to_csv(run_dir / "train_log.csv", index=False)
    for split in ("train", "test"):
        gram_path = run_dir / "analysis" / f"gram_epoch_{gram_epoch:06d}_{split}.npz"
        np.savez(gram_path, **synthetic_gram(gram_layers))
    return run_dir


def make_network_run(run_dir: Path, tpt_epoch: int | None = TPT_EPOCH) -> Path:
    summary = {"status": "completed", "tpt_epoch": tpt_epoch, "model": "mlp"}
    return write_run(run_dir, synthetic_metrics(), summary, synthetic_train_log(), N_LAYERS, EPOCHS[-1])


def synthetic_rfm_metrics(depth: int = 6) -> pd.DataFrame:
    rows = []
    for split in ("train", "test"):
        for layer in range(1, depth + 1):
            level = np.exp(-0.8 * (layer - 1))
            for stage, drop in (("input", 1.0), ("agop", 0.3), ("activation", 0.45)):
                for metric in STAGE_METRICS:
                    rows.append((0, split, layer, stage, metric, level * drop))
    return pd.DataFrame(rows, columns=["epoch", "split", "layer", "stage", "metric", "value"])


def make_rfm_run(run_dir: Path, depth: int = 6) -> Path:
    summary = {"status": "completed", "tpt_epoch": None, "model": "deep_rfm"}
    return write_run(run_dir, synthetic_rfm_metrics(depth), summary, None, depth, 0)
