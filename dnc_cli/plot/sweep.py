"""A sweep's figures (`dnc plot run_dir=<sweep>`), from `dnc analyze`'s sweep tables (dnc_cli/analyze/sweeps.py):
the registry's figures (dnc_cli/plot/figures.py) with ± std bands over seeds, and one comparison per swept
parameter. Imports no torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dnc_cli.config import SEED_KEY
from dnc_cli.errors import UsageError, need, reading
from dnc_cli.guards import require_no_link_out
from dnc_cli.plot.figures import COMPARE, FIGURES, SWEEP_FIGURES, FigureInputs, check_options
from dnc_cli.plot.style import (
    NC1_LABELS,
    NC2_LABEL,
    NC3_LABEL,
    NC4_LABEL,
    NotDrawable,
    finish_epoch_axis,
    no_data,
    plot_curve,
    save,
)
from dnc_cli.runs import ANALYSIS_DIR, FIGURES_DIR, read_summary, run_kind, staged_files
from dnc_cli.tables import (
    AGGREGATED_METRICS_TABLE,
    RUNS_TABLE,
    SWEEP_METRICS_TABLE,
    read_train_log,
)

log = logging.getLogger("dnc_cli.plot")
COMPARE_METRICS = ("nc2", "nc3", "nc4")  # after the chosen NC1 form
MAX_COMPARE_ROWS = 4  # more combinations of the remaining parameters are pooled into one row


def read_sweep(sweep_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """runs.csv, aggregated_metrics.csv and the swept keys (runs.csv's columns between `run` and `status`)."""
    analysis = Path(sweep_dir) / ANALYSIS_DIR
    paths = [analysis / RUNS_TABLE, analysis / AGGREGATED_METRICS_TABLE]
    if not all(p.is_file() for p in paths):
        raise UsageError(f"no sweep analysis in {sweep_dir}: run `dnc analyze run_dir={sweep_dir}` first")
    hint = f"rebuild it with `dnc analyze run_dir={sweep_dir}`"
    with reading(paths[0], hint):
        runs = pd.read_csv(paths[0], dtype={"run": str, "status": str, "problem": str}, keep_default_na=False,
                           na_values=[""])
        columns = list(runs.columns)
        keys = columns[1:columns.index("status")]
    with reading(paths[1], hint):
        aggregated = pd.read_csv(paths[1], dtype={"stage": str, "split": str, "metric": str}, keep_default_na=False,
                                 na_values={c: [""] for c in ("mean", "std", *keys)})
        need(all(c in aggregated.columns for c in ("stage", "split", "metric", "mean", "std")), paths[1],
             "columns stage, split, metric, mean, std expected", hint)
    aggregated["stage"] = aggregated["stage"].fillna("")
    return runs, aggregated, keys


def _combos(frame: pd.DataFrame, by: list[str]) -> list[tuple[dict, pd.DataFrame]]:
    if not by:
        return [({}, frame)]
    out = []
    for combo, part in frame.groupby(by, dropna=False, sort=True):
        combo = combo if isinstance(combo, tuple) else (combo,)
        out.append((dict(zip(by, combo)), part))
    return out


def _matches(frame: pd.DataFrame, combo: dict) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for key, value in combo.items():
        mask &= frame[key].isna() if pd.isna(value) else frame[key] == value
    return mask


def short_name(key: str, keys: list[str] | None = None) -> str:
    """A swept key's last component (dataset.labels.random_fraction -> random_fraction) unless another key of the
    sweep ends the same way."""
    last = key.rsplit(".", 1)[-1]
    clash = [k for k in keys or [] if k != key and k.rsplit(".", 1)[-1] == last]
    return key if clash else last


def _label(combo: dict) -> str:
    keys = list(combo)
    return ", ".join(f"{short_name(k, keys)}={_value(v)}" for k, v in combo.items())


def _value(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v)) if abs(v) >= 1 or v == 0 else str(v)
    return str(v)


def common_epochs(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of checkpoints every run of the combination has (a seed's own TPT checkpoint is dropped), when
    at least two epochs (or the only one) remain; otherwise all rows."""
    full = rows[rows["n"] >= rows["n_runs"]]
    if full["epoch"].nunique() >= min(2, rows["epoch"].nunique()):
        return full
    return rows


def aggregate_train_logs(sweep_dir: Path, run_folders: list[str]) -> pd.DataFrame | None:
    """Mean and std over runs of every train_log.csv column, per epoch that all the runs logged."""
    logs = [read_train_log(Path(sweep_dir) / run) for run in run_folders if isinstance(run, str) and run]
    logs = [log_ for log_ in logs if log_ is not None]
    if not logs:
        return None
    stacked = pd.concat(logs, ignore_index=True)
    counts = stacked.groupby("epoch").size()
    stacked = stacked[stacked["epoch"].isin(counts[counts == len(logs)].index)]
    if stacked.empty:
        return None
    grouped = stacked.groupby("epoch")
    table = grouped.mean().reset_index()
    stds = grouped.std(ddof=1).add_suffix("_std").reset_index(drop=True)
    return pd.concat([table, stds], axis=1)


def _append_title(fig: Figure, text: str) -> None:
    title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    fig.suptitle(f"{title}\n{text}" if title else text)


def fig_compare(metrics: pd.DataFrame, param: str, keys: list[str], nc1_form: str = "nc1_trace",
                split: str = "train") -> Figure:
    """NC metrics of the last hidden layer against epoch (or layer, for single-checkpoint runs such as Deep RFM),
    one line per value of `param`, mean ± std over the runs that share it (seeds, and any pooled parameters);
    one row of panels per combination of the other swept parameters (pooled beyond MAX_COMPARE_ROWS)."""
    metrics = metrics[metrics["split"] == split]
    if metrics.empty:
        raise NotDrawable(f"no rows for split={split}")
    others = [k for k in keys if k not in (param, SEED_KEY)]
    row_combos = _combos(metrics, others)
    if len(row_combos) > MAX_COMPARE_ROWS:
        row_combos = [({}, metrics)]
    names = [m for m in (nc1_form, *COMPARE_METRICS) if m in set(metrics["metric"])]
    if not names:
        raise NotDrawable(f"no {nc1_form}/nc2/nc3/nc4 rows")
    by_epoch = metrics["epoch"].nunique() > 1
    x = "epoch" if by_epoch else "layer"
    name = short_name(param, keys)
    values = sorted(metrics[param].dropna().unique().tolist(), key=lambda v: (isinstance(v, str), v))
    if metrics[param].isna().any():
        values.append(np.nan)
    shades = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, max(len(values), 2)))
    labels = {NC1_LABELS.get(nc1_form, nc1_form): nc1_form, NC2_LABEL: "nc2", NC3_LABEL: "nc3",
              NC4_LABEL: "nc4"}
    ylabels = {metric: label for label, metric in labels.items()}

    fig = Figure(figsize=(3.6 * len(names) + 0.8, 3.2 * len(row_combos) + 1.0), layout="constrained")
    axes = fig.subplots(len(row_combos), len(names), squeeze=False)
    for r, (combo, part) in enumerate(row_combos):
        for c, metric in enumerate(names):
            ax = axes[r, c]
            is_nc4 = metric == "nc4"
            for colour, value in zip(shades, values, strict=False):
                line_rows = part[(part[param].isna() if pd.isna(value) else part[param] == value)
                                 & (part["metric"] == metric)]
                own = line_rows[line_rows["stage"] == ""]
                if own.empty:  # Deep RFM: the layer's stage closest to its output
                    for stage in ("activation", "agop", "input"):
                        own = line_rows[line_rows["stage"] == stage]
                        if not own.empty:
                            break
                if own.empty:
                    continue
                if by_epoch:
                    own = own[own["layer"] == own["layer"].max()]
                per_run = own.groupby(["run", x])["value"].mean().reset_index()
                stats = per_run.groupby(x)["value"].agg(value="mean", std="std", n="count").reset_index()
                runs_here = per_run["run"].nunique()
                full = stats[stats["n"] == runs_here]
                stats = full if len(full) >= min(2, len(stats)) else stats
                plot_curve(ax, stats, x, not is_nc4, color=colour, marker="auto", markersize=3, linewidth=1.4,
                           label=f"{name}={_value(value)} ({runs_here} run{'s' if runs_here != 1 else ''})")
            title = metric.upper().replace("_TRACE", "")
            ax.set_title(title + (f" ({_label(combo)})" if combo else ""), fontsize=10)
            ax.set_ylabel(ylabels.get(metric, metric))
            if not ax.has_data():
                no_data(ax, metric)
            elif is_nc4:
                ax.set_yscale("symlog", linthresh=1e-3)
            if by_epoch:
                finish_epoch_axis(ax, log_y=not is_nc4)
            else:
                ax.set_xlabel("layer $l$")
                ax.grid(True, alpha=0.3)
                if ax.has_data() and not is_nc4:
                    ax.set_yscale("log")
    handles, legend_labels = [], []
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in legend_labels:
                handles.append(handle)
                legend_labels.append(label)
    # as many columns as fit the figure's width (a legend wider than the figure is cut off): ~5.5 pt per character
    column_pt = 5.5 * max(map(len, legend_labels), default=1) + 40
    columns = max(1, min(len(handles), 4, int(fig.get_figwidth() * 72 // column_pt)))
    fig.legend(handles, legend_labels, loc="outside lower center", ncol=columns, frameon=False)
    where = "last hidden layer, against epoch" if by_epoch else "against layer"
    fig.suptitle(f"Neural collapse for each {name} ({where}; {split} split; mean ± std over seeds)")
    return fig


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "=,._-+" else "_" for ch in text)


def _slug(combo: dict) -> str:
    return _safe(_label(combo).replace(", ", ","))


def plot_sweep(sweep_dir: Path, figures: list[str] | None = None, nc1_form: str = "nc1_trace",
               split: str = "train", formats: tuple[str, ...] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """A sweep's figures, from `dnc analyze`'s sweep tables, into <sweep>/figures/:

    - per combination of the non-seed swept values (in <sweep>/figures/<key=value,...>/, or directly in figures/
      when only seeds vary): nc_metrics, svd_nc1, nfa, layers and training (Deep RFM: rfm_layers), each curve the
      mean over seeds with a ± std band, on the checkpoints every seed has;
    - compare_<key>.png for every swept key but the seed: NC metrics of the last hidden layer, one line per value.
    """
    sweep_dir = Path(sweep_dir)
    formats = tuple(formats)
    check_options(figures, nc1_form, formats, dpi)
    runs, aggregated, keys = read_sweep(sweep_dir)
    by = [k for k in keys if k != SEED_KEY]
    if aggregated.empty:
        raise UsageError(f"the sweep {sweep_dir} has no analysed run yet: run `dnc analyze run_dir={sweep_dir}`")
    splits = sorted(aggregated["split"].unique())
    if split not in splits:
        raise UsageError(f"split={split} is not in {sweep_dir}/analysis/aggregated_metrics.csv "
                         f"(it has: {', '.join(splits)})")
    wanted = set(figures) if figures is not None else None
    written: list[Path] = []
    require_no_link_out(sweep_dir, [FIGURES_DIR])
    with staged_files() as stage:  # the sweep's figure set is replaced whole, or not at all
        for combo, rows in _combos(aggregated, by):
            rows = common_epochs(rows)
            metrics = rows.rename(columns={"mean": "value"})
            members = runs[_matches(runs, combo) & (runs["status"] != "missing")] if by else runs[
                runs["status"] != "missing"]
            n_seeds = int(rows["n_runs"].max()) if len(rows) else 0
            tpts = pd.to_numeric(members["tpt_epoch"], errors="coerce").dropna()
            tpt_epoch = int(tpts.median()) if len(tpts) and len(tpts) == len(members) else None
            summaries = [read_summary(sweep_dir / run) for run in members["run"] if isinstance(run, str) and run]
            # the combination's kind: its runs' (they share the model), else its table's
            kind = run_kind(next((summary for summary in summaries if summary), {}), metrics=metrics)
            out_dir = sweep_dir / FIGURES_DIR / _slug(combo) if combo else sweep_dir / FIGURES_DIR
            inputs = FigureInputs(metrics, tpt_epoch, nc1_form, split, kind,
                                  train_log=aggregate_train_logs(sweep_dir, members["run"].tolist()),
                                  no_train_log="no train_log.csv common to the runs")
            for name in SWEEP_FIGURES[kind]:
                if wanted is not None and name not in wanted:
                    continue
                try:
                    fig = FIGURES[name](inputs)
                except NotDrawable as reason:
                    log.warning("skipping sweep figure %s for %s: %s", name, _label(combo) or sweep_dir, reason)
                    continue
                seeds = f"mean ± std over {n_seeds} seed{'s' if n_seeds != 1 else ''}"
                _append_title(fig, f"{_label(combo)}; {seeds}" if combo else seeds)
                written += save(fig, out_dir / name, formats, dpi, stage)
        if by and (wanted is None or COMPARE in wanted):
            per_run = _read_sweep_metrics(sweep_dir, keys)
            for param in by:
                if per_run[param].nunique(dropna=False) < 2:
                    continue
                try:
                    fig = fig_compare(per_run, param, keys, nc1_form, split)
                except NotDrawable as reason:
                    log.warning("skipping sweep figure compare_%s: %s", param, reason)
                    continue
                stem = "compare_" + _safe(short_name(param, by)).replace(".", "_")  # save() takes a suffix-free stem
                written += save(fig, sweep_dir / FIGURES_DIR / stem, formats, dpi, stage)
    return written


def _read_sweep_metrics(sweep_dir: Path, keys: list[str]) -> pd.DataFrame:
    path = Path(sweep_dir) / ANALYSIS_DIR / SWEEP_METRICS_TABLE
    with reading(path, f"rebuild it with `dnc analyze run_dir={sweep_dir}`"):
        table = pd.read_csv(path, dtype={"run": str, "stage": str, "split": str, "metric": str},
                            keep_default_na=False, na_values={c: [""] for c in ("value", *keys)})
    table["stage"] = table["stage"].fillna("")
    return table
