"""The figures against training epoch (`dnc plot`): NC1-NC4 per layer, the SVD-decomposed NC1, the NFA next to
collapse, and the training curves. Each is a pure function of DataFrames, fig_<name>(tables..., options) -> Figure,
so tests and notebooks can draw from tables directly.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dnc_cli.plot.style import (
    MIN_WIDTH,
    NC1_LABELS,
    NC2_LABEL,
    NC3_LABEL,
    NC4_LABEL,
    SPLIT_STYLES,
    SVD_STAGES,
    NotDrawable,
    add_layer_colorbar,
    as_tpt,
    band,
    finish_epoch_axis,
    grid_shape,
    hidden_layers,
    layer_colours,
    mark_tpt,
    marker_for,
    no_data,
    plot_curve,
    select,
    split_handles,
    tidy_metrics,
    tpt_handle,
)

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
    fig = Figure(figsize=(max(3.1 * n_cols + 0.6, MIN_WIDTH), 2.9 * n_rows + 0.9), layout="constrained")
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
# 4. training curves


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
