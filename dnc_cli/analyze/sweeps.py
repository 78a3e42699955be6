"""Sweeps: the runs of one Hydra multirun (`dnc train -m ...`), analysed and tabulated together.

A sweep is a folder holding Hydra's `multirun.yaml` (written at the top of every `dnc train -m` sweep) or, without
one, any folder holding several runs (dnc_cli/runs.py `find_sweeps`). What each run varied comes from
`<run>/.hydra/overrides.yaml`, Hydra's record of the job's overrides: a key is *swept* when its value differs between
runs or when multirun.yaml sweeps it. `seed` is what runs are averaged over; every other swept key defines a
combination.

`dnc analyze run_dir=<sweep>` writes, after the per-run analyses, into `<sweep>/analysis/`:

    runs.csv                one row per run: run folder, swept values, status, TPT, final train/test metrics and
                            the final NC metrics of the last hidden layer; plus one row per job of multirun.yaml
                            that has no run folder (status `missing`: not started, or failed before writing one)
    metrics.csv             every run's analysis/metrics.csv, with `run` and the swept values as leading columns
    aggregated.csv          per combination of the non-seed swept values: mean, std and count over seeds of
                            runs.csv's numbers
    aggregated_metrics.csv  per combination, epoch, split, layer, stage and metric: mean, std (ddof 1) and n over
                            seeds, plus n_runs (the runs of the combination); `dnc plot` draws its bands from it
    sweep_table.md          aggregated.csv as a readable table, and the runs that are not done

Failed, interrupted, running and missing runs are analysed as far as they got and listed, never dropped.

Imports neither torch nor matplotlib.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pandas as pd

from dnc_cli.config import RUN_ONLY_KEYS, SEED_KEY
from dnc_cli.errors import UsageError, need, reading
from dnc_cli.guards import find_named, load_omegaconf, load_yaml, require_no_link_out
from dnc_cli.runs import ANALYSIS_DIR, CONFIG_FILE, MULTIRUN_FILE, OVERRIDES_FILE, read_summary, staged_files
from dnc_cli.tables import (
    AGGREGATED_METRICS_TABLE,
    AGGREGATED_TABLE,
    COLUMNS,
    KEY_COLUMNS,
    RUNS_TABLE,
    SWEEP_METRICS_TABLE,
    SWEEP_TABLE_MD,
    markdown_table,
    read_metrics,
    run_metrics_path,
    write_csv,
)

NC_METRICS = ("nc1_trace", "nc1", "nc2", "nc3", "nc4", "ncc_acc")
FINAL_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc")
SUMMARY_NUMBERS = ("tpt_epoch", "epochs_done", *FINAL_COLUMNS, *NC_METRICS)
# stages that stand for a layer's own representation, by preference (Deep RFM tables have no stage "")
OWN_STAGES = ("", "activation", "agop", "input")


# ---------------------------------------------------------------------------------------------------- overrides
def parse_override(line: str) -> tuple[str, str] | None:
    """`+a.b=v` -> (a.b, v); deletions (`~key`) and malformed lines -> None."""
    line = str(line).strip()
    if line.startswith("~") or "=" not in line:
        return None
    key, value = line.split("=", 1)
    return key.lstrip("+"), value


def read_overrides(run_dir: Path) -> dict[str, str]:
    path = Path(run_dir) / OVERRIDES_FILE
    if not path.is_file():
        return {}
    with reading(path):
        items = load_yaml(path) or []
        need(isinstance(items, list) and all(isinstance(line, str) for line in items), path,
             "a YAML list of overrides expected")
    return dict(kv for kv in (parse_override(line) for line in items) if kv is not None)


def _multirun_overrides(sweep_dir: Path) -> list[str] | None:
    """The sweep's overrides as the basic sweeper expands them: hydra.sweeper.params first, then the command line."""
    path = Path(sweep_dir) / MULTIRUN_FILE
    if not path.is_file():
        return None
    with reading(path):
        hydra = (load_yaml(path) or {}).get("hydra", {})
        params = (hydra.get("sweeper") or {}).get("params") or {}
        return [f"{k}={v}" for k, v in params.items()] + list((hydra.get("overrides") or {}).get("task") or [])


def expected_jobs(sweep_dir: Path) -> list[dict[str, str]] | None:
    """Every job of multirun.yaml as {key: value} of its swept keys; None when it cannot be expanded here."""
    lines = _multirun_overrides(sweep_dir)
    if lines is None:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(lines)
        swept = {}
        for override in parsed:  # a later override of a key replaces an earlier one, as in Hydra's sweeper
            key = override.get_key_element().lstrip("+")
            swept.pop(key, None)
            if override.is_sweep_override():
                swept[key] = list(override.sweep_string_iterator())
    except Exception:  # a sweep syntax we do not expand (e.g. a custom sweeper): no missing-job detection
        return None
    keys = [k for k in swept if k not in RUN_ONLY_KEYS]
    return [dict(zip(keys, values)) for values in itertools.product(*(swept[k] for k in keys))]


def swept_keys(sweep_dir: Path, overrides: list[dict[str, str]]) -> list[str]:
    """Keys swept by multirun.yaml, then keys whose values differ between runs; `seed` first."""
    declared = []
    for job in expected_jobs(sweep_dir) or []:
        declared += [k for k in job if k not in declared]
    every = sorted({k for o in overrides for k in o})
    varying = [k for k in every if len({o.get(k) for o in overrides}) > 1]
    keys = [k for k in dict.fromkeys(declared + varying) if k not in RUN_ONLY_KEYS]
    return sorted(keys, key=lambda k: k != SEED_KEY)


def typed(value):
    """An override's value as a number where it is one (so 0.25 sorts before 1.0 and averages group properly)."""
    if value is None or isinstance(value, int | float):
        return value
    text = str(value)
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"null": None, "true": True, "false": False}.get(text.lower(), text)


def _value_from_config(run_dir: Path, key: str):
    """A swept key a run did not override: its value in the run's resolved config (groups by their name)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    from omegaconf import DictConfig, OmegaConf

    with reading(path):
        value = OmegaConf.select(load_omegaconf(path), key, default=None)
    if isinstance(value, DictConfig):
        value = value.get("name")
    return value


# ---------------------------------------------------------------------------------------------------- tables
def _read_run_metrics(run_dir: Path) -> pd.DataFrame | None:
    path = run_metrics_path(run_dir)
    return read_metrics(path) if path.is_file() else None


def final_nc(metrics) -> dict:
    """NC metrics of the last hidden layer (train split) at the last analysed epoch."""
    if metrics is None or metrics.empty:
        return {}
    train = metrics[metrics["split"] == "train"]
    if train.empty:
        return {}
    last = train[train["epoch"] == train["epoch"].max()]
    for stage in OWN_STAGES:  # the first stage with NC metrics (Deep RFM's stage "" holds only kernel_acc)
        rows = last[(last["stage"] == stage) & last["metric"].isin(NC_METRICS)]
        if not rows.empty:
            break
    else:
        return {}
    layer = int(rows["layer"].max())
    rows = rows[rows["layer"] == layer]
    values = rows.groupby("metric")["value"].mean()
    out = {"analysed_epoch": int(last["epoch"].max()), "nc_layer": layer}
    out |= {m: float(values[m]) for m in NC_METRICS if m in values.index}
    if stage:
        out["nc_stage"] = stage
    return out


def _one_type(columns: list[dict], keys: list[str]) -> None:
    """One type per swept column so that it sorts and groups: numbers, or else strings (None stays None)."""
    for key in keys:
        kinds = {isinstance(c.get(key), str) for c in columns if c.get(key) is not None}
        if len(kinds) > 1:
            for c in columns:
                c[key] = None if c.get(key) is None else str(c[key])


def collect(sweep_dir: Path, runs: list[Path], errors: dict[Path, str] | None = None):
    """runs.csv's rows, the combined metrics table and the swept keys, for the runs below `sweep_dir`."""
    sweep_dir = Path(sweep_dir)
    errors = errors or {}
    runs = [r for r in runs if Path(r).is_relative_to(sweep_dir)]
    # job folders of the sweep that never wrote a config (failed while starting, or starting now)
    stubs = [job for job in find_named(sweep_dir, str(OVERRIDES_FILE))
             if not (job / CONFIG_FILE).is_file() and job != sweep_dir]
    folders = sorted(set(runs) | set(stubs))
    overrides = [read_overrides(r) for r in folders]
    keys = swept_keys(sweep_dir, overrides)
    values = [{k: typed(o[k]) if k in o else typed(_value_from_config(r, k)) for k in keys}
              for r, o in zip(folders, overrides)]
    # jobs of multirun.yaml without any folder
    missing = []
    for job in expected_jobs(sweep_dir) or []:
        wanted = {k: typed(v) for k, v in job.items() if k in keys}
        if not any(all(found.get(k) == v for k, v in wanted.items()) for found in values):
            missing.append({k: wanted.get(k) for k in keys})
    _one_type(values + missing, keys)

    rows, tables = [], []
    for run_dir, swept in zip(folders, values):
        try:
            summary, metrics, damaged = read_summary(run_dir), _read_run_metrics(run_dir), None
        except UsageError as exc:  # one run's damaged file is that run's problem, not the sweep's
            summary, metrics, damaged = {}, None, str(exc)
        status = summary.get("status", "unknown" if run_dir in runs else "not started")
        row = {"run": run_dir.relative_to(sweep_dir).as_posix(), **swept, "status": status,
               "tpt_epoch": summary.get("tpt_epoch"), "epochs_done": summary.get("epochs_done")}
        row |= {k: (summary.get("final") or {}).get(k) for k in FINAL_COLUMNS}
        row |= final_nc(metrics)
        problems = [summary.get("error"), errors.get(run_dir), damaged]
        if run_dir in runs and metrics is None and damaged is None:
            problems.append("no analysis/metrics.csv")
        row["problem"] = "; ".join(p for p in problems if p)
        rows.append(row)
        if metrics is not None and not metrics.empty:
            tables.append(metrics.assign(run=row["run"], **swept))
    rows += [{"run": "", **swept, "status": "missing",
              "problem": "no run folder (not started, or failed before writing its config)"} for swept in missing]

    runs_df = pd.DataFrame(rows)
    ordered = ["run", *keys, "status", "tpt_epoch", "epochs_done", *FINAL_COLUMNS, "analysed_epoch", "nc_layer",
               "nc_stage", *NC_METRICS]
    ordered += [c for c in runs_df.columns if c not in ordered and c != "problem"] + ["problem"]
    runs_df = runs_df.reindex(columns=ordered)
    if runs_df["nc_stage"].isna().all():  # networks: the layer's own representation
        runs_df = runs_df.drop(columns="nc_stage")
    metrics = (pd.concat(tables, ignore_index=True)[["run", *keys, *COLUMNS]] if tables
               else pd.DataFrame(columns=["run", *keys, *COLUMNS]))
    return runs_df, metrics, keys


def group_keys(keys: list[str]) -> list[str]:
    """The swept keys that define a combination: all but the seed."""
    return [k for k in keys if k != SEED_KEY]


def _groupby(frame, by: list[str]):
    """Group with missing swept values kept as their own group."""
    return frame.groupby(by, dropna=False, sort=True)


def _std(series):
    return series.std(ddof=1) if series.count() > 1 else math.nan


def aggregate_runs(runs_df, keys: list[str]):
    """Mean, std and count over seeds of runs.csv's numbers, per combination of the other swept values."""
    by = group_keys(keys)
    numbers = [c for c in SUMMARY_NUMBERS if c in runs_df.columns]
    frame = runs_df[runs_df["status"] != "missing"].copy()
    for column in numbers:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["_done"] = frame["status"] == "done"
    grouped = _groupby(frame, by) if by else [((), frame)]
    rows = []
    for combo, part in grouped:
        combo = combo if isinstance(combo, tuple) else (combo,)
        row = dict(zip(by, combo)) | {"n_runs": len(part), "n_done": int(part["_done"].sum())}
        for column in numbers:
            row[f"{column}_mean"] = part[column].mean()
            row[f"{column}_std"] = _std(part[column])
            row[f"{column}_n"] = int(part[column].count())
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate_metrics(metrics, keys: list[str]):
    """Mean, std (ddof 1) and n over seeds of every tidy row, per combination; n_runs = runs in the combination."""
    by = group_keys(keys)
    columns = [*by, *KEY_COLUMNS]
    if metrics.empty:
        return pd.DataFrame(columns=[*columns, "mean", "std", "n", "n_runs"])
    table = _groupby(metrics, columns)["value"].agg(mean="mean", std="std", n="count").reset_index()
    if by:
        n_runs = metrics.groupby(by, dropna=False)["run"].nunique().rename("n_runs").reset_index()
        table = table.merge(n_runs, on=by, how="left")
    else:
        table["n_runs"] = metrics["run"].nunique()
    return table


def _markdown(runs_df, aggregated, keys: list[str]) -> str:
    by = group_keys(keys)

    def fmt(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    shown = [c for c in ("tpt_epoch", "train_acc", "test_acc", "nc1_trace", "nc1", "nc2", "nc3", "nc4")
             if f"{c}_mean" in aggregated.columns and aggregated[f"{c}_n"].sum() > 0]
    head = [*by, "runs (done)", *shown]
    body = []
    for _, row in aggregated.iterrows():
        cells = [fmt(row[k]) for k in by] + [f"{int(row['n_runs'])} ({int(row['n_done'])})"]
        for c in shown:
            mean, std, n = row[f"{c}_mean"], row[f"{c}_std"], row[f"{c}_n"]
            cells.append("" if n == 0 else fmt(mean) + ("" if math.isnan(std) else f" ± {std:.2g}"))
        body.append(cells)
    lines = ["# Sweep summary", "",
             f"Mean ± std over seeds ({SEED_KEY}) per combination of the other swept values; final metrics of each run "
             "(NC metrics: last hidden layer, train split, last analysed checkpoint).", "", markdown_table(head, body)]
    not_done = runs_df[(runs_df["status"] != "done") | (runs_df["problem"].fillna("") != "")]
    lines += ["", f"## Runs not done or with problems: {len(not_done)}", ""]
    for _, row in not_done.iterrows():
        values = ", ".join(f"{k}={fmt(row[k])}" for k in keys)
        lines.append(f"- `{row['run'] or '(no folder)'}` ({values}): {row['status']}"
                     + (f"; {row['problem']}" if row["problem"] else ""))
    return "\n".join(lines) + "\n"


def write_sweep_tables(sweep_dir: Path, runs: list[Path], errors: dict[Path, str] | None = None) -> dict:
    """Write runs.csv, metrics.csv, aggregated.csv, aggregated_metrics.csv and sweep_table.md; return a digest."""
    sweep_dir = Path(sweep_dir)
    runs_df, metrics, keys = collect(sweep_dir, runs, errors)
    out = sweep_dir / ANALYSIS_DIR
    require_no_link_out(sweep_dir, [ANALYSIS_DIR])
    aggregated = aggregate_runs(runs_df, keys)
    tables = {RUNS_TABLE: runs_df, SWEEP_METRICS_TABLE: metrics, AGGREGATED_TABLE: aggregated,
              AGGREGATED_METRICS_TABLE: aggregate_metrics(metrics, keys)}
    with staged_files() as stage:  # all five files or none
        for name, table in tables.items():
            write_csv(stage(out / name), table)
        stage(out / SWEEP_TABLE_MD).write_text(_markdown(runs_df, aggregated, keys))
    not_done = runs_df[(runs_df["status"] != "done") | (runs_df["problem"].fillna("") != "")]
    return {"dir": out, "keys": keys, "runs": len(runs_df), "done": int((runs_df["status"] == "done").sum()),
            "not_done": [f"{r['run'] or '(no folder)'}: {r['status']}" + (f" ({r['problem']})" if r["problem"] else "")
                         for _, r in not_done.iterrows()]}
