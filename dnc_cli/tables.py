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

from dnc_cli.errors import UsageError, need, reading
from dnc_cli.runs import ANALYSIS_DIR, TRAIN_LOG_FILE, read_json, staged_files

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
    (an empty value is NaN). Validated once, here, for every reader (analyze resuming, plot, report, sweeps): a
    table with a row of the wrong shape or type, or a row twice, is refused with the line it is on, so that nothing
    downstream reads a damaged table or makes it worse."""
    hint = f"recompute it with `dnc analyze run_dir={Path(path).parent.parent} force=true`"
    with reading(path, hint):
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    need(not missing, path, f"no column(s) {', '.join(missing)}", hint)
    df = df[COLUMNS].copy()
    epoch, layer = (pd.to_numeric(df[c], errors="coerce") for c in ("epoch", "layer"))
    value = pd.to_numeric(df["value"].replace("", "nan"), errors="coerce")
    bad = (epoch.isna() | (epoch % 1 != 0) | layer.isna() | (layer % 1 != 0) | (df["split"] == "")
           | (df["metric"] == "") | (value.isna() & ~df["value"].str.lower().isin(["", "nan"])))
    if bad.any():
        row = int(bad.to_numpy().argmax())  # the first bad row; line 1 is the header
        need(False, path, f"line {row + 2} is not epoch,split,layer,stage,metric,value with an integer epoch and "
             f"layer and a numeric value: {','.join(df.iloc[row])!r}"[:300], hint)
    df["epoch"], df["layer"], df["value"] = epoch.astype(int), layer.astype(int), value.astype(float)
    repeated = df.duplicated(KEY_COLUMNS)
    need(not repeated.any(), path, f"line {int(repeated.to_numpy().argmax()) + 2} repeats a row's "
         f"{', '.join(KEY_COLUMNS)}", hint)
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
    """A network run's train_log.csv (None without one, or without rows); UsageError when it is damaged."""
    path = Path(run_dir) / TRAIN_LOG_FILE
    if not path.is_file():
        return None
    with reading(path):
        train_log = pd.read_csv(path)
    if not len(train_log) or "epoch" not in train_log.columns:
        return None
    numeric = train_log.apply(pd.to_numeric, errors="coerce")
    need(not (numeric.isna() & train_log.notna()).any().any(), path, "a value that is not a number")
    need(bool((numeric["epoch"] % 1 == 0).all()), path, "an epoch that is not an integer")
    return numeric.astype({"epoch": int})


# ---------------------------------------------------------------------------------------------------- writing
def write_csv(path: Path, df: pd.DataFrame) -> None:
    """A table as dnc writes every CSV; `path` is a temporary file of `staged_files` (dnc_cli/runs.py)."""
    df.to_csv(path, index=False, float_format=CSV_FLOAT_FORMAT)


def as_written(values: pd.Series) -> pd.Series:
    """Values rounded to the CSV's 10 significant digits: the Parquet twin holds the same numbers, and a table
    resumed from the CSV equals one written in a single go, in both files."""
    return values.map(lambda v: float(CSV_FLOAT_FORMAT % v))


def save_table(path: Path, rows: list[dict]) -> pd.DataFrame:
    """metrics.csv (and metrics.parquet with pyarrow) from row dicts, sorted by the key columns, written together
    (dnc_cli/runs.py `staged_files`); returns the table."""
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values(KEY_COLUMNS, kind="stable", ignore_index=True)
    df["value"] = as_written(df["value"].astype(float))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pyarrow = None
    with staged_files() as stage:
        write_csv(stage(path), df)
        if pyarrow is not None:
            df.to_parquet(stage(path.with_suffix(".parquet")), index=False)
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


# ---------------------------------------------------------------------------------------------------- undefined
# why a metric is not a number: NC metrics are ratios of scatters, the NFA a correlation
UNDEFINED_REASONS = {
    "nan": "0/0: features that do not vary (constant or dead: a zeroed layer, dead ReLUs, a tiny initialisation, "
           "all-zero embeddings), or a correlation with a constant matrix",
    "inf": "x/0: class means that coincide (all of them, or two for cdnv) while the samples spread",
}


def undefined_values(df: pd.DataFrame) -> str | None:
    """One line that says which metrics of a table are undefined (NaN, written as an empty cell, or ±inf), at which
    splits and layers, and why; None when every value is a number. A NaN is never silent: the commands log this."""
    values = pd.to_numeric(df["value"], errors="coerce").astype(float)
    parts = []
    for kind, mask in (("nan", values.isna()), ("inf", values.abs() == math.inf)):
        bad = df[mask]
        if bad.empty:
            continue
        layers = sorted({(int(layer), str(stage)) for layer, stage in zip(bad["layer"], bad["stage"])})
        where = ", ".join(f"{layer}" + (f" ({stage})" if stage else "") for layer, stage in layers)
        parts.append(f"{kind} in {', '.join(sorted(set(bad['metric'])))} of layer(s) {where}, split(s) "
                     f"{', '.join(sorted(set(map(str, bad['split']))))} ({UNDEFINED_REASONS[kind]})")
    return "; ".join(parts) or None
