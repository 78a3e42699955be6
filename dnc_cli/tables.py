"""The metrics-table contract: `<run_dir>/analysis/metrics.csv`, written by `dnc analyze`, read by everything after.

One row per number, columns `epoch, split, layer, stage, metric, value` (README, "dnc analyze"):
- `layer` 0 is the input of the analysed layers; l = 1..L is hidden layer (or Deep RFM layer) l;
- `stage` '' is a layer's own representation h_l; the SVD stages of a network layer are input, right, left,
  activation and agop (PAPER.md, "SVD-decomposed per-layer NC1"), a Deep RFM layer's input, agop and activation
  (PAPER.md, "Deep RFM");
- `metric` names the number (nc1, nc1_trace, nc2, ..., `nfa_metric` for the NFA correlations).

Beside it: metrics.parquet (the same table, when pyarrow is installed), settings.json (the options that change
values, so that a resumed table never mixes them) and nc_table.md (a readable digest). Imports no torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dnc_cli.errors import UsageError
from dnc_cli.runs import ANALYSIS_DIR, TRAIN_LOG_FILE, atomic_path, read_json

COLUMNS = ["epoch", "split", "layer", "stage", "metric", "value"]
KEY_COLUMNS = COLUMNS[:5]  # a row's identity: no two rows share them
METRICS_FILE = "metrics.csv"
NC_TABLE_FILE = "nc_table.md"
SETTINGS_FILE = "settings.json"
# the stages of a network layer's SVD-decomposed NC1, along W_l = U S Vᵀ: h_{l-1}, S Vᵀ h_{l-1}, W_l h_{l-1}, h_l
# (and `agop`, AGOP_l^½ h_{l-1}), and of a Deep RFM layer: X_l, M_l^½ X_l, Φ(M_l^½ X_l)
SVD_STAGES = ("input", "right", "left", "activation")
RFM_STAGES = ("input", "agop", "activation")
CSV_FLOAT_FORMAT = "%.10g"  # every table dnc writes keeps 10 significant digits
# a sweep's tables in <sweep>/analysis/ (dnc_cli/analyze/sweeps.py; README, "Sweep tables and figures")
RUNS_TABLE, SWEEP_METRICS_TABLE, SWEEP_TABLE_MD = "runs.csv", METRICS_FILE, "sweep_table.md"
AGGREGATED_TABLE, AGGREGATED_METRICS_TABLE = "aggregated.csv", "aggregated_metrics.csv"


def nfa_metric(form: str, power: float) -> str:
    """The metric name of an NFA correlation: nfa_corr_<α> for the paper's form, nfa_<form>_corr_<α> otherwise."""
    return f"nfa_corr_{power:g}" if form == "standard" else f"nfa_{form}_corr_{power:g}"


# ---------------------------------------------------------------------------------------------------- reading
def read_metrics(path: Path) -> pd.DataFrame:
    """A metrics table with its types: str split/stage/metric ('' kept, not NaN), int epoch/layer, float value
    (an empty or unparsable value is NaN)."""
    df = pd.read_csv(path, dtype={"stage": str, "split": str, "metric": str}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UsageError(f"{path} lacks column(s) {', '.join(missing)}; rerun `dnc analyze force=true`")
    df = df[COLUMNS].copy()
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["epoch"] = df["epoch"].astype(int)
    df["layer"] = df["layer"].astype(int)
    return df


def run_metrics_path(run_dir: Path) -> Path:
    return Path(run_dir) / ANALYSIS_DIR / METRICS_FILE


def read_run_metrics(run_dir: Path) -> pd.DataFrame:
    """A run's metrics table; UsageError when the run has no analysis yet."""
    path = run_metrics_path(run_dir)
    if not path.is_file():
        raise UsageError(f"no analysis in {run_dir} (no analysis/metrics.csv): run `dnc analyze run_dir={run_dir}` "
                         "first")
    return read_metrics(path)


def read_train_log(run_dir: Path) -> pd.DataFrame | None:
    """A network run's train_log.csv (None without one, or without rows)."""
    path = Path(run_dir) / TRAIN_LOG_FILE
    if not path.is_file():
        return None
    train_log = pd.read_csv(path)
    return train_log if len(train_log) and "epoch" in train_log.columns else None


# ---------------------------------------------------------------------------------------------------- writing
def write_csv(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=CSV_FLOAT_FORMAT)


def save_table(path: Path, rows: list[dict]) -> pd.DataFrame:
    """metrics.csv (and metrics.parquet with pyarrow) from row dicts, sorted by the key columns; returns the table."""
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values(KEY_COLUMNS, kind="stable", ignore_index=True)
    write_csv(path, df)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return df
    with atomic_path(path.with_suffix(".parquet")) as tmp:
        df.to_parquet(tmp, index=False)
    return df


def check_settings(out_dir: Path, acfg, precision: bool) -> dict:
    """The options that change metric values (`precision` too when the run's kind honours it), as recorded in
    <run>/analysis/settings.json; raises when the table there was computed with other values (resuming would mix
    them) unless force=true recomputes it."""
    settings = {"nc1.global_mean": acfg.nc1.global_mean.value, "nc1.official_scaling": acfg.nc1.official_scaling}
    if precision:
        settings["precision"] = acfg.precision.value
    path = out_dir / SETTINGS_FILE
    recorded = read_json(path) if path.exists() and (out_dir / METRICS_FILE).exists() and not acfg.force else {}
    for key, value in settings.items():
        if key in recorded and recorded[key] != value:
            raise UsageError(f"{out_dir} was analysed with {key}={recorded[key]}, not {value}; add force=true to "
                             f"recompute it with {key}={value}")
    return settings


# ---------------------------------------------------------------------------------------------------- markdown
def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table of already formatted cells (nc_table.md, sweep_table.md, report.md)."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def markdown_frame(table: pd.DataFrame, index_name: str) -> str:
    """A DataFrame of numbers as a markdown table: 4 significant digits, NaN as an empty cell."""
    body = [[str(i)] + ["" if math.isnan(v) else f"{v:.4g}" for v in row]
            for i, row in zip(table.index, table.to_numpy())]
    return markdown_table([index_name, *map(str, table.columns)], body)
