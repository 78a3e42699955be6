"""The registry of `dnc plot`'s figures: each name draws from one `FigureInputs`, whether they come from a run's
tables or a sweep's mean ± std over seeds, and each kind of run lists the figures it gets.

    nc_metrics  NC1-NC4 of every hidden layer against epoch (PAPER.md, "The four neural-collapse metrics")
    svd_nc1     NC1 along each W_l = U S Vᵀ (PAPER.md, "SVD-decomposed per-layer NC1")
    nfa         variance ratios, corr(W_lᵀW_l, AGOP_l^α) and the training loss (the paper's Figure 11 layout)
    layers      NC1 and NC2 across depth at init, TPT and the end (deep neural collapse)
    gram        class-sorted Gram matrices of the features (the paper's Figure 1)
    training    losses and accuracies
    rfm_layers  a Deep RFM's NC1 and NC2 through every layer's stages (PAPER.md, "Deep RFM")
    rfm_curves  the same as the official deep_rfm.py draws it: NC1 and NC2 (mean-square form) against the layer,
                one semilog curve per representation X_l, M^½ X_l, Φ(M^½ X_l)
    compare     sweeps only: one figure per swept parameter (dnc_cli/plot/sweep.py)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dnc_cli.config import FIGURE_FORMATS, NC1_FORMS
from dnc_cli.errors import UsageError, need, reading
from dnc_cli.plot.course import fig_nc_metrics, fig_nfa, fig_svd_nc1, fig_training
from dnc_cli.plot.depth import fig_gram, fig_layers, fig_rfm_curves, fig_rfm_layers
from dnc_cli.plot.style import NotDrawable
from dnc_cli.runs import DEEP_RFM, NETWORK, final_gram_file, gram_epoch


@dataclass
class FigureInputs:
    """What a figure is drawn from: a run's tables, or a sweep combination's mean ± std over seeds."""

    metrics: pd.DataFrame
    tpt_epoch: int | None
    nc1_form: str
    split: str
    kind: str = NETWORK
    train_log: pd.DataFrame | None = None
    no_train_log: str = "no train_log.csv"  # why train_log is None (the skip warning's reason)
    run_dir: Path | None = None  # a run's folder, for its gram samples; None for a sweep


def read_gram(path: Path) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The feature sample `dnc analyze` saved (allow_pickle=False: an .npz cannot run code)."""
    with reading(path, "rebuild it with `dnc analyze force=true`"), np.load(path, allow_pickle=False) as npz:
        labels = np.asarray(npz["labels"])
        features = {int(key.split("_")[1]): np.asarray(npz[key], dtype=np.float64)
                    for key in npz.files if key.startswith("layer_")}
        need(all(len(f) == len(labels) and f.ndim == 2 for f in features.values()), path,
             "feature arrays that do not match the labels")
    return labels, dict(sorted(features.items()))


# how the gram figure names a kind's layers and checkpoint (the `{epoch}` of its analysed checkpoint)
GRAM_NAMES = {NETWORK: ("Layer", "epoch {epoch}"), DEEP_RFM: ("Deep RFM layer", "Deep RFM")}


def _gram(inputs: FigureInputs) -> Figure:
    gram_file = final_gram_file(inputs.run_dir, inputs.split) if inputs.run_dir is not None else None
    if gram_file is None:
        raise NotDrawable(f"no analysis/gram_epoch_*_{inputs.split}.npz")
    labels, features = read_gram(gram_file)
    layer_name, checkpoint = GRAM_NAMES[inputs.kind]
    where = f"{inputs.split}, {checkpoint.format(epoch=gram_epoch(gram_file))}"
    return fig_gram(labels, features, layer_name=layer_name,
                    title=f"Class-sorted Gram matrices of centred, normalised features ({where})")


def _training(inputs: FigureInputs) -> Figure:
    if inputs.train_log is None:
        raise NotDrawable(inputs.no_train_log)
    return fig_training(inputs.train_log, inputs.tpt_epoch)


FIGURES: dict[str, Callable[[FigureInputs], Figure]] = {
    "nc_metrics": lambda f: fig_nc_metrics(f.metrics, f.tpt_epoch, f.nc1_form),
    "svd_nc1": lambda f: fig_svd_nc1(f.metrics, f.tpt_epoch, f.nc1_form, f.split),
    "nfa": lambda f: fig_nfa(f.metrics, f.train_log, f.tpt_epoch, f.split),
    "layers": lambda f: fig_layers(f.metrics, f.tpt_epoch, f.nc1_form, f.split),
    "gram": _gram,
    "training": _training,
    "rfm_layers": lambda f: fig_rfm_layers(f.metrics, f.nc1_form, f.split),
    "rfm_curves": lambda f: fig_rfm_curves(f.metrics, f.nc1_form, f.split),
}
COMPARE = "compare"
# per kind of run, the figures of one run and of a sweep's combination (each curve the mean over seeds)
RUN_FIGURES = {NETWORK: ("nc_metrics", "svd_nc1", "nfa", "layers", "gram", "training"),
               DEEP_RFM: ("rfm_layers", "rfm_curves", "gram")}
SWEEP_FIGURES = {NETWORK: ("nc_metrics", "svd_nc1", "nfa", "layers", "training"),
                 DEEP_RFM: ("rfm_layers", "rfm_curves")}


DPI_RANGE = (10, 1200)  # thumbnails to print; 100,000 dpi would draw gigapixel figures that exhaust the memory


def check_options(figures: list[str] | None, nc1_form: str, formats: tuple[str, ...], dpi: int) -> None:
    if nc1_form not in NC1_FORMS:
        raise UsageError(f"nc1_form={nc1_form} is not one of {', '.join(NC1_FORMS)}")
    for fmt in formats:
        if fmt not in FIGURE_FORMATS:
            raise UsageError(f"format {fmt!r} is not one of {', '.join(FIGURE_FORMATS)}")
    if not isinstance(dpi, int) or not DPI_RANGE[0] <= dpi <= DPI_RANGE[1]:
        raise UsageError(f"dpi={dpi} must be an integer from {DPI_RANGE[0]} to {DPI_RANGE[1]}")
    valid = [*FIGURES, COMPARE]
    for name in figures or []:
        if name not in valid:
            raise UsageError(f"unknown figure {name!r}; valid figures: {', '.join(valid)}")
