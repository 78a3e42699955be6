"""The run layout `dnc measure` writes into out_dir, the one `dnc plot` and `dnc report` read (dnc_cli/runs.py,
dnc_cli/tables.py):

    config_resolved.yaml, summary.json          what was measured (summary.json: "command": "measure")
    analysis/metrics.csv (+ .parquet)           the tidy table; the rows of other epochs are kept when out_dir held a
                                                measurement of the same model, data, layers and options (epoch=N
                                                adds a checkpoint), else the table is replaced
    analysis/layers.csv                         table layer l -> module name, type, output shape, features m, ...
    analysis/nc_table.md                        the readable digest, with the layer legend
    analysis/gram_epoch_<epoch>_train.npz       a class-stratified feature sample for `dnc plot`'s Gram figure
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from dnc_cli.config import to_plain
from dnc_cli.errors import need, reading
from dnc_cli.guards import load_omegaconf, require_no_link_out
from dnc_cli.measure.inputs import TRAIN_SPLIT
from dnc_cli.measure.layers import LINEAR_STAGES
from dnc_cli.runs import (
    ANALYSIS_DIR,
    CONFIG_FILE,
    MEASURE_COMMAND,
    SUMMARY_FILE,
    gram_file_name,
    is_measure_run,
    staged_files,
    write_json,
)
from dnc_cli.tables import NC_TABLE_FILE, markdown_table, read_metrics, run_metrics_path, save_table, write_csv

log = logging.getLogger("dnc.measure")
LAYERS_FILE = "layers.csv"
# MeasureConfig keys that may differ between the epochs of one table: the checkpoint measured, and where and how
NOT_COMPARED = ("epoch", "weights", "features", "out_dir", "device", "batch_size", "progress", "distributed")
NC_COLUMNS = ("nc1", "nc1_trace", "nc2", "nc3", "nc4", "ncc_acc")  # nc_table.md's columns, then the NFA's


def write_outputs(out_dir: Path, mcfg, measured, facts: dict) -> dict:
    """Everything above into out_dir; returns the summary."""
    analysis = out_dir / ANALYSIS_DIR
    require_no_link_out(out_dir, [ANALYSIS_DIR, CONFIG_FILE, SUMMARY_FILE])
    layers = pd.DataFrame([{"layer": i.layer, "module": i.module, "type": i.type,
                            "shape": "x".join(map(str, i.shape)), "features": i.features,
                            "activation": i.activation, "agop": i.agop, "agop_method": i.agop_method,
                            "nc3_stages": i.nc3} for i in measured.layers])
    kept = other_epochs(out_dir, mcfg)
    if not kept:
        for stale in analysis.glob("gram_epoch_*.npz"):  # runs.gram_file_name's of another measurement
            stale.unlink()
    rows = kept + measured.table.drop(columns="module").assign(epoch=mcfg.epoch).to_dict("records")
    summary = {"command": MEASURE_COMMAND, "status": "done", **facts, "tpt_epoch": None,
               "epochs": sorted({int(r["epoch"]) for r in rows}), "splits": measured.split_sizes,
               "layers": {str(i.layer): i.module for i in measured.layers}, "torch": torch.__version__}
    with staged_files() as stage:  # every file, or none (dnc_cli/runs.py)
        stage(out_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(to_plain(mcfg)))
        table = save_table(run_metrics_path(out_dir), rows)
        write_csv(stage(analysis / LAYERS_FILE), layers)
        stage(analysis / NC_TABLE_FILE).write_text(nc_markdown(table, measured.layers, facts))
        if measured.gram:
            with open(stage(analysis / gram_file_name(mcfg.epoch, TRAIN_SPLIT)), "wb") as f:
                np.savez_compressed(f, **measured.gram)
    write_json(out_dir / SUMMARY_FILE, summary)  # last: a folder with its summary is complete
    return summary


def other_epochs(out_dir: Path, mcfg) -> list[dict]:
    """The rows of epochs other than mcfg.epoch in out_dir's table, when out_dir holds a measurement whose config
    equals mcfg but for NOT_COMPARED; else none (with a warning when a table is replaced)."""
    path = run_metrics_path(out_dir)
    if not (path.is_file() and is_measure_run(out_dir) and (out_dir / CONFIG_FILE).is_file()):
        return []
    with reading(out_dir / CONFIG_FILE):
        before = OmegaConf.to_container(load_omegaconf(out_dir / CONFIG_FILE), resolve=False) or {}
        need(isinstance(before, dict), out_dir / CONFIG_FILE, "a YAML mapping expected")
    differing = sorted(key for key, value in to_plain(mcfg).items()
                       if key not in NOT_COMPARED and before.get(key) != value)
    if differing:
        log.warning("out_dir=%s held a measurement with other %s; its table is replaced", out_dir,
                    ", ".join(differing))
        return []
    table = read_metrics(path)
    return table[table["epoch"] != mcfg.epoch].to_dict("records")


def nc_markdown(table: pd.DataFrame, layers, facts: dict) -> str:
    """nc_table.md: per split, every layer's NC metrics (and NFA) at the last epoch; the SVD stages' NC1."""
    final = int(table["epoch"].max())
    table = table[table["epoch"] == final]
    modules = {info.layer: info.module for info in layers}
    what = facts.get("features") or facts.get("model")
    lines = [f"# Neural collapse of {what} (dnc measure, epoch {final})", ""]
    nfa = sorted(m for m in set(table["metric"]) if m.startswith("nfa_corr"))
    for split in sorted(set(table["split"]), key=lambda s: (s != TRAIN_SPLIT, s)):
        own = table[(table["split"] == split) & (table["stage"] == "")]
        columns = [m for m in (*NC_COLUMNS, *nfa) if m in set(own["metric"])]
        if columns:
            frame = own.pivot_table(index="layer", columns="metric", values="value").reindex(columns=columns)
            lines += [f"Split {split}: each layer's output (stage ''):", "", _with_modules(frame, modules), ""]
        stages = table[(table["split"] == split) & table["stage"].isin(LINEAR_STAGES)
                       & (table["metric"] == "nc1_trace")]
        if not stages.empty:
            frame = stages.pivot_table(index="layer", columns="stage", values="value").reindex(
                columns=[s for s in LINEAR_STAGES if s in set(stages["stage"])])
            lines += [f"Split {split}: NC1 = tr Σ_W / tr Σ_B along W = U S Vᵀ (input → right S Vᵀh → left Wh → "
                      "activation; agop = AGOP^½ h):", "", _with_modules(frame, modules), ""]
    return "\n".join(lines)


def _with_modules(frame: pd.DataFrame, modules: dict) -> str:
    """A layer-indexed frame of numbers as a markdown table with the module's name beside each layer."""
    body = [[str(layer), f"`{modules.get(layer, '')}`"] + ["" if math.isnan(v) else f"{v:.4g}" for v in row]
            for layer, row in zip(frame.index, frame.to_numpy())]
    return markdown_table(["layer", "module", *map(str, frame.columns)], body)
