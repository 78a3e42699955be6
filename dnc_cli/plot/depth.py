"""The figures across layers (`dnc plot`): NC1 and NC2 over depth at init, TPT and the end, the class-sorted Gram
matrices (the paper's Figure 1), a Deep RFM's NC1/NC2 through every layer's stages, and the same as the official
`deep_rfm.py` draws it: one semilog curve per representation against the layer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from dnc_cli.plot.style import (
    NC1_LABELS,
    NC2_GRAM_LABEL,
    NC2_LABEL,
    RFM_STAGES,
    NotDrawable,
    as_tpt,
    no_data,
    plot_curve,
    select,
    spread,
    tidy_metrics,
)

# -----------------------------------------------------------------------------
# 1. NC1 and NC2 across depth at init, TPT and the end: deep neural collapse as it progresses through layers


CHECKPOINT_COLOURS = {"init": "0.6", "TPT": "tab:red", "final": "tab:blue"}


def key_checkpoints(epochs: list[int], tpt_epoch: int | None) -> dict[int, str]:
    """{epoch: label} for the first, the first at or after TPT and the last analysed epoch (merged). A single
    epoch (one checkpoint analysed, or a `dnc measure` of a model) is the final one, not an initialisation."""
    if len(epochs) == 1:
        return {epochs[0]: "final"}
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
# 2. class-sorted Gram matrices of the features (the paper's Figure 1)


def cosine_gram(features: np.ndarray) -> np.ndarray:
    centred = features - features.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = centred / np.where(norms > 0, norms, 1.0)
    return np.clip(unit @ unit.T, -1.0, 1.0)


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
# 3. Deep RFM: NC1 and NC2 along the zig-zag X_l -> M^{1/2} X_l -> Phi(M^{1/2} X_l) of every layer


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


def fig_rfm_curves(metrics: pd.DataFrame, nc1_form: str = "nc1_trace", split: str = "train") -> Figure:
    """A Deep RFM's NC1 and NC2 against the layer, one semilog curve for each of X_l, M_l^½ X_l and Φ(M_l^½ X_l),
    as the official deep_rfm.py plots them (PAPER.md, "Deep RFM": NC2 in its mean-square form, `nc2_gram`; its
    NC1 divides Σ_W by K·N: `dnc analyze nc1.official_scaling=true` gives that scale). A fall "over the layers" is
    read along one curve."""
    metrics = tidy_metrics(metrics)
    rows = metrics[(metrics["split"] == split) & metrics["stage"].isin(list(RFM_STAGES))]
    if rows.empty:
        raise NotDrawable(f"no Deep RFM stage rows (input/agop/activation) for split={split}")
    rows = rows[rows["epoch"] == rows["epoch"].max()]
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for ax, metric, ylabel in [(axes[0], nc1_form, NC1_LABELS[nc1_form]), (axes[1], "nc2_gram", NC2_GRAM_LABEL)]:
        drawn = False
        for stage, (label, colour, marker) in RFM_STAGES.items():
            xs, _ = plot_curve(ax, select(rows, metric, stage=stage), "layer", positive=True, color=colour,
                               marker=marker, markersize=4, linewidth=1.4, label=label)
            drawn = drawn or len(xs) > 0
        if not drawn:
            no_data(ax, metric)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_xlabel("Deep RFM layer $l$")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=c, marker=m, markersize=5, label=lab) for lab, c, m in RFM_STAGES.values()]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(f"Deep RFM: NC1 and NC2 of each representation against the layer ({split} split)")
    return fig
