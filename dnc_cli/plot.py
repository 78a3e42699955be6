"""Figures from a finished analysis (`dnc plot`). Imports no torch: plotting a finished sweep is instant.

Inputs, all inside one run folder (written by `dnc train` and `dnc analyze`):
    analysis/metrics.csv          tidy table: epoch,split,layer,stage,metric,value
    analysis/gram_epoch_*_*.npz   class-sorted feature samples of the final checkpoint
    train_log.csv                 losses and accuracies per epoch (network runs)
    summary.json                  status, tpt_epoch, model

Outputs: <run_dir>/figures/<name>.<png|pdf>, byte-identical for identical inputs.

Every figure has a function fig_<name>(tables..., options) -> matplotlib Figure, so tests and notebooks can
draw from DataFrames directly; plot_run() reads a run folder and writes the files. Figures are built with the
object-oriented API (matplotlib.figure.Figure on the Agg canvas): no pyplot, no GUI backend, no global figure
registry.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dnc_cli.errors import UsageError
from dnc_cli.runs import atomic_path, find_runs

__all__ = ["FIGURES", "RFM_FIGURES", "NotDrawable", "plot_run", "find_runs", "read_metrics", "tidy_metrics",
           "fig_nc_metrics", "fig_svd_nc1", "fig_nfa", "fig_layers", "fig_gram", "fig_training",
           "fig_rfm_layers", "plot_sweep", "read_sweep", "fig_compare", "SWEEP_FIGURES"]

log = logging.getLogger(__name__)

FIGURES = ("nc_metrics", "svd_nc1", "nfa", "layers", "gram", "training")  # network runs
RFM_FIGURES = ("rfm_layers", "gram")  # deep_rfm runs
NC1_FORMS = ("nc1", "nc1_trace")
FORMATS = ("png", "pdf")
METRICS_COLUMNS = ["epoch", "split", "layer", "stage", "metric", "value"]
BAND_COLUMNS = ["std", "n"]
SWEEP_FIGURES = ("compare",)  # sweeps only: one figure per swept parameter
BAND_ALPHA = 0.2

# axis labels: what each metric is, by its definition (mathtext, so every glyph exists in the default font)
NC1_LABELS = {
    "nc1_trace": r"NC1 = $\mathrm{tr}(\Sigma_W)\,/\,\mathrm{tr}(\Sigma_B)$",
    "nc1": r"NC1 = $\mathrm{tr}(\Sigma_W \Sigma_B^\dagger)\,/\,K$",
}
# NC2/NC3: Frobenius distance from a normalised K x K Gram (class means; classifier x means) to the ETF's
NC2_LABEL = r"NC2 = $\| G_{M} - G_{\mathrm{ETF}} \|_F$"
NC3_LABEL = r"NC3 = $\| G_{A M} - G_{\mathrm{ETF}} \|_F$"
NC4_LABEL = "NC4 = fraction with\nprediction ≠ nearest class mean"

# SVD-decomposed NC1: the representations along W_l = U S V^T, in order, with fixed colours across panels
SVD_STAGES = {
    "input": (r"input $h_{l-1}$", "0.35"),
    "right": (r"$S V^\top h_{l-1}$", "tab:blue"),
    "agop": (r"$\mathrm{AGOP}_l^{1/2} h_{l-1}$", "tab:green"),
    "activation": (r"$h_l = \sigma(U S V^\top h_{l-1})$", "tab:orange"),
}
# Deep RFM: per layer, X_l -> M^{1/2} X_l -> Phi(M^{1/2} X_l)
RFM_STAGES = {
    "input": (r"$X_l$ (layer input)", "0.35", "o"),
    "agop": (r"$M_l^{1/2} X_l$ (AGOP projection)", "tab:green", "s"),
    "activation": (r"$\Phi(M_l^{1/2} X_l)$ (random features)", "tab:orange", "^"),
}
SPLIT_STYLES = {"train": "-", "test": "--"}
TPT_STYLE = dict(color="tab:red", linestyle="--", linewidth=1.0, alpha=0.8)


class NotDrawable(ValueError):
    """The data a figure needs is absent (e.g. the nfa family was not analysed): skip it with a warning."""


# -----------------------------------------------------------------------------
# reading the tables


def tidy_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """The contract's columns only; stage '' for a layer's own representation; integer epochs and layers."""
    missing = [c for c in METRICS_COLUMNS if c not in metrics.columns]
    if missing:
        raise UsageError(f"metrics table lacks column(s) {', '.join(missing)}")
    # sweep aggregates (dnc_cli.sweep) carry the spread over seeds: value = mean, std; figures draw it as bands
    tidy = metrics[METRICS_COLUMNS + [c for c in BAND_COLUMNS if c in metrics.columns]].copy()
    tidy["stage"] = tidy["stage"].fillna("").astype(str)
    tidy["split"] = tidy["split"].astype(str)
    tidy["metric"] = tidy["metric"].astype(str)
    tidy["epoch"] = tidy["epoch"].astype(int)
    tidy["layer"] = tidy["layer"].astype(int)
    tidy["value"] = pd.to_numeric(tidy["value"], errors="coerce")
    return tidy


def read_metrics(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / "analysis" / "metrics.csv"
    if not path.is_file():
        raise UsageError(f"no analysis in {run_dir}: run `dnc analyze run_dir={run_dir}` first")
    return tidy_metrics(pd.read_csv(path, dtype={"stage": str, "split": str, "metric": str}))


def read_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def read_train_log(run_dir: Path) -> pd.DataFrame | None:
    path = Path(run_dir) / "train_log.csv"
    if not path.is_file():
        return None
    train_log = pd.read_csv(path)
    return train_log if len(train_log) and "epoch" in train_log.columns else None


def final_gram_file(run_dir: Path, split: str) -> Path | None:
    """The gram npz of the latest analysed epoch for `split` (names sort by their zero-padded epoch)."""
    files = sorted((Path(run_dir) / "analysis").glob(f"gram_epoch_*_{split}.npz"))
    return files[-1] if files else None


def read_gram(path: Path) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    with np.load(path) as npz:
        labels = np.asarray(npz["labels"])
        features = {int(key.split("_")[1]): np.asarray(npz[key], dtype=np.float64)
                    for key in npz.files if key.startswith("layer_")}
    return labels, dict(sorted(features.items()))


# -----------------------------------------------------------------------------
# selecting and drawing curves


def select(metrics: pd.DataFrame, metric: str, split: str | None = None,
           stage: str | None = "") -> pd.DataFrame:
    rows = metrics[metrics["metric"] == metric]
    if split is not None:
        rows = rows[rows["split"] == split]
    if stage is not None:
        rows = rows[rows["stage"] == stage]
    return rows


def curve(rows: pd.DataFrame, x: str, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean value per x (duplicates averaged), NaNs dropped, and non-positive values dropped for log axes."""
    by_x = rows.groupby(x)["value"].mean().dropna()
    if positive:
        by_x = by_x[by_x > 0]
    return by_x.index.to_numpy(), by_x.to_numpy()


def band(ax, xs, mean, std, colour, positive: bool) -> None:
    """A mean ± std band. On log axes a lower edge at or below 0 is drawn one decade below the mean."""
    xs, mean, std = np.asarray(xs, float), np.asarray(mean, float), np.nan_to_num(np.asarray(std, float))
    if len(xs) == 0 or not std.any():
        return
    lower, upper = mean - std, mean + std
    if positive:
        lower = np.where(lower > 0, lower, mean / 10)
    ax.fill_between(xs, lower, upper, color=colour, alpha=BAND_ALPHA, linewidth=0)


def plot_curve(ax, rows: pd.DataFrame, x: str, positive: bool, **style) -> tuple[np.ndarray, np.ndarray]:
    """curve() drawn on `ax` (marker="auto": marker_for its length), with its ± std band when the rows are a sweep
    aggregate; returns the curve."""
    xs, values = curve(rows, x, positive)
    if style.get("marker") == "auto":
        style["marker"] = marker_for(len(xs))
    if len(xs):
        line, = ax.plot(xs, values, **style)
        if "std" in rows.columns:
            std = rows.groupby(x)["std"].mean().reindex(xs).to_numpy()
            band(ax, xs, values, std, line.get_color(), positive)
    return xs, values


def hidden_layers(metrics: pd.DataFrame) -> list[int]:
    """Analysed layers l >= 1 that have their own representation (stage '')."""
    return sorted(int(layer) for layer in metrics.loc[metrics["stage"] == "", "layer"].unique() if layer >= 1)


def marker_for(n_points: int) -> str:
    """Markers keep single checkpoints visible and show where a curve was measured."""
    return "o" if n_points <= 12 else ""


def layer_colours(layers: list[int]) -> tuple[dict[int, np.ndarray], ScalarMappable]:
    """Viridis by depth (short of its pale yellow end) and a discrete colorbar mappable, one tick a layer."""
    positions = np.linspace(0.0, 0.85, len(layers)) if len(layers) > 1 else [0.0]
    shades = matplotlib.colormaps["viridis"](positions)
    norm = BoundaryNorm(np.arange(len(layers) + 1) - 0.5, len(layers))
    mappable = ScalarMappable(norm, ListedColormap(shades))
    return dict(zip(layers, shades, strict=True)), mappable


def add_layer_colorbar(fig: Figure, mappable: ScalarMappable, layers: list[int], axes) -> None:
    colorbar = fig.colorbar(mappable, ax=axes, ticks=np.arange(len(layers)), shrink=0.9, aspect=30, pad=0.02)
    colorbar.ax.set_yticklabels([str(layer) for layer in layers])
    colorbar.set_label("layer $l$ (depth)")


def mark_tpt(ax, tpt_epoch: int | None) -> None:
    if tpt_epoch is not None:
        ax.axvline(tpt_epoch, **TPT_STYLE)


def tpt_handle(tpt_epoch: int | None) -> list[Line2D]:
    if tpt_epoch is None:
        return []
    return [Line2D([], [], **TPT_STYLE, label=f"TPT (epoch {tpt_epoch}): 100% train accuracy")]


def split_handles(splits: list[str]) -> list[Line2D]:
    return [Line2D([], [], color="black", linestyle=SPLIT_STYLES.get(s, ":"), label=s) for s in splits]


def no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in metrics.csv", transform=ax.transAxes, ha="center", va="center",
            color="0.4")


def finish_epoch_axis(ax, log_y: bool) -> None:
    ax.set_xlabel("epoch")
    if log_y and ax.has_data():
        ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)


def as_tpt(tpt_epoch) -> int | None:
    if tpt_epoch is None or (isinstance(tpt_epoch, float) and math.isnan(tpt_epoch)):
        return None
    return int(tpt_epoch)


# -----------------------------------------------------------------------------
# 1. NC1..NC4 of every hidden layer vs epoch


def fig_nc_metrics(metrics: pd.DataFrame, tpt_epoch: int | None = None,
                   nc1_form: str = "nc1_trace") -> Figure:
    metrics = tidy_metrics(metrics)
    tpt_epoch = as_tpt(tpt_epoch)
    layers = hidden_layers(metrics)
    if not layers:
        raise NotDrawable("no per-layer NC metrics (stage '') for layers >= 1")
    splits = [s for s in SPLIT_STYLES if s in set(metrics["split"])]
    colours, mappable = layer_colours(layers)

    fig = Figure(figsize=(10, 7.2), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    panels = [
        (axes[0, 0], nc1_form, "NC1: within-class variability collapse", NC1_LABELS[nc1_form]),
        (axes[0, 1], "nc2", "NC2: class means → simplex ETF", NC2_LABEL),
        (axes[1, 0], "nc3", "NC3: self-duality (last hidden layer)", NC3_LABEL),
        (axes[1, 1], "nc4", "NC4: classifier vs nearest class mean", NC4_LABEL),
    ]
    for ax, metric, title, ylabel in panels:
        is_nc4 = metric == "nc4"
        drawn = []
        for split in splits:
            rows = select(metrics, metric, split)
            for layer in layers:
                layer_rows = rows[rows["layer"] == layer]
                epochs, values = plot_curve(ax, layer_rows, "epoch", not is_nc4, color=colours[layer],
                                            linestyle=SPLIT_STYLES[split], markersize=3, linewidth=1.4,
                                            marker="auto")
                if len(epochs):
                    drawn.append(values)
        ax.set_title(title, fontsize=11)
        ax.set_ylabel(ylabel)
        mark_tpt(ax, tpt_epoch)
        if not drawn:
            no_data(ax, metric)
            continue
        if is_nc4:  # a disagreement rate is often exactly 0: symlog, linear below the smallest nonzero value
            values = np.concatenate(drawn)
            nonzero = values[values > 0]
            linthresh = 10.0 ** math.floor(math.log10(nonzero.min())) if len(nonzero) else 1e-3
            top = 10.0 ** math.ceil(math.log10(nonzero.max())) if len(nonzero) else 1e-2
            ax.set_yscale("symlog", linthresh=linthresh)
            ax.set_ylim(-0.3 * linthresh, min(top, 1.0))  # a little room below 0 keeps zeros visible
        finish_epoch_axis(ax, log_y=not is_nc4)
    for ax in axes[0]:
        ax.set_xlabel("")

    add_layer_colorbar(fig, mappable, layers, axes)
    fig.legend(handles=split_handles(splits) + tpt_handle(tpt_epoch), loc="outside lower center",
               ncol=3, frameon=False)
    fig.suptitle("Deep neural collapse metrics per layer during training")
    return fig


# -----------------------------------------------------------------------------
# 2. NC1 along the SVD of each layer: h_{l-1} -> S V^T h_{l-1} -> sigma(U S V^T h_{l-1})


def grid_shape(n_panels: int, max_cols: int = 4) -> tuple[int, int]:
    n_rows = math.ceil(n_panels / max_cols)
    return n_rows, math.ceil(n_panels / n_rows)


def fig_svd_nc1(metrics: pd.DataFrame, tpt_epoch: int | None = None, nc1_form: str = "nc1_trace",
                split: str = "train") -> Figure:
    metrics = tidy_metrics(metrics)
    tpt_epoch = as_tpt(tpt_epoch)
    rows = select(metrics, nc1_form, split, stage=None)
    rows = rows[rows["stage"].isin(list(SVD_STAGES)) & (rows["layer"] >= 1)]
    layers = sorted(int(layer) for layer in rows["layer"].unique())
    if not layers:
        raise NotDrawable(f"no SVD-decomposed {nc1_form} rows (input/right/activation) for split={split}")
    stages = [stage for stage in SVD_STAGES if stage in set(rows["stage"])]

    n_rows, n_cols = grid_shape(len(layers))
    fig = Figure(figsize=(3.1 * n_cols + 0.6, 2.9 * n_rows + 0.9), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax in axes[len(layers):]:
        fig.delaxes(ax)
    for ax, layer in zip(axes, layers, strict=False):
        layer_rows = rows[rows["layer"] == layer]
        for stage in stages:
            label, colour = SVD_STAGES[stage]
            stage_rows = layer_rows[layer_rows["stage"] == stage]
            plot_curve(ax, stage_rows, "epoch", True, color=colour, marker="auto", markersize=3, linewidth=1.4,
                       label=label)
        ax.set_title(f"Layer {layer}", fontsize=11)
        finish_epoch_axis(ax, log_y=True)
        mark_tpt(ax, tpt_epoch)
    for index, ax in enumerate(axes[: len(layers)]):
        if index % n_cols == 0:
            ax.set_ylabel(NC1_LABELS[nc1_form])
        if index < len(layers) - n_cols:  # a panel sits below this one: its epoch label is enough
            ax.set_xlabel("")
            ax.tick_params(labelbottom=False)
        else:
            ax.tick_params(labelbottom=True)

    handles = [Line2D([], [], color=SVD_STAGES[s][1], marker="o", markersize=3, label=SVD_STAGES[s][0])
               for s in stages]
    fig.legend(handles=handles + tpt_handle(tpt_epoch), loc="outside lower center",
               ncol=min(len(handles) + 1, 5), frameon=False)
    fig.suptitle(rf"NC1 along each layer $W_l = U S V^\top$ ({split} split)")
    return fig


# -----------------------------------------------------------------------------
# 3. the neural feature ansatz next to collapse (the paper's Figure 11 layout)


def fig_nfa(metrics: pd.DataFrame, train_log: pd.DataFrame | None = None, tpt_epoch: int | None = None,
            split: str = "train", nfa_metric: str = "nfa_corr_0.5") -> Figure:
    metrics = tidy_metrics(metrics)
    tpt_epoch = as_tpt(tpt_epoch)
    nfa_rows = select(metrics, nfa_metric, "train")
    if nfa_rows["value"].notna().sum() == 0:
        fallback = "nfa_corr_1" if nfa_metric != "nfa_corr_1" else "nfa_corr_0.5"
        nfa_rows = select(metrics, fallback, "train")
        if nfa_rows["value"].notna().sum() == 0:
            raise NotDrawable("no nfa_corr rows (the nfa family was not analysed)")
        nfa_metric = fallback
    alpha = nfa_metric.removeprefix("nfa_corr_")
    has_loss = (train_log is not None and "train_loss" in train_log.columns
                and bool(train_log["train_loss"].notna().any()))

    fig = Figure(figsize=(13 if has_loss else 9, 4.2), layout="constrained")
    axes = fig.subplots(1, 3 if has_loss else 2)

    # (a) within- and between-class variance of the last hidden layer, as fractions of the total
    ax = axes[0]
    layers = hidden_layers(metrics)
    last = layers[-1] if layers else None
    variance_ratios = [("tr_sw_over_st", r"$\mathrm{tr}(\Sigma_W)/\mathrm{tr}(\Sigma_T)$", "tab:purple"),
                       ("tr_sb_over_st", r"$\mathrm{tr}(\Sigma_B)/\mathrm{tr}(\Sigma_T)$", "tab:cyan")]
    for metric, label, colour in variance_ratios:
        rows = select(metrics, metric, split)
        rows = rows[rows["layer"] == last]
        plot_curve(ax, rows, "epoch", True, color=colour, marker="auto", markersize=3, label=label)
    ax.set_title(f"Variance ratios, last hidden layer ({last}), {split}", fontsize=11)
    ax.set_ylabel("fraction of total variance")
    if ax.has_data():
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    else:
        no_data(ax, "tr_sw_over_st / tr_sb_over_st")
    finish_epoch_axis(ax, log_y=True)
    mark_tpt(ax, tpt_epoch)

    # (b) NFA correlation per layer
    ax = axes[1]
    nfa_layers = sorted(int(layer) for layer in nfa_rows["layer"].unique())
    colours, _ = layer_colours(nfa_layers)
    for layer in nfa_layers:
        layer_rows = nfa_rows[nfa_rows["layer"] == layer]
        plot_curve(ax, layer_rows, "epoch", False, color=colours[layer], markersize=3, label=f"layer {layer}",
                   marker="auto")
    ax.set_ylim(0, 1.02)
    power = {"0.5": "1/2"}.get(alpha, alpha)
    nfa_title = r"Neural feature ansatz: corr($W_l^\top W_l$, $\mathrm{AGOP}_l^{" + power + "}$)"
    ax.set_title(nfa_title, fontsize=11)
    ax.set_ylabel("Pearson correlation")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(len(nfa_layers), 3), frameon=False,
              columnspacing=1.0, handlelength=1.5)
    finish_epoch_axis(ax, log_y=False)
    mark_tpt(ax, tpt_epoch)

    # (c) training loss
    if has_loss:
        ax = axes[2]
        losses = train_log[["epoch", "train_loss"]].dropna()
        losses = losses[losses["train_loss"] > 0].sort_values("epoch")
        ax.plot(losses["epoch"], losses["train_loss"], color="black", marker=marker_for(len(losses)),
                markersize=3)
        if "train_loss_std" in train_log.columns:
            loss_std = train_log.set_index("epoch")["train_loss_std"].reindex(losses["epoch"]).to_numpy()
            band(ax, losses["epoch"], losses["train_loss"], loss_std, "black", positive=True)
        ax.set_title("Training loss", fontsize=11)
        ax.set_ylabel("train loss")
        finish_epoch_axis(ax, log_y=True)
        mark_tpt(ax, tpt_epoch)
    handles = tpt_handle(tpt_epoch)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", frameon=False)
    return fig


# -----------------------------------------------------------------------------
# 4. NC1 and NC2 across depth at init, TPT and the end: deep neural collapse as it progresses through layers


CHECKPOINT_COLOURS = {"init": "0.6", "TPT": "tab:red", "final": "tab:blue"}


def key_checkpoints(epochs: list[int], tpt_epoch: int | None) -> dict[int, str]:
    """{epoch: label} for the first, the first at or after TPT and the last analysed epoch (merged)."""
    chosen: dict[int, list[str]] = {}
    chosen.setdefault(epochs[0], []).append("init")
    after_tpt = [e for e in epochs if tpt_epoch is not None and e >= tpt_epoch]
    if after_tpt:
        chosen.setdefault(after_tpt[0], []).append("TPT")
    chosen.setdefault(epochs[-1], []).append("final")
    return {epoch: " = ".join(roles) for epoch, roles in sorted(chosen.items())}


def fig_layers(metrics: pd.DataFrame, tpt_epoch: int | None = None, nc1_form: str = "nc1_trace",
               split: str = "train") -> Figure:
    metrics = tidy_metrics(metrics)
    tpt_epoch = as_tpt(tpt_epoch)
    own = metrics[(metrics["stage"] == "") & (metrics["split"] == split)]
    epochs = sorted(int(e) for e in own.loc[own["metric"].isin([nc1_form, "nc2"]), "epoch"].unique())
    if not epochs:
        raise NotDrawable(f"no per-layer {nc1_form}/nc2 rows for split={split}")
    checkpoints = key_checkpoints(epochs, tpt_epoch)

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric, title, ylabel in [(axes[0], nc1_form, "NC1 across depth", NC1_LABELS[nc1_form]),
                                      (axes[1], "nc2", "NC2 across depth", NC2_LABEL)]:
        rows = select(own, metric)
        for epoch, roles in checkpoints.items():
            colour = CHECKPOINT_COLOURS[roles.split(" = ")[-1]]
            plot_curve(ax, rows[rows["epoch"] == epoch], "layer", True, color=colour, marker="o", markersize=4,
                       label=f"{roles} (epoch {epoch})")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("layer $l$ (0 = input)")
        ax.set_ylabel(ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.set_yscale("log")
        else:
            no_data(ax, metric)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"Neural collapse across layers ({split} split)")
    return fig


# -----------------------------------------------------------------------------
# 5. class-sorted Gram matrices of the features (the paper's Figure 1)


def cosine_gram(features: np.ndarray) -> np.ndarray:
    centred = features - features.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = centred / np.where(norms > 0, norms, 1.0)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def spread(items: list, at_most: int) -> list:
    """Up to `at_most` items evenly spaced, first and last included."""
    if len(items) <= at_most:
        return list(items)
    return [items[i] for i in sorted(set(np.linspace(0, len(items) - 1, at_most).round().astype(int)))]


def fig_gram(labels: np.ndarray, features: dict[int, np.ndarray], title: str = "",
             layer_name: str = "Layer", max_panels: int = 5) -> Figure:
    labels = np.asarray(labels)
    layers = spread(sorted(features), max_panels)
    if not layers or len(labels) == 0:
        raise NotDrawable("the gram file holds no layer features")
    order = np.argsort(labels, kind="stable")  # the contract sorts by class already; be safe
    sorted_labels = labels[order]
    boundaries = np.flatnonzero(np.diff(sorted_labels)) + 0.5
    classes, first_index, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
    centres = first_index + (counts - 1) / 2

    fig = Figure(figsize=(2.7 * len(layers) + 1.0, 3.3), layout="constrained")
    axes = fig.subplots(1, len(layers), squeeze=False).ravel()
    image = None
    for ax, layer in zip(axes, layers, strict=True):
        gram = cosine_gram(features[layer][order])
        image = ax.imshow(gram, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        for edge in boundaries:
            ax.axhline(edge, color="black", linewidth=0.4)
            ax.axvline(edge, color="black", linewidth=0.4)
        ax.set_title(f"{layer_name} {layer}" + (" (input)" if layer == 0 and layer_name == "Layer" else ""),
                     fontsize=11)
        if len(classes) <= 20:
            ax.set_xticks(centres, [str(c) for c in classes], fontsize=7)
            ax.set_yticks(centres, [str(c) for c in classes], fontsize=7)
            ax.tick_params(length=0)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0].set_ylabel("samples, sorted by class")
    for ax in axes:
        ax.set_xlabel("samples, sorted by class")
    colorbar = fig.colorbar(image, ax=axes, shrink=0.85, aspect=25, pad=0.02)
    colorbar.set_label("cosine similarity")
    if title:
        fig.suptitle(title)
    return fig


# -----------------------------------------------------------------------------
# 6. training curves


def fig_training(train_log: pd.DataFrame, tpt_epoch: int | None = None) -> Figure:
    tpt_epoch = as_tpt(tpt_epoch)
    if train_log is None or len(train_log) == 0:
        raise NotDrawable("no train_log.csv")
    log_rows = train_log.sort_values("epoch")

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    colours = {"train": "tab:blue", "test": "tab:orange"}
    for ax, quantity, ylabel, log_y in [(axes[0], "loss", "loss", True), (axes[1], "acc", "accuracy", False)]:
        for split, colour in colours.items():
            column = f"{split}_{quantity}"
            if column not in log_rows.columns:
                continue
            rows = log_rows[["epoch", column]].dropna()
            if log_y:
                rows = rows[rows[column] > 0]
            if len(rows):
                ax.plot(rows["epoch"], rows[column], color=colour, linestyle=SPLIT_STYLES[split],
                        marker=marker_for(len(rows)), markersize=3, label=split)
                if f"{column}_std" in log_rows.columns:
                    column_std = log_rows.set_index("epoch")[f"{column}_std"].reindex(rows["epoch"]).to_numpy()
                    band(ax, rows["epoch"], rows[column], column_std, colour, positive=log_y)
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel.capitalize(), fontsize=11)
        if not ax.has_data():
            no_data(ax, quantity)
        finish_epoch_axis(ax, log_y=log_y)
        mark_tpt(ax, tpt_epoch)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    handles += tpt_handle(tpt_epoch)
    labels += [h.get_label() for h in tpt_handle(tpt_epoch)]
    fig.legend(handles, labels, loc="outside lower center", ncol=max(len(handles), 1), frameon=False)
    fig.suptitle("Training curves")
    return fig


# -----------------------------------------------------------------------------
# 7. Deep RFM: NC1 and NC2 along the zig-zag X_l -> M^{1/2} X_l -> Phi(M^{1/2} X_l) of every layer


def fig_rfm_layers(metrics: pd.DataFrame, nc1_form: str = "nc1_trace", split: str = "train") -> Figure:
    metrics = tidy_metrics(metrics)
    rows = metrics[(metrics["split"] == split) & metrics["stage"].isin(list(RFM_STAGES))]
    if rows.empty:
        raise NotDrawable(f"no Deep RFM stage rows (input/agop/activation) for split={split}")
    epoch = int(rows["epoch"].max())
    rows = rows[rows["epoch"] == epoch]
    layers = sorted(int(layer) for layer in rows["layer"].unique())
    stage_names = list(RFM_STAGES)
    position = {(layer, stage): 3 * i + k
                for i, layer in enumerate(layers) for k, stage in enumerate(stage_names)}

    width = min(max(7.0, 0.3 * len(position) + 2.5), 16.0)
    fig = Figure(figsize=(width, 6.4), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    for ax, metric, ylabel in [(axes[0], nc1_form, NC1_LABELS[nc1_form]), (axes[1], "nc2", NC2_LABEL)]:
        metric_rows = select(rows, metric, stage=None)
        by_point = metric_rows.groupby(["layer", "stage"])["value"].mean()
        points = sorted((position[key], value) for key, value in by_point.items()
                        if key in position and np.isfinite(value) and value > 0)
        std_by_point = (metric_rows.groupby(["layer", "stage"])["std"].mean() if "std" in metric_rows.columns
                        else pd.Series(dtype=float))
        if not points:
            no_data(ax, metric)
            ax.set_ylabel(ylabel)
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, color="0.7", linewidth=1.0, zorder=1)
        for k, stage in enumerate(stage_names):
            label, colour, marker = RFM_STAGES[stage]
            stage_points = [(x, y) for x, y in points if x % 3 == k]
            if stage_points:
                ax.scatter(*zip(*stage_points, strict=True), color=colour, marker=marker, s=28, zorder=2,
                           label=label)
                errors = np.nan_to_num([std_by_point.get((layers[x // 3], stage), np.nan) for x, _ in stage_points])
                if errors.any():  # a sweep aggregate: ± std over seeds, floored one decade below as band() does
                    xs, ys = (np.array(v, float) for v in zip(*stage_points, strict=True))
                    lower = np.where(ys - errors > 0, errors, ys - ys / 10)
                    ax.errorbar(xs, ys, yerr=[lower, errors], fmt="none", ecolor=colour, elinewidth=1.0, capsize=2,
                                zorder=2)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        for i in range(1, len(layers)):  # faint separators between Deep RFM layers
            ax.axvline(3 * i - 0.5, color="0.9", linewidth=0.8, zorder=0)
    tick_layers = spread(list(range(len(layers))), 20)
    axes[1].set_xticks([3 * i + 1 for i in tick_layers], [str(layers[i]) for i in tick_layers])
    axes[1].set_xlabel("Deep RFM layer $l$ (each: input → AGOP projection → random features)")
    axes[1].set_xlim(-0.7, 3 * len(layers) - 0.3)
    handles = [Line2D([], [], color=c, marker=m, linestyle="", markersize=6, label=lab)
               for lab, c, m in RFM_STAGES.values()]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(f"Deep RFM: neural collapse through the layers ({split} split)")
    return fig


# -----------------------------------------------------------------------------
# writing the figures of a run


def save(fig: Figure, path_stem: Path, formats: tuple[str, ...], dpi: int) -> list[Path]:
    """Write each format atomically; no timestamps in the metadata, so equal inputs give equal bytes."""
    written = []
    for fmt in formats:
        path = path_stem.with_suffix(f".{fmt}")
        metadata = {"CreationDate": None, "ModDate": None} if fmt == "pdf" else {"Software": None}
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
        written.append(path)
    return written


def is_rfm_run(summary: dict, metrics: pd.DataFrame) -> bool:
    if "model" in summary:
        return summary["model"] == "deep_rfm"
    return not (metrics["stage"] == "").any()  # Deep RFM tables have only input/agop/activation stages


def check_options(figures: list[str] | None, nc1_form: str, formats: tuple[str, ...], dpi: int) -> None:
    if nc1_form not in NC1_FORMS:
        raise UsageError(f"nc1_form={nc1_form} is not one of {', '.join(NC1_FORMS)}")
    for fmt in formats:
        if fmt not in FORMATS:
            raise UsageError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not isinstance(dpi, int) or dpi <= 0:
        raise UsageError(f"dpi={dpi} must be a positive integer")
    valid = list(dict.fromkeys(FIGURES + RFM_FIGURES + SWEEP_FIGURES))
    for name in figures or []:
        if name not in valid:
            raise UsageError(f"unknown figure {name!r}; valid figures: {', '.join(valid)}")


def plot_run(run_dir: Path, figures: list[str] | None = None, nc1_form: str = "nc1_trace",
             split: str = "train", formats: tuple[str, ...] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Draw `figures` (default: all that apply to the run's model) into <run_dir>/figures; return the files.

    Figures whose data is absent (a skipped metric family, no gram npz, no train log) or that belong to the
    other kind of run (network vs deep_rfm) are skipped with a one-line warning.
    Bad options (unknown figure, nc1_form, split or format; no analysis yet) raise UsageError.
    """
    run_dir = Path(run_dir)
    formats = tuple(formats)
    check_options(figures, nc1_form, formats, dpi)
    metrics = read_metrics(run_dir)
    splits = sorted(metrics["split"].unique())
    if split not in splits:
        raise UsageError(f"split={split} is not in {run_dir}/analysis/metrics.csv "
                         f"(it has: {', '.join(splits)})")
    summary = read_summary(run_dir)
    tpt_epoch = as_tpt(summary.get("tpt_epoch"))
    rfm = is_rfm_run(summary, metrics)
    applicable = RFM_FIGURES if rfm else FIGURES
    train_log = None if rfm else read_train_log(run_dir)

    def draw(name: str) -> Figure:
        if name == "nc_metrics":
            return fig_nc_metrics(metrics, tpt_epoch, nc1_form)
        if name == "svd_nc1":
            return fig_svd_nc1(metrics, tpt_epoch, nc1_form, split)
        if name == "nfa":
            return fig_nfa(metrics, train_log, tpt_epoch, split)
        if name == "layers":
            return fig_layers(metrics, tpt_epoch, nc1_form, split)
        if name == "training":
            if train_log is None:
                raise NotDrawable("no train_log.csv")
            return fig_training(train_log, tpt_epoch)
        if name == "rfm_layers":
            return fig_rfm_layers(metrics, nc1_form, split)
        if name == "gram":
            gram_file = final_gram_file(run_dir, split)
            if gram_file is None:
                raise NotDrawable(f"no analysis/gram_epoch_*_{split}.npz")
            labels, features = read_gram(gram_file)
            epoch = int(gram_file.stem.split("_")[2])
            where = f"{split}, Deep RFM" if rfm else f"{split}, epoch {epoch}"
            return fig_gram(labels, features, layer_name="Deep RFM layer" if rfm else "Layer",
                            title=f"Class-sorted Gram matrices of centred, normalised features ({where})")
        raise AssertionError(name)

    written: list[Path] = []
    for name in figures if figures is not None else applicable:
        if name not in applicable:
            kind = "deep_rfm" if rfm else "network"
            log.warning("skipping figure %s: not drawn for %s runs like %s (those get: %s)",
                        name, kind, run_dir, ", ".join(applicable))
            continue
        try:
            fig = draw(name)
        except NotDrawable as reason:
            log.warning("skipping figure %s for %s: %s", name, run_dir, reason)
            continue
        written += save(fig, run_dir / "figures" / name, formats, dpi)
    return written


# -----------------------------------------------------------------------------
# sweeps (the tables of dnc_cli.sweep): the figures above with ± std bands over seeds, and one comparison per
# swept parameter

SWEEP_RUN_FIGURES = ("nc_metrics", "svd_nc1", "nfa", "layers", "training")  # network sweeps, per combination
SWEEP_RFM_FIGURES = ("rfm_layers",)
SEED_KEY = "seed"
COMPARE_METRICS = ("nc2", "nc3", "nc4")  # after the chosen NC1 form
MAX_COMPARE_ROWS = 4  # more combinations of the remaining parameters are pooled into one row


def read_sweep(sweep_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """runs.csv, aggregated_metrics.csv and the swept keys (runs.csv's columns between `run` and `status`)."""
    analysis = Path(sweep_dir) / "analysis"
    paths = [analysis / "runs.csv", analysis / "aggregated_metrics.csv"]
    if not all(p.is_file() for p in paths):
        raise UsageError(f"no sweep analysis in {sweep_dir}: run `dnc analyze run_dir={sweep_dir}` first")
    runs = pd.read_csv(paths[0], dtype={"run": str, "status": str, "problem": str}, keep_default_na=False,
                       na_values=[""])
    columns = list(runs.columns)
    keys = columns[1:columns.index("status")]
    aggregated = pd.read_csv(paths[1], dtype={"stage": str, "split": str, "metric": str}, keep_default_na=False,
                             na_values={c: [""] for c in ("mean", "std", *keys)})
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
    fig.legend(handles, legend_labels, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)
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
    for combo, rows in _combos(aggregated, by):
        rows = common_epochs(rows)
        metrics = rows.rename(columns={"mean": "value"})
        members = runs[_matches(runs, combo) & (runs["status"] != "missing")] if by else runs[
            runs["status"] != "missing"]
        n_seeds = int(rows["n_runs"].max()) if len(rows) else 0
        tpts = pd.to_numeric(members["tpt_epoch"], errors="coerce").dropna()
        tpt_epoch = int(tpts.median()) if len(tpts) and len(tpts) == len(members) else None
        summaries = [read_summary(sweep_dir / run) for run in members["run"] if isinstance(run, str) and run]
        rfm = (any(is_rfm_run(summary, metrics) for summary in summaries if summary) if any(summaries)
               else not (metrics["stage"].eq("") & metrics["metric"].isin(NC1_FORMS)).any())
        names = SWEEP_RFM_FIGURES if rfm else SWEEP_RUN_FIGURES
        out_dir = sweep_dir / "figures" / _slug(combo) if combo else sweep_dir / "figures"
        train_log = None if rfm else aggregate_train_logs(sweep_dir, members["run"].tolist())
        for name in names:
            if wanted is not None and name not in wanted:
                continue
            try:
                if name == "nc_metrics":
                    fig = fig_nc_metrics(metrics, tpt_epoch, nc1_form)
                elif name == "svd_nc1":
                    fig = fig_svd_nc1(metrics, tpt_epoch, nc1_form, split)
                elif name == "nfa":
                    fig = fig_nfa(metrics, train_log, tpt_epoch, split)
                elif name == "layers":
                    fig = fig_layers(metrics, tpt_epoch, nc1_form, split)
                elif name == "training":
                    if train_log is None:
                        raise NotDrawable("no train_log.csv common to the runs")
                    fig = fig_training(train_log, tpt_epoch)
                else:
                    fig = fig_rfm_layers(metrics, nc1_form, split)
            except NotDrawable as reason:
                log.warning("skipping sweep figure %s for %s: %s", name, _label(combo) or sweep_dir, reason)
                continue
            seeds = f"mean ± std over {n_seeds} seed{'s' if n_seeds != 1 else ''}"
            _append_title(fig, f"{_label(combo)}; {seeds}" if combo else seeds)
            written += save(fig, out_dir / name, formats, dpi)
    if by and (wanted is None or "compare" in wanted):
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
            written += save(fig, sweep_dir / "figures" / stem, formats, dpi)
    return written


def _read_sweep_metrics(sweep_dir: Path, keys: list[str]) -> pd.DataFrame:
    path = Path(sweep_dir) / "analysis" / "metrics.csv"
    table = pd.read_csv(path, dtype={"run": str, "stage": str, "split": str, "metric": str}, keep_default_na=False,
                        na_values={c: [""] for c in ("value", *keys)})
    table["stage"] = table["stage"].fillna("")
    return table
