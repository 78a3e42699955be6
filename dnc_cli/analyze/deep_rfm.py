"""Analysing a Deep RFM run (the `deep_rfm` kind of `dnc analyze`): the recorded layers are replayed on each split
(dnc_cli/models/deep_rfm.py `deep_rfm_representations`), and the neural-collapse metrics of every layer's three
stages, input X_l, agop M_l^½ X_l and activation Φ(M_l^½ X_l) (PAPER.md, "Deep RFM"), become the metrics table's
rows, with epoch 0 (the single checkpoint) and layer = RFM layer; stage '' holds each layer's kernel accuracy.

Under torchrun the replay is not sharded: every rank replays the whole split (one GEMM per layer and stage; the N x N
kernels that make a Deep RFM expensive are training's), so the ranks stay in step without a collective, and rank 0
writes the files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dnc_cli.config import AnalyzeConfig, TrainConfig
from dnc_cli.data import load_dataset
from dnc_cli.distributed import is_writer
from dnc_cli.errors import reading
from dnc_cli.metrics.collapse import nc_of
from dnc_cli.models.deep_rfm import RFMLayer, deep_rfm_representations
from dnc_cli.runs import (
    ANALYSIS_DIR,
    LABELS_FILE,
    analysable_epochs,
    atomic_path,
    checkpoint_path,
    gram_file_name,
    load_tensors,
    read_train_labels,
    write_json,
    write_text,
)
from dnc_cli.tables import (
    COLUMNS,
    METRICS_FILE,
    NC_TABLE_FILE,
    SETTINGS_FILE,
    check_settings,
    markdown_frame,
    save_table,
    undefined_values,
)

log = logging.getLogger("dnc.analyze")


def analyze_run(run_dir: Path, cfg: TrainConfig, acfg: AnalyzeConfig, device: torch.device) -> list[str]:
    """Analyse the run's Deep RFM unless its table exists (force=true recomputes); returns the problems met."""
    out_dir = run_dir / ANALYSIS_DIR
    settings = check_settings(out_dir, acfg, precision=False)  # Deep RFM features come from its float32 pipeline
    if acfg.precision.value != "float32":
        log.warning("%s: precision=%s applies to networks; a Deep RFM is analysed in float32", run_dir,
                    acfg.precision.value)
    if (out_dir / METRICS_FILE).exists() and not acfg.force:
        return []
    (epoch,) = analysable_epochs(run_dir, [0])  # a Deep RFM run has one checkpoint: every layer, at "epoch" 0
    path = checkpoint_path(run_dir, epoch)
    with reading(path):
        layers = [RFMLayer.from_dict(record) for record in load_tensors(path, "cpu", ("rfm_layers",))["rfm_layers"]]
    data = load_dataset(cfg.dataset, cfg.seed)
    if (run_dir / LABELS_FILE).exists():
        data.train.labels = read_train_labels(run_dir, data.num_classes, len(data.train.labels))
    options = {"global_mean": acfg.nc1.global_mean.value, "official_scaling": acfg.nc1.official_scaling}
    rows, gram = [], {}
    for split in acfg.splits:
        x, labels = getattr(data, split).x, getattr(data, split).labels.to(device)
        sample = torch.cat([(labels == k).nonzero().squeeze(1)[:acfg.gram_samples_per_class]
                            for k in range(data.num_classes)])
        for layer, reps in deep_rfm_representations(x, layers, cfg.model, cfg.seed, device):
            for stage, features in reps.items():
                rows += [(0, split, layer, stage, name, value)
                         for name, value in nc_of(features, labels, data.num_classes, **options).items()]
            record = layers[layer - 1]
            rows.append((0, split, layer, "", "kernel_acc", record.train_acc if split == "train" else record.test_acc))
            if split == "train":
                gram[f"layer_{layer}"] = reps["input"][sample].cpu().numpy()
        if split == "train":
            gram["labels"] = labels[sample].cpu().numpy()
    if not is_writer():
        return []
    df = save_table(out_dir / METRICS_FILE, [dict(zip(COLUMNS, row)) for row in rows])
    undefined = undefined_values(df)
    if undefined:  # a NaN is never silent (issue #21), for a Deep RFM as for a network
        log.warning("%s: undefined values: %s", out_dir / METRICS_FILE, undefined)
    write_json(out_dir / SETTINGS_FILE, settings)
    if gram:
        with atomic_path(out_dir / gram_file_name(0, "train")) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **gram)
    write_nc_table(out_dir / NC_TABLE_FILE, df, "train" if "train" in acfg.splits else acfg.splits[0])
    return []


def write_nc_table(path: Path, df: pd.DataFrame, split: str) -> None:
    """nc_table.md: per layer, nc1_trace and nc2 of every stage and the kernel accuracies."""
    train = df[(df.split == split) & df.metric.isin(["nc1_trace", "nc2"]) & (df.stage != "")]
    table = train.pivot_table(index="layer", columns=["metric", "stage"], values="value")
    table.columns = [f"{metric} ({stage})" for metric, stage in table.columns]
    accuracy = df[df.metric == "kernel_acc"].pivot_table(index="layer", columns="split", values="value")
    table = pd.concat([table, accuracy.add_prefix("kernel_acc ")], axis=1)
    write_text(path, f"# Deep RFM collapse by layer ({split} split)\n\n{markdown_frame(table, 'layer')}\n")
