"""dnc_cli/plot/course.py and depth.py from small synthetic analysis tables: panels, lines, bands."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from plot_tables import (
    EPOCHS,
    N_CLASSES,
    N_LAYERS,
    TPT_EPOCH,
    synthetic_gram,
    synthetic_metrics,
    synthetic_rfm_metrics,
    synthetic_train_log,
)

from dnc_cli.plot.course import fig_nc_metrics, fig_nfa, fig_svd_nc1, fig_training
from dnc_cli.plot.depth import fig_gram, fig_layers, fig_rfm_layers
from dnc_cli.plot.style import NotDrawable


def test_nc_metrics_has_four_panels_and_one_line_per_layer_and_split():
    fig = fig_nc_metrics(synthetic_metrics(), TPT_EPOCH, "nc1_trace")
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4
    nc1_panel, _, nc3_panel, nc4_panel = panels
    curves = [line for line in nc1_panel.get_lines() if len(line.get_xdata()) == len(EPOCHS)]
    assert len(curves) == N_LAYERS * 2
    assert sorted({line.get_linestyle() for line in curves}) == ["-", "--"]
    assert len([line for line in nc3_panel.get_lines() if len(line.get_xdata()) == len(EPOCHS)]) == 2
    assert nc1_panel.get_yscale() == "log"
    assert nc4_panel.get_yscale() == "symlog"  # NC4 has exact zeros
    assert any(line.get_xdata()[0] == TPT_EPOCH for line in nc1_panel.get_lines())  # the TPT marker


def test_nc_metrics_without_tpt_and_with_a_single_epoch():
    single = synthetic_metrics().query("epoch == 50")
    fig = fig_nc_metrics(single, None, "nc1")
    nc1_panel = fig.axes[0]
    assert len(nc1_panel.get_lines()) == N_LAYERS * 2  # no TPT line
    assert all(line.get_marker() == "o" for line in nc1_panel.get_lines())  # single points stay visible


def test_svd_nc1_has_one_panel_per_layer_with_shared_stage_colours():
    fig = fig_svd_nc1(synthetic_metrics(), TPT_EPOCH, "nc1_trace", "train")
    assert [ax.get_title() for ax in fig.axes] == [f"Layer {layer}" for layer in range(1, N_LAYERS + 1)]
    for ax in fig.axes:
        curves = [line for line in ax.get_lines() if len(line.get_xdata()) == len(EPOCHS)]
        assert len(curves) == 4  # input, right, agop, activation ("left" equals "right" and is omitted)
        assert [line.get_color() for line in curves] == [line.get_color() for line in fig.axes[0].get_lines()
                                                         if len(line.get_xdata()) == len(EPOCHS)]
    assert len(fig.legends) == 1


def test_svd_nc1_without_stage_rows_is_not_drawable():
    metrics = synthetic_metrics()
    with pytest.raises(NotDrawable):
        fig_svd_nc1(metrics[metrics["stage"] == ""], None)


def test_nfa_has_three_panels_and_correlations_in_unit_interval():
    fig = fig_nfa(synthetic_metrics(), synthetic_train_log(), TPT_EPOCH)
    panels = fig.axes
    assert len(panels) == 3
    variance_panel, nfa_panel, loss_panel = panels
    assert len([line for line in variance_panel.get_lines() if len(line.get_xdata()) == len(EPOCHS)]) == 2
    assert len([line for line in nfa_panel.get_lines() if len(line.get_xdata()) == len(EPOCHS)]) == N_LAYERS
    assert nfa_panel.get_ylim() == (0, 1.02)
    assert loss_panel.get_yscale() == "log"
    metrics = synthetic_metrics()
    with pytest.raises(NotDrawable):
        fig_nfa(metrics[~metrics["metric"].str.startswith("nfa")], synthetic_train_log())
    assert len(fig_nfa(metrics, None).axes) == 2  # no loss panel without a train log


def test_layers_shows_init_tpt_and_final_across_depth():
    fig = fig_layers(synthetic_metrics(), TPT_EPOCH, "nc1_trace", "train")
    panels = fig.axes
    assert len(panels) == 2
    labels = [line.get_label() for line in panels[0].get_lines()]
    assert labels == ["init (epoch 0)", f"TPT (epoch {TPT_EPOCH})", "final (epoch 50)"]
    assert list(panels[0].get_lines()[0].get_xdata()) == list(range(N_LAYERS + 1))
    no_tpt = fig_layers(synthetic_metrics(), None)
    assert [line.get_label() for line in no_tpt.axes[0].get_lines()] == ["init (epoch 0)", "final (epoch 50)"]
    late_tpt = fig_layers(synthetic_metrics(), 45)
    assert [line.get_label() for line in late_tpt.axes[0].get_lines()][-1] == "TPT = final (epoch 50)"


def test_gram_shows_at_most_five_evenly_spaced_layers():
    arrays = synthetic_gram(n_layers=8)
    features = {int(k.split("_")[1]): v for k, v in arrays.items() if k.startswith("layer_")}
    fig = fig_gram(arrays["labels"], features)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    titles = [ax.get_title() for ax in panels]
    assert titles == ["Layer 0 (input)", "Layer 2", "Layer 4", "Layer 6", "Layer 8"]
    gram = panels[-1].get_images()[0].get_array()
    assert gram.shape == (N_CLASSES * 30, N_CLASSES * 30)
    assert np.allclose(np.diag(gram), 1.0)
    assert panels[-1].get_images()[0].get_clim() == (-1, 1)


def test_training_has_loss_and_accuracy_panels():
    fig = fig_training(synthetic_train_log(), TPT_EPOCH)
    loss_panel, accuracy_panel = fig.axes
    assert loss_panel.get_yscale() == "log" and accuracy_panel.get_yscale() == "linear"
    assert [line.get_label() for line in loss_panel.get_lines()][:2] == ["train", "test"]


def test_rfm_layers_zigzag_has_every_stage_of_every_layer():
    depth = 6
    fig = fig_rfm_layers(synthetic_rfm_metrics(depth), "nc1_trace", "train")
    assert len(fig.axes) == 2
    nc1_panel = fig.axes[0]
    zigzag = [line for line in nc1_panel.get_lines() if len(line.get_xdata()) > 1][0]
    assert list(zigzag.get_xdata()) == list(range(3 * depth))
    assert len(nc1_panel.collections) == 3  # one marker set per stage: input, agop, activation
    values = np.asarray(zigzag.get_ydata())
    assert np.all(values[1::3] < values[0::3])  # the drop at the AGOP step is what is drawn
