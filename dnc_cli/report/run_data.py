"""One run's tables as the claims read them (`RunData`): its metrics table, summary, config and train log."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from dnc_cli.errors import UsageError, need, reading
from dnc_cli.guards import load_omegaconf
from dnc_cli.runs import CONFIG_FILE, read_summary, run_kind
from dnc_cli.tables import KEY_COLUMNS, read_run_metrics, read_train_log


@dataclass
class RunData:
    """One run's tables; `value` looks a number up by split, epoch, layer, stage and metric (nan if absent)."""

    path: Path
    metrics: pd.DataFrame
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    train_log: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        grouped = self.metrics.groupby(KEY_COLUMNS, sort=False)["value"].mean()
        self._lookup = dict(zip(grouped.index, grouped.to_numpy(dtype=float)))

    def value(self, split: str, epoch: int, layer: int, stage: str, metric: str) -> float:
        return float(self._lookup.get((epoch, split, layer, stage, metric), math.nan))

    def rows(self, split: str | None = None, stage: str | None = None, metric: str | None = None) -> pd.DataFrame:
        df = self.metrics
        for column, wanted in (("split", split), ("stage", stage), ("metric", metric)):
            if wanted is not None:
                df = df[df[column] == wanted]
        return df[np.isfinite(df["value"].to_numpy(dtype=float))]

    @property
    def model(self) -> str:
        return str(self.summary.get("model") or get(self.config, "model.name") or "unknown")

    @property
    def kind(self) -> str:
        return run_kind(self.summary, self.config, self.metrics)

    @property
    def tpt_epoch(self) -> int | None:
        tpt = self.summary.get("tpt_epoch")
        return None if tpt is None or (isinstance(tpt, float) and math.isnan(tpt)) else int(tpt)

    @property
    def random_fraction(self) -> float:
        value = get(self.config, "dataset.labels.random_fraction")
        return float(value) if value is not None else 0.0

    @property
    def n_relabelled(self) -> int:
        return int(self.summary.get("n_relabelled") or 0)

    @property
    def random_labels(self) -> bool:
        return self.n_relabelled > 0 or self.random_fraction > 0


def get(config: dict, dotted: str):
    """A dotted key of a plain config dict, or None."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def load_run(run_dir: Path, until_epoch: int | None = None) -> RunData:
    """A run's tables; UsageError when it has no analysis yet. `until_epoch`: the run as it stood at that epoch
    (later checkpoints, log rows and a later TPT left out)."""
    run_dir = Path(run_dir)
    metrics, summary, train_log = read_run_metrics(run_dir), read_summary(run_dir), read_train_log(run_dir)
    config = {}
    if (run_dir / CONFIG_FILE).is_file():
        with reading(run_dir / CONFIG_FILE):
            config = OmegaConf.to_container(load_omegaconf(run_dir / CONFIG_FILE), resolve=False) or {}
        need(isinstance(config, dict), run_dir / CONFIG_FILE, "a YAML mapping expected")
    if until_epoch is not None:
        metrics = metrics[metrics["epoch"] <= until_epoch]
        train_log = None if train_log is None else train_log[train_log["epoch"] <= until_epoch]
        if (summary.get("tpt_epoch") or 0) > until_epoch:
            summary = summary | {"tpt_epoch": None}
        if metrics.empty:
            raise UsageError(f"until_epoch={until_epoch}: {run_dir} has no analysed checkpoint at or before it")
    return RunData(run_dir, metrics, summary, config, train_log)
