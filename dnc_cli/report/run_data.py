"""One run's tables as the claims read them (`RunData`): its metrics table, summary, config and train log."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

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


def load_run(run_dir: Path) -> RunData:
    """A run's tables; UsageError when it has no analysis yet."""
    run_dir = Path(run_dir)
    metrics = read_run_metrics(run_dir)
    config = {}
    if (run_dir / CONFIG_FILE).is_file():
        config = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE), resolve=False) or {}
    return RunData(run_dir, metrics, read_summary(run_dir), config, read_train_log(run_dir))
