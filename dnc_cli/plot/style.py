"""What every figure of `dnc plot` shares: its input tables, labels, colours and curve drawing, and saving.

Figures are built with the object-oriented API (matplotlib.figure.Figure on the Agg canvas): no pyplot, no GUI
backend, no global figure registry. Imports no torch.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dnc_cli.errors import UsageError
from dnc_cli.runs import Staging
from dnc_cli.tables import COLUMNS

BAND_COLUMNS = ["std", "n"]  # a sweep aggregate's spread over seeds (dnc_cli/analyze/sweeps.py)
BAND_ALPHA = 0.2
MIN_WIDTH = 6.5  # inches: a figure of one panel still has room for its legend row
TITLE_CHARS_PER_INCH = 9  # a suptitle's characters per inch of figure width, at the default font size

# axis labels: what each metric is, by its definition (mathtext, so every glyph exists in the default font)
NC1_LABELS = {
    "nc1_trace": r"NC1 = $\mathrm{tr}(\Sigma_W)\,/\,\mathrm{tr}(\Sigma_B)$",
    "nc1": r"NC1 = $\mathrm{tr}(\Sigma_W \Sigma_B^\dagger)\,/\,K$",
}
# NC2/NC3: Frobenius distance from a normalised K x K Gram (class means; classifier x means) to the ETF's
NC2_LABEL = r"NC2 = $\| G_{M} - G_{\mathrm{ETF}} \|_F$"
NC2_GRAM_LABEL = r"NC2 = mean$_{jk}\,(M M^\top - \Sigma_{\mathrm{ETF}})_{jk}^2$"
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
# the tables a figure reads


def tidy_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """The contract's columns only; stage '' for a layer's own representation; integer epochs and layers."""
    missing = [c for c in COLUMNS if c not in metrics.columns]
    if missing:
        raise UsageError(f"metrics table lacks column(s) {', '.join(missing)}")
    # sweep aggregates (dnc_cli/analyze/sweeps.py) carry the spread over seeds: value = mean, std; drawn as bands
    tidy = metrics[COLUMNS + [c for c in BAND_COLUMNS if c in metrics.columns]].copy()
    tidy["stage"] = tidy["stage"].fillna("").astype(str)
    tidy["split"] = tidy["split"].astype(str)
    tidy["metric"] = tidy["metric"].astype(str)
    tidy["epoch"] = tidy["epoch"].astype(int)
    tidy["layer"] = tidy["layer"].astype(int)
    tidy["value"] = pd.to_numeric(tidy["value"], errors="coerce")
    return tidy


def select(metrics: pd.DataFrame, metric: str, split: str | None = None,
           stage: str | None = "") -> pd.DataFrame:
    rows = metrics[metrics["metric"] == metric]
    if split is not None:
        rows = rows[rows["split"] == split]
    if stage is not None:
        rows = rows[rows["stage"] == stage]
    return rows


# -----------------------------------------------------------------------------
# drawing curves


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


def grid_shape(n_panels: int, max_cols: int = 4) -> tuple[int, int]:
    n_rows = math.ceil(n_panels / max_cols)
    return n_rows, math.ceil(n_panels / n_rows)


def spread(items: list, at_most: int) -> list:
    """Up to `at_most` items evenly spaced, first and last included."""
    if len(items) <= at_most:
        return list(items)
    return [items[i] for i in sorted(set(np.linspace(0, len(items) - 1, at_most).round().astype(int)))]


def save(fig: Figure, path_stem: Path, formats: tuple[str, ...], dpi: int, stage: Staging) -> list[Path]:
    """Write each format into `stage` (the figure set is renamed into place together: dnc_cli/runs.py
    `staged_files`); no timestamps in the metadata, so equal inputs give equal bytes. A title wider than the figure
    (one panel: a single layer measured) is wrapped, since constrained layout does not widen the figure for it."""
    title = fig.get_suptitle()
    if title:
        fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * TITLE_CHARS_PER_INCH)))
    written = []
    for fmt in formats:
        path = path_stem.with_suffix(f".{fmt}")
        metadata = {"CreationDate": None, "ModDate": None} if fmt == "pdf" else {"Software": None}
        # drawn in memory, then written by us: matplotlib's PDF writer hides a full disk's OSError behind its own
        # AttributeError, a plain write of the bytes reports it (staged_files: "cannot write <path> (...)")
        drawn = io.BytesIO()
        fig.savefig(drawn, format=fmt, dpi=dpi, metadata=metadata)
        stage(path).write_bytes(drawn.getvalue())
        written.append(path)
    return written
