"""Small synthetic analysis tables and run folders for the `dnc report` tests: NC that collapses (or not) through
training, over depth, at S Vᵀ or the ReLU, NFA correlations, Deep RFM stages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dnc_cli.config import ReportConfig
from dnc_cli.report.run_data import load_run
from dnc_cli.report.verdicts import evaluate_run

EPOCHS = (0, 10, 20, 50)


TPT = 20


DEPTH = 3


CFG = ReportConfig()


def falling(epoch: int, layer: int) -> float:
    """NC1 that falls with training (148x from epoch 0 to 50, 20x after the TPT) and halves at every layer."""
    return math.exp(-epoch / 10) * 0.5 ** layer


def linear_svd(epoch: int, layer: int) -> tuple[float, ...]:
    """input, right, left, activation: most of the layer's drop at S Vᵀ (linear share log 5 / log 6.7 = 0.85)."""
    base = falling(epoch, layer - 1)
    return base, base * 0.2, base * 0.2, base * 0.15


def rising_nfa(epoch: int, layer: int) -> float:
    return 0.3 + 0.6 * epoch / EPOCHS[-1] + 0.01 * layer


def network_metrics(own=falling, svd=linear_svd, nfa=rising_nfa, epochs=EPOCHS, depth=DEPTH) -> pd.DataFrame:
    rows = []
    for epoch in epochs:
        for split in ("train", "test"):
            for layer in range(depth + 1):
                for metric in ("nc1_trace", "nc1", "nc2", "nc2_gram", "nc4", "ncc_acc"):
                    rows.append((epoch, split, layer, "", metric, own(epoch, layer)))
                if layer >= 1 and svd is not None:
                    for stage, value in zip(("input", "right", "left", "activation"), svd(epoch, layer)):
                        for metric in ("nc1_trace", "nc1", "nc2"):
                            rows.append((epoch, split, layer, stage, metric, value))
            rows.append((epoch, split, depth, "", "nc3", own(epoch, depth)))
        for layer in range(1, depth + 1):
            if nfa is not None:
                rows.append((epoch, "train", layer, "", "nfa_corr_0.5", nfa(epoch, layer)))
                rows.append((epoch, "train", layer, "", "nfa_corr_1", nfa(epoch, layer) - 0.1))
    return pd.DataFrame(rows, columns=["epoch", "split", "layer", "stage", "metric", "value"])


def rfm_metrics(agop: float = 0.35, act: float = 0.3, depth: int = 4,
                nc2_falls: tuple[float, float, float] = (100.0, 100.0, 100.0)) -> pd.DataFrame:
    """Deep RFM: layer l's input is act**(l-1); the AGOP step multiplies NC1 (and the Frobenius NC2) by `agop`, the
    whole layer by `act`. The official NC2 (nc2_gram) falls geometrically along each curve (X_l, M^½X_l,
    Φ(M^½X_l)) by `nc2_falls` from layer 1 to layer `depth`."""
    rows = []
    for layer in range(1, depth + 1):
        x = act ** (layer - 1)
        for stage, value, fall in zip(("input", "agop", "activation"), (x, x * agop, x * act), nc2_falls):
            for metric in ("nc1_trace", "nc1", "nc2"):
                rows.append((0, "train", layer, stage, metric, value))
            rows.append((0, "train", layer, stage, "nc2_gram", 0.05 * fall ** (-(layer - 1) / (depth - 1))))
        rows.append((0, "train", layer, "", "kernel_acc", 0.9))
    return pd.DataFrame(rows, columns=["epoch", "split", "layer", "stage", "metric", "value"])


def write_run(run_dir: Path, metrics: pd.DataFrame | None, tpt: int | None = TPT, model: str = "mlp",
              random_fraction: float = 0.0, seed: int = 0) -> Path:
    run_dir.mkdir(parents=True)
    config = {"model": {"name": model, "depth": DEPTH}, "seed": seed,
              "dataset": {"name": "synthetic", "labels": {"random_fraction": random_fraction}}}
    (run_dir / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    summary = {"status": "done", "model": model, "dataset": "synthetic", "seed": seed, "tpt_epoch": tpt,
               "epochs_done": EPOCHS[-1], "n_relabelled": int(200 * random_fraction)}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if model != "deep_rfm":
        epochs = np.arange(1, EPOCHS[-1] + 1)
        train_acc = np.where(epochs >= (tpt or 10 ** 9), 1.0, 0.9)
        pd.DataFrame({"epoch": epochs, "train_loss": 1 / epochs, "train_acc": train_acc, "test_loss": 1.0,
                      "test_acc": 0.8, "lr": 1e-3, "elapsed_s": epochs * 0.1}).to_csv(run_dir / "train_log.csv",
                                                                                      index=False)
    if metrics is not None:
        (run_dir / "analysis").mkdir()
        metrics.to_csv(run_dir / "analysis" / "metrics.csv", index=False)
    return run_dir


def verdicts(run_dir: Path, cfg: ReportConfig = CFG) -> dict[str, str]:
    return {claim.key: claim.verdict for claim in evaluate_run(load_run(run_dir), cfg)}


def claim_of(run_dir: Path, key: str, cfg: ReportConfig = CFG):
    return next(c for c in evaluate_run(load_run(run_dir), cfg) if c.key == key)
